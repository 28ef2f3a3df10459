"""Load, override and run a pipeline spec (part of the API layer, used by ``dicomflow run``).

``--set path=value`` edits the spec before validation: ``path`` is dotted with
list indices (``sinks.0.path``, ``limits.max_error_rate``) and ``value`` is read
as a YAML scalar. Every problem with a spec is a :class:`ConfigError` whose
message names the field.
"""

from __future__ import annotations

from collections.abc import Sequence
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import yaml
from pydantic import ValidationError

from dicomflow.connectors.dicomweb.address import DicomwebOptions
from dicomflow.connectors.dimse.address import DimseOptions, TlsOptions
from dicomflow.errors import ConfigError
from dicomflow.lake.layout import LakeLayout
from dicomflow.lake.watermark import Watermark
from dicomflow.pipelines.pipeline import RunSummary
from dicomflow.schemas.spec import (
    AnonymizeOperator,
    DicomSink,
    DicomwebSink,
    DicomwebSource,
    DimseSink,
    DimseSource,
    FilesSource,
    ListenSource,
    PipelineSpec,
    PixelsOperator,
)


def load_spec(path: str, sets: Sequence[str] = ()) -> PipelineSpec:
    """Read ``path`` (YAML), apply ``sets``, validate."""
    try:
        raw = yaml.safe_load(Path(path).read_text(encoding="utf-8"))
    except OSError as exc:
        raise ConfigError(f"cannot read the spec ({type(exc).__name__})") from None
    except yaml.YAMLError as exc:
        raise ConfigError(f"the spec is not valid YAML: {exc}") from None
    if not isinstance(raw, dict):
        raise ConfigError("the spec must be a YAML mapping")
    for item in sets:
        apply_set(raw, item)
    return validate_spec(raw)


def validate_spec(raw: dict[str, Any]) -> PipelineSpec:
    try:
        return PipelineSpec.model_validate(raw)
    except ValidationError as exc:
        problems = "; ".join(
            f"{'.'.join(str(p) for p in e['loc']) or 'spec'}: {e['msg']}" for e in exc.errors()
        )
        raise ConfigError(f"invalid spec: {problems}") from None


def apply_set(raw: dict[str, Any], item: str) -> None:
    """Apply one ``path=value`` override to the raw spec mapping."""
    path, sep, text = item.partition("=")
    if not sep or not path:
        raise ConfigError("each --set takes PATH=VALUE, e.g. sinks.0.path=/data/lake")
    value = yaml.safe_load(text) if text else ""
    keys = path.split(".")
    node: Any = raw
    for depth, key in enumerate(keys):
        last = depth == len(keys) - 1
        if isinstance(node, list):
            if not key.isdigit() or int(key) >= len(node):
                raise ConfigError(f"--set {path}: no list item {key}")
            if last:
                node[int(key)] = value
            else:
                node = node[int(key)]
        elif isinstance(node, dict):
            if last:
                node[key] = value
            else:
                node = node.setdefault(key, {})
        else:
            raise ConfigError(f"--set {path}: {keys[depth - 1]} is not a mapping or a list")


