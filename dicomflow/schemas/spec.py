"""Pipeline specs: the pydantic models behind ``dicomflow run spec.yaml``.

A spec names a source, the operators with their parameters, the sinks, the
cluster, limits and the run's name. It is the only thing that runs: the CLI's
flags, the keywords of ``dicomflow.ingest`` and YAML are three ways to build one.
The same models are the Python API (build a :class:`PipelineSpec` in code), they
export the JSON Schema committed as ``pipeline-spec.schema.json``, and a spec
round-trips YAML → Python → YAML.

Operators, sources and sinks are open sets: each entry of the ``operators`` list
is validated by the configuration model of the operator its ``name`` names in
the ``dicomflow.operators`` entry-point group (sources and sinks by their
``kind``, in ``dicomflow.sources`` and ``dicomflow.sinks``). Built-ins are
registered exactly as plugins are; a plugin's model subclasses
:class:`OperatorConfig` (or :class:`SourceConfig`, :class:`SinkConfig`).
"""

from __future__ import annotations

from typing import Annotated, Any, Literal, Union

import yaml
from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    SerializeAsAny,
    create_model,
    field_validator,
    model_validator,
)

from dicomflow import registry
from dicomflow.errors import ConfigError

SPEC_VERSION = "1"


class _Model(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class OperatorConfig(_Model):
    """The configuration of one operator in a spec; ``name`` is its registry name."""

    name: str


class SourceConfig(_Model):
    """The configuration of a spec's source; ``kind`` is its registry name."""

    kind: str


class SinkConfig(_Model):
    """The configuration of one of a spec's sinks; ``kind`` is its registry name."""

    kind: str


class FilesSource(SourceConfig):
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


class DimsePeerConfig(_Secured):
    """How to reach a DICOM peer: its URL, our AE title, timeouts, TLS and identity."""

    url: str = Field(pattern=r"^dimse://")
    calling_ae: str = "DICOMFLOW"
    connect_timeout: float = Field(default=10.0, gt=0)
    acse_timeout: float = Field(default=30.0, gt=0)
    dimse_timeout: float = Field(default=60.0, gt=0)
    network_timeout: float = Field(default=60.0, gt=0)


class DicomwebPeerConfig(_Secured):
    """How to reach a DICOMweb server: its URL, timeouts, retries, TLS, identity, a
    bearer token or OAuth2 (secrets by variable name).

    OAuth2 uses the client-credentials grant, or the refresh-token grant when
    ``oauth_refresh_token_env`` is set; tokens are renewed on expiry and on a 401."""

    url: str = Field(pattern=r"^dicomweb\+https?://")
    token_env: str | None = None
    oauth_token_url: str | None = None
    oauth_client_id: str | None = None
    oauth_client_secret_env: str | None = None
    oauth_refresh_token_env: str | None = None
    oauth_scope: str | None = None
    connect_timeout: float = Field(default=10.0, gt=0)
    read_timeout: float = Field(default=120.0, gt=0)
    attempts: int = Field(default=4, ge=1)
    backoff_seconds: float = Field(default=0.5, ge=0)


class DimseSource(DimsePeerConfig, SourceConfig):
    """A PACS over DIMSE: C-FIND by ``query`` (or one per row of ``cohort``) at
    ``query_level``, then C-GET, or C-MOVE to our own Storage SCP (``retrieve: move``,
    listening as ``move_ae`` on ``move_port`` for the run; the PACS must know that AE)."""

    kind: Literal["dimse"] = "dimse"
    query: dict[str, str] = Field(default_factory=dict)
    cohort: str | None = None
    query_level: Literal["patient", "study", "series", "image"] = "image"
    retrieve: Literal["get", "move"] = "get"
    move_ae: str | None = None
    move_port: int | None = Field(default=None, gt=0, lt=65536)
    move_host: str = "0.0.0.0"  # noqa: S104 (the PACS connects to our SCP)

    @model_validator(mode="after")
    def _needs_a_query(self) -> DimseSource:
        if not self.query and not self.cohort:
            raise ValueError("a dimse source needs a query or a cohort CSV")
        return self

    @model_validator(mode="after")
    def _move_needs_a_destination(self) -> DimseSource:
        if self.retrieve == "move" and (self.move_ae is None or self.move_port is None):
            raise ValueError("retrieve: move needs move_ae and move_port (our Storage SCP)")
        if self.retrieve == "get" and (self.move_ae is not None or self.move_port is not None):
            raise ValueError("move_ae and move_port are for retrieve: move")
        return self


class DicomwebSource(DicomwebPeerConfig, SourceConfig):
    """A DICOMweb server: QIDO-RS instance search by ``query``, then WADO-RS (whole
    instances; with ``header_only``, each series' ``/metadata`` and no pixel data)."""

    kind: Literal["dicomweb"] = "dicomweb"
    query: dict[str, str] = Field(min_length=1)
    header_only: bool = False


class ListenSource(_Tls, SourceConfig):
    """dicomflow as a Storage SCP: instances pushed to it are ingested in micro-batches.

    ``tls_cert``/``tls_key`` serve TLS; with ``tls_ca``, callers must present a
    certificate it signed."""

    kind: Literal["listen"] = "listen"
    ae_title: str
    port: int = Field(gt=0, lt=65536)
    allow: list[str] = Field(default_factory=list)
    batch_seconds: float = Field(default=5.0, gt=0)
    host: str = "0.0.0.0"  # noqa: S104 (an SCP listens)
    max_associations: int = Field(
        default=16,
        gt=0,
        le=512,
        description="Associations established at once; more are rejected (local limit"
        " exceeded). Connections that have not associated yet do not count.",
    )


class FlattenOperator(OperatorConfig):
    """Headers → the ``instances`` table (every pipeline has it; added first when missing)."""

    name: Literal["flatten"] = "flatten"
    inline_binary_limit: int = Field(default=1024, ge=0)


class PixelsOperator(OperatorConfig):
    """Decode, assemble stacks and write OME-Zarr plus the ``series`` table."""

    name: Literal["pixels"] = "pixels"
    frames_per_chunk: int = Field(default=1, ge=1)
    expand_palette: bool = False
    pyramid: bool = Field(
        default=False,
        description="Resolution levels for volumes too (large 2-D images always get them).",
    )


class RenderOperator(OperatorConfig):
    """Windowed PNG/JPEG renders (thumbnails by default) under ``renders/`` and a
    ``render_path`` column on ``instances``.

    ``window``: ``auto`` (the file's first window, else its VOI LUT, else min-max),
    ``N`` (the file's N-th window, 0-based) or ``CENTER,WIDTH``. ``frames``: ``all``,
    ``middle`` or a 0-based frame. ``size``: the longest side in pixels (never
    upscaled); null keeps the native size. ``presentation_states``: GSPS files or
    folders; one that references an image is applied to it.
    """

    name: Literal["render"] = "render"
    format: Literal["png", "jpeg"] = "png"
    bits: Literal[8, 16] = 8
    size: int | None = Field(default=256, ge=1)
    window: str = "auto"
    frames: str | int = "middle"
    overlays: bool = False
    percentile: float | None = Field(default=None, ge=0, lt=50)
    presentation_states: list[str] = Field(default_factory=list)

    @field_validator("window")
    @classmethod
    def _window(cls, value: str) -> str:
        parse_window(value)
        return value

    @field_validator("frames")
    @classmethod
    def _frames(cls, value: str | int) -> str | int:
        if isinstance(value, str) and value not in ("all", "middle"):
            if not value.isdigit():
                raise ValueError("frames is 'all', 'middle' or a frame number (0-based)")
            return int(value)
        if isinstance(value, int) and value < 0:
            raise ValueError("a frame number is 0-based and not negative")
        return value

    @model_validator(mode="after")
    def _jpeg_is_8_bit(self) -> RenderOperator:
        if self.format == "jpeg" and self.bits != 8:
            raise ValueError("JPEG renders are 8-bit; use png for 16-bit")
        return self


class ServerThumbnailsOperator(OperatorConfig):
    """Thumbnails rendered by the DICOMweb source's server (WADO-RS ``/rendered``, the
    middle frame of a multi-frame image), written under ``renders/`` with a
    ``render_path`` column on ``instances``: thumbnails of a header-only scan, without
    transferring pixel data. ``size``: the longest side in pixels (never upscaled)."""

    name: Literal["server_thumbnails"] = "server_thumbnails"
    size: int = Field(default=256, ge=16, le=4096)
    format: Literal["png", "jpeg"] = "png"


class SrOperator(OperatorConfig):
    """Structured Reports as rows: ``sr_content`` (every content item of any SR) and
    ``measurements`` (TID 1500 measurements and evaluations, TID 10011/10001 dose
    events and totals). ``content`` / ``measurements``: whether to fill each table."""

    name: Literal["sr"] = "sr"
    content: bool = True
    measurements: bool = True


class LabelsOperator(OperatorConfig):
    """Segmentations (DICOM SEG) and RT Structure Sets (contours rasterized) as masks: an
    OME-Zarr ``labels`` group beside the image stack each outlines, and the ``segments``
    table. Runs once the run's series are committed, over the whole lake (labels whose
    images come later are placed then). Needs ``pixels``."""

    name: Literal["labels"] = "labels"


def parse_window(value: str) -> str | int | tuple[float, float]:
    """``auto``, ``N`` (an index) or ``CENTER,WIDTH`` as the renderer takes it."""
    text = value.strip()
    if text == "auto":
        return "auto"
    if text.isdigit():
        return int(text)
    parts = text.split(",")
    try:
        if len(parts) == 2:
            center, width = float(parts[0]), float(parts[1])
            if width > 0:
                return center, width
    except ValueError:
        pass
    raise ValueError("window is 'auto', a window number N, or CENTER,WIDTH with WIDTH > 0")


class AnonymizeOperator(OperatorConfig):
    """PS3.15 Annex E de-identification; the key comes from a file or an env variable."""

    name: Literal["anonymize"] = "anonymize"
    profile: Literal["basic"] = "basic"
    options: list[str] = Field(default_factory=list)
    key_file: str | None = None
    key_env: str | None = None
    key_ref: str | None = None  # Python only: a de-identifier handed to ``dicomflow.run``
    keep: list[str] = Field(default_factory=list)
    actions: dict[str, str] = Field(default_factory=dict)
    pixel_rules: str | None = None
    safe_private: str | None = None
    vocabulary: str | None = None
    mapping: str | None = None

    @model_validator(mode="after")
    def _one_key_source(self) -> AnonymizeOperator:
        given = sum(bool(k) for k in (self.key_file, self.key_env, self.key_ref))
        if given == 0:
            raise ValueError(
                "de-identification needs a key: key_file or key_env "
                "(--key-file FILE or --key-env VARIABLE)"
            )
        if given > 1:
            raise ValueError(
                "give the key either as a file or as an environment variable, not both "
                "(one of key_file or key_env)"
            )
        return self


class LakeSink(SinkConfig):
    """The output lake: a folder or a bucket URL."""

    kind: Literal["lake"] = "lake"
    path: str
    storage_options: dict[str, Any] = Field(default_factory=dict)


class DicomSink(SinkConfig):
    """De-identified DICOM files in the lake (``dicom/<study>/<series>/<sop>.dcm``)."""

    kind: Literal["dicom"] = "dicom"


class DimseSink(DimsePeerConfig, SinkConfig):
    """Send every written instance to a DICOM peer with C-STORE; with ``commit``, ask
    it afterwards to commit them (Storage Commitment), its report coming on the
    association or to our ``commit_port``."""

    kind: Literal["dimse"] = "dimse"
    commit: bool = False
    commit_port: int | None = Field(default=None, gt=0, lt=65536)
    commit_timeout: float = Field(default=60.0, gt=0)


class DicomwebSink(DicomwebPeerConfig, SinkConfig):
    """STOW-RS every written instance to a DICOMweb server."""

    kind: Literal["dicomweb"] = "dicomweb"


class Cluster(_Model):
    """Where to run: local worker processes, or an existing scheduler."""

    workers: int | None = Field(default=None, ge=1)
    scheduler: str | None = None


class Limits(_Model):
    """Protect sources and decide when a run has failed."""

    max_associations: int = Field(default=2, ge=1)
    max_error_rate: float = Field(default=1.0, ge=0.0, le=1.0)
    retries: int = Field(default=2, ge=0)


def _default_operators() -> list[OperatorConfig]:
    return [FlattenOperator()]


def _config_model(group: registry.Registry, key: str) -> type[_Model]:
    """The configuration model registered under ``key`` in ``group``."""
    model = getattr(group.get(key), "Config", None)
    if not (isinstance(model, type) and issubclass(model, _Model)):
        raise ConfigError(f"{group.group} entry {key!r} declares no configuration model")
    return model


def _resolve(group: registry.Registry, field: str, item: Any) -> Any:
    """A raw mapping validated by the model its ``field`` names in ``group`` (an already
    built model is kept as it is)."""
    if isinstance(item, BaseModel) or not isinstance(item, dict):
        return item
    key = item.get(field)
    if not isinstance(key, str):
        raise ValueError(f"each entry needs a {field!r}")
    try:
        model = _config_model(group, key)
    except ConfigError as exc:
        raise ValueError(str(exc)) from None
    return model.model_validate(item)


class PipelineSpec(_Model):
    """A whole pipeline as data."""

    version: Literal["1"] = "1"
    name: str = Field(pattern=r"^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$")
    source: SerializeAsAny[SourceConfig]
    operators: list[SerializeAsAny[OperatorConfig]] = Field(default_factory=_default_operators)
    sinks: list[SerializeAsAny[SinkConfig]] = Field(min_length=1)
    cluster: Cluster = Field(default_factory=Cluster)
    limits: Limits = Field(default_factory=Limits)
    incremental: bool = False
    late_arrivals: bool = Field(
        default=False,
        description=(
            "With incremental, from a DIMSE peer: also compare each study's instance "
            "count in the archive with the lake's retrieved instances, and fetch the "
            "studies that differ (late arrivals, old-dated studies included)"
        ),
    )
    look_back_days: int | None = Field(
        default=None,
        ge=1,
        description="late_arrivals checks studies dated within this many days (none: all)",
    )

    @field_validator("source", mode="before")
    @classmethod
    def _source_model(cls, value: Any) -> Any:
        return _resolve(registry.sources, "kind", value)

    @field_validator("operators", mode="before")
    @classmethod
    def _operator_models(cls, value: Any) -> Any:
        if not isinstance(value, list):
            return value
        models = [_resolve(registry.operators, "name", item) for item in value]
        names = [getattr(m, "name", None) for m in models]
        if "flatten" not in names:  # every pipeline writes the instances table
            models.insert(1 if names[:1] == ["anonymize"] else 0, FlattenOperator())
        return models

    @field_validator("sinks", mode="before")
    @classmethod
    def _sink_models(cls, value: Any) -> Any:
        if not isinstance(value, list):
            return value
        return [_resolve(registry.sinks, "kind", item) for item in value]

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
        if self.late_arrivals and not self.incremental:
            raise ValueError("late_arrivals belongs to incremental runs: set incremental")
        if self.late_arrivals and "anonymize" in names:
            raise ValueError(
                "late_arrivals counts the retrieved files, which a de-identified lake does not keep"
            )
        if "anonymize" in names[1:]:
            raise ValueError(
                "anonymize must be the first operator: every later step sees only "
                "de-identified data"
            )
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


def _union(group: registry.Registry, field: str, builtin_only: bool) -> Any:
    """Every model registered in ``group`` (or only dicomflow's own), as a union told
    apart by ``field``."""
    names = group.builtin_names() if builtin_only else group.names()
    models = tuple(_config_model(group, name) for name in names)
    if len(models) == 1:
        return models[0]
    return Annotated[Union[models], Field(discriminator=field)]  # noqa: UP007


def spec_json_schema(*, builtin_only: bool = False) -> dict[str, Any]:
    """The JSON Schema of :class:`PipelineSpec` with every registered operator, source and
    sink model in it (with ``builtin_only``, dicomflow's own: the schema committed next
    to this module)."""
    operators: Any = list[_union(registry.operators, "name", builtin_only)]  # type: ignore[misc]
    sinks: Any = list[_union(registry.sinks, "kind", builtin_only)]  # type: ignore[misc]
    documented = create_model(
        "PipelineSpec",
        __base__=PipelineSpec,
        __doc__=PipelineSpec.__doc__,
        source=(_union(registry.sources, "kind", builtin_only), ...),
        operators=(operators, Field(default_factory=_default_operators)),
        sinks=(sinks, Field(min_length=1)),
    )
    return documented.model_json_schema()


if __name__ == "__main__":  # regenerate the committed schema: python -m dicomflow.schemas.spec
    import json
    from pathlib import Path

    from dicomflow.schemas import spec  # the registered models are the package's, not __main__'s

    target = Path(spec.__file__).with_name("pipeline-spec.schema.json")
    schema = spec.spec_json_schema(builtin_only=True)
    target.write_text(json.dumps(schema, indent=2, sort_keys=True) + "\n")
