"""Pipeline specs: the pydantic models behind ``dicomflow run spec.yaml``.

A spec names a source, the operators with their parameters, the sinks, the
cluster, limits and the run's name. The same models are the Python API (build
a :class:`PipelineSpec` in code), they export the JSON Schema committed as
``pipeline-spec.schema.json``, and a spec round-trips YAML → Python → YAML.
"""

from __future__ import annotations

from typing import Annotated, Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, model_validator

SPEC_VERSION = "1"


class _Model(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class FilesSource(_Model):
    """Files, folders, globs or fsspec URLs (``s3://bucket/prefix`` …)."""

    kind: Literal["files"] = "files"
    urls: list[str] = Field(min_length=1)
    storage_options: dict[str, Any] = Field(default_factory=dict)


class _Tls(_Model):
    """TLS files: the CA bundle to verify the other side, our certificate and key."""

    tls_ca: str | None = None
    tls_cert: str | None = None
    tls_key: str | None = None


class _Secured(_Tls):
    """TLS and identity for a peer: the user, and the *name* of the variable holding
    the password (secrets never live in a spec)."""

    username: str | None = None
    password_env: str | None = None


class _WebSecured(_Secured):
    """DICOMweb adds a bearer token, also by variable name."""

    token_env: str | None = None


class DimseSource(_Secured):
    """A PACS over DIMSE: C-FIND by ``query`` (or one per row of ``cohort``), then C-GET."""

    kind: Literal["dimse"] = "dimse"
    url: str = Field(pattern=r"^dimse://")
    query: dict[str, str] = Field(default_factory=dict)
    cohort: str | None = None
    calling_ae: str = "DICOMFLOW"

    @model_validator(mode="after")
    def _needs_a_query(self) -> DimseSource:
        if not self.query and not self.cohort:
            raise ValueError("a dimse source needs a query or a cohort CSV")
        return self


class DicomwebSource(_WebSecured):
    """A DICOMweb server: QIDO-RS instance search by ``query``, then WADO-RS."""

    kind: Literal["dicomweb"] = "dicomweb"
    url: str = Field(pattern=r"^dicomweb\+https?://")
    query: dict[str, str] = Field(min_length=1)


class ListenSource(_Tls):
    """dicomflow as a Storage SCP: instances pushed to it are ingested in micro-batches.

    ``tls_cert``/``tls_key`` serve TLS; with ``tls_ca``, callers must present a
    certificate it signed."""

    kind: Literal["listen"] = "listen"
    ae_title: str
    port: int = Field(gt=0, lt=65536)
    allow: list[str] = Field(default_factory=list)
    batch_seconds: float = Field(default=5.0, gt=0)


Source = Annotated[
    FilesSource | DimseSource | DicomwebSource | ListenSource, Field(discriminator="kind")
]


class FlattenOperator(_Model):
    """Headers → the ``instances`` table (always part of ingest)."""

    name: Literal["flatten"] = "flatten"
    inline_binary_limit: int = Field(default=1024, ge=0)


class PixelsOperator(_Model):
    """Decode, assemble stacks and write OME-Zarr plus the ``series`` table."""

    name: Literal["pixels"] = "pixels"
    frames_per_chunk: int = Field(default=1, ge=1)
    expand_palette: bool = False


class AnonymizeOperator(_Model):
    """PS3.15 Annex E de-identification; the key comes from a file or an env variable."""

    name: Literal["anonymize"] = "anonymize"
    profile: Literal["basic"] = "basic"
    options: list[str] = Field(default_factory=list)
    key_file: str | None = None
    key_env: str | None = None
    keep: list[str] = Field(default_factory=list)
    actions: dict[str, str] = Field(default_factory=dict)
    pixel_rules: str | None = None
    safe_private: str | None = None
    vocabulary: str | None = None
    mapping: str | None = None

    @model_validator(mode="after")
    def _one_key_source(self) -> AnonymizeOperator:
        if bool(self.key_file) == bool(self.key_env):
            raise ValueError("anonymize needs exactly one of key_file or key_env")
        return self


Operator = Annotated[
    FlattenOperator | PixelsOperator | AnonymizeOperator, Field(discriminator="name")
]


class LakeSink(_Model):
    """The output lake: a folder or a bucket URL."""

    kind: Literal["lake"] = "lake"
    path: str
    storage_options: dict[str, Any] = Field(default_factory=dict)


class DicomSink(_Model):
    """De-identified DICOM files in the lake (``dicom/<study>/<series>/<sop>.dcm``)."""

    kind: Literal["dicom"] = "dicom"


class DimseSink(_Secured):
    """Send every written instance to a DICOM peer with C-STORE."""

    kind: Literal["dimse"] = "dimse"
    url: str = Field(pattern=r"^dimse://")
    calling_ae: str = "DICOMFLOW"


class DicomwebSink(_WebSecured):
    """STOW-RS every written instance to a DICOMweb server."""

    kind: Literal["dicomweb"] = "dicomweb"
    url: str = Field(pattern=r"^dicomweb\+https?://")


Sink = Annotated[LakeSink | DicomSink | DimseSink | DicomwebSink, Field(discriminator="kind")]


class Cluster(_Model):
    """Where to run: local worker processes, or an existing scheduler."""

    workers: int | None = Field(default=None, ge=1)
    scheduler: str | None = None


class Limits(_Model):
    """Protect sources and decide when a run has failed."""

    max_associations: int = Field(default=2, ge=1)
    max_error_rate: float = Field(default=1.0, ge=0.0, le=1.0)
    retries: int = Field(default=2, ge=0)


def _default_operators() -> list[Operator]:
    return [FlattenOperator()]


class PipelineSpec(_Model):
    """A whole pipeline as data."""

    version: Literal["1"] = "1"
    name: str = Field(pattern=r"^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$")
    source: Source
    operators: list[Operator] = Field(default_factory=_default_operators)
    sinks: list[Sink] = Field(min_length=1)
    cluster: Cluster = Field(default_factory=Cluster)
    limits: Limits = Field(default_factory=Limits)
    incremental: bool = False

    @model_validator(mode="after")
    def _consistent(self) -> PipelineSpec:
        lakes = [s for s in self.sinks if isinstance(s, LakeSink)]
        if len(lakes) != 1:
            raise ValueError("a pipeline writes exactly one lake sink")
        names = [op.name for op in self.operators]
        if len(set(names)) != len(names):
            raise ValueError("each operator appears at most once")
        if any(isinstance(s, DicomSink) for s in self.sinks) and "anonymize" not in names:
            raise ValueError("a dicom sink writes de-identified files: it needs anonymize")
        return self

    @property
    def lake(self) -> LakeSink:
        return next(s for s in self.sinks if isinstance(s, LakeSink))

    def operator(self, name: str) -> Any:
        return next((op for op in self.operators if op.name == name), None)

    def to_yaml(self) -> str:
        """YAML with every field, defaults included (parses back to an equal spec)."""
        return yaml.safe_dump(self.model_dump(mode="json"), sort_keys=False)

    @classmethod
    def from_yaml(cls, text: str) -> PipelineSpec:
        return cls.model_validate(yaml.safe_load(text))


def spec_json_schema() -> dict[str, Any]:
    """The JSON Schema of :class:`PipelineSpec` (committed next to this module)."""
    return PipelineSpec.model_json_schema()


if __name__ == "__main__":  # regenerate the committed schema: python -m dicomflow.schemas.spec
    import json
    from pathlib import Path

    target = Path(__file__).with_name("pipeline-spec.schema.json")
    target.write_text(json.dumps(spec_json_schema(), indent=2, sort_keys=True) + "\n")