def run_spec(spec: PipelineSpec, *, progress: bool | None = None) -> RunSummary:
    """Run a validated spec and return its summary."""
    from dicomflow.anonymize.config import deidentifier
    from dicomflow.api import AnonymizeSettings, connect_client, ingest

    source = spec.source
    anonymize = None
    deid = spec.operator("anonymize")
    if isinstance(deid, AnonymizeOperator):
        engine = deidentifier(
            key_file=deid.key_file,
            key_env=deid.key_env,
            profile=deid.profile,
            options=deid.options,
            keep=deid.keep,
            overrides=deid.actions,
            pixel_rules=deid.pixel_rules,
            safe_private=deid.safe_private,
            vocabulary=deid.vocabulary,
            keep_mapping=deid.mapping is not None,
        )
        write_dicom = any(isinstance(s, DicomSink) for s in spec.sinks)
        anonymize = AnonymizeSettings(engine, write_dicom=write_dicom, mapping_dir=deid.mapping)
    pixel_op = spec.operator("pixels")
    pixels = isinstance(pixel_op, PixelsOperator)
    sends = [s for s in spec.sinks if isinstance(s, DimseSink | DicomwebSink)]
    if len(sends) > 1:
        raise ConfigError("a pipeline sends to at most one DIMSE or DICOMweb sink")
    send = sends[0] if sends else None
    lake = spec.lake
    dimse = _dimse_options(source) if isinstance(source, DimseSource) else None
    dicomweb = _dicomweb_options(source) if isinstance(source, DicomwebSource) else None
    send_options: DimseOptions | DicomwebOptions | None = None
    if isinstance(send, DimseSink):
        send_options = _dimse_options(send)
    elif isinstance(send, DicomwebSink):
        send_options = _dicomweb_options(send)
    with connect_client(None, spec.cluster.scheduler, spec.cluster.workers) as client:
        if isinstance(source, ListenSource):
            from dicomflow.pipelines.listen import listen

            return listen(
                client,
                ae_title=source.ae_title,
                port=source.port,
                out=lake.path,
                pixels=pixels,
                options=_listen_options(source),
                allowed_callers=frozenset(source.allow) or None,
                batch_seconds=source.batch_seconds,
            )
        urls = source.urls if isinstance(source, FilesSource) else [source.url]
        query = source.query if isinstance(source, DimseSource | DicomwebSource) else None
        if isinstance(source, DimseSource) and source.cohort:
            query = _cohort_query(source, dimse or DimseOptions())
        watermark = Watermark(LakeLayout(lake.path, lake.storage_options), spec.name)
        run_started = datetime.now(UTC).date()
        if isinstance(source, DimseSource) and spec.incremental and query is not None:
            query = watermark.narrow(query)
        storage = lake.storage_options or (
            source.storage_options if isinstance(source, FilesSource) else {}
        )
        summary = ingest(
            urls,
            out=lake.path,
            pixels=pixels,
            query=query,
            dimse=dimse,
            dicomweb=dicomweb,
            max_associations=spec.limits.max_associations,
            client=client,
            storage_options=storage,
            progress=progress,
            anonymize=anonymize,
            send_to=send.url if send is not None else None,
            send_options=send_options,
            name=spec.name,
            retries=spec.limits.retries,
            frames_per_chunk=pixel_op.frames_per_chunk if pixels else 1,
            expand_palette=pixel_op.expand_palette if pixels else False,
        )
        if isinstance(source, DimseSource) and spec.incremental and summary.accounted:
            watermark.advance(run_started)
        return summary


def _dimse_options(peer: DimseSource | DimseSink) -> DimseOptions:
    return DimseOptions(
        calling_ae=peer.calling_ae,
        tls=TlsOptions.from_files(peer.tls_ca, peer.tls_cert, peer.tls_key),
        username=peer.username,
        password_env=peer.password_env,
    )


def _dicomweb_options(peer: DicomwebSource | DicomwebSink) -> DicomwebOptions:
    return DicomwebOptions(
        tls_ca=peer.tls_ca,
        tls_cert=peer.tls_cert,
        tls_key=peer.tls_key,
        username=peer.username,
        password_env=peer.password_env,
        token_env=peer.token_env,
    )


def _listen_options(source: ListenSource) -> DimseOptions:
    """The SCP's options: TLS when a certificate is given (client certificates with a CA)."""
    if not source.tls_cert:
        return DimseOptions()
    return DimseOptions(tls=TlsOptions(source.tls_ca, source.tls_cert, source.tls_key))


def _cohort_query(source: DimseSource, options: DimseOptions) -> dict[str, str]:
    """One C-FIND per cohort row (batched), then one query listing every study found."""
    from dicomflow.connectors.dimse.address import DimseAddress
    from dicomflow.connectors.dimse.find import find_cohort, read_cohort

    assert source.cohort is not None
    column, values = read_cohort(source.cohort)
    address = DimseAddress.parse(source.url)
    table = find_cohort(address, "study", column, values, query=source.query, options=options)
    studies = sorted({str(u) for u in table.column("StudyInstanceUID").to_pylist() if u})
    if not studies:
        raise ConfigError("no study of the cohort was found on the PACS")
    return {"StudyInstanceUID": "\\".join(studies)}
