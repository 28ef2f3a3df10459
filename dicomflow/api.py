"""The Python API: build a pipeline spec and run it, or talk to a peer.

Everything that runs goes through one compiler (:mod:`dicomflow.pipelines.compiler`):
:func:`scan` and :func:`ingest` only turn their keywords into a
:class:`~dicomflow.schemas.spec.PipelineSpec` (:func:`ingest_spec`), exactly as
the CLI's flags and YAML do, and :func:`run` runs any spec. :func:`echo`,
:func:`query` and :func:`send` talk to a DICOM peer directly.
"""

from __future__ import annotations

import shutil
import tempfile
import weakref
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeAlias

import pyarrow as pa
from distributed import Client

from dicomflow.anonymize.config import deidentifier
from dicomflow.anonymize.engine import Deidentifier
from dicomflow.connectors.dicomweb.address import DicomwebError
from dicomflow.connectors.dimse.errors import DimseError
from dicomflow.errors import ConfigError, SinkError
from dicomflow.labels.segment_info import SegmentInfo
from dicomflow.lake.reader import Lake, read_lake
from dicomflow.pipelines.anonymize import AnonymizeSettings
from dicomflow.pipelines.compiler import Resources, compile_spec
from dicomflow.pipelines.pipeline import RunSummary
from dicomflow.pipelines.plan import PartitionPolicy
from dicomflow.schemas.spec import (
    AnonymizeOperator,
    Cluster,
    DicomSink,
    DicomwebPeerConfig,
    DicomwebSink,
    DicomwebSource,
    DimsePeerConfig,
    DimseSink,
    DimseSource,
    FilesSource,
    FlattenOperator,
    LabelsOperator,
    LakeSink,
    Limits,
    ListenSource,
    OperatorConfig,
    PipelineSpec,
    PixelsOperator,
    RenderOperator,
    ServerThumbnailsOperator,
    SinkConfig,
    SourceConfig,
    SrOperator,
)

__all__ = [
    "AnonymizeOperator",
    "AnonymizeSettings",
    "ConfigError",
    "DimsePeerConfig",
    "FlattenOperator",
    "LabelsOperator",
    "Lake",
    "PeerError",
    "Picture",
    "Pipeline",
    "PixelsOperator",
    "RenderOperator",
    "SegmentInfo",
    "SeriesView",
    "ServerThumbnailsOperator",
    "SinkError",
    "SrOperator",
    "contact_sheet",
    "deidentifier",
    "echo",
    "ingest",
    "ingest_spec",
    "listen_spec",
    "open_series",
    "peer_options",
    "query",
    "read_frames",
    "read_lake",
    "run",
    "run_scan",
    "scan",
    "scan_errors",
    "send",
    "view_series",
    "write_seg",
    "write_sr",
    "write_table",
]

if TYPE_CHECKING:
    import numpy as np

    from dicomflow.display import Picture, SeriesView, contact_sheet, view_series

# Notebook display (Pillow, the renderer) is imported on first use, not by every command.
_DISPLAY_NAMES = frozenset({"Picture", "SeriesView", "contact_sheet", "view_series"})


def __getattr__(name: str) -> Any:
    if name in _DISPLAY_NAMES:
        from dicomflow import display

        return getattr(display, name)
    raise AttributeError(f"module 'dicomflow.api' has no attribute {name!r}")


Pipeline: TypeAlias = PipelineSpec
"""A pipeline is its spec: build one in Python, from YAML, or from the CLI."""

PeerError = (DimseError, DicomwebError)  # a peer failed to answer, or answered with a failure
PYTHON_KEY = "python"  # the key_ref of a de-identifier handed to ingest() in Python
PeerOptions: TypeAlias = Any  # DimseOptions or DicomwebOptions, from dicomflow.connectors


def run(
    spec: PipelineSpec,
    *,
    client: Client | None = None,
    progress: bool | None = None,
    deidentifiers: Mapping[str, Deidentifier] | None = None,
    policy: PartitionPolicy | None = None,
    on_batch: Callable[[RunSummary], Any] | None = None,
    stop: Any = None,
) -> RunSummary:
    """Run ``spec`` and return its summary (its report is written to ``<lake>/_runs/``).

    ``client``: run there (else the spec's cluster: a scheduler, or this machine,
    in this process when the job is small). ``deidentifiers`` are de-identifiers
    built in Python, named by an ``anonymize`` entry's ``key_ref``.
    """
    resources = Resources(
        client=client,
        progress=progress,
        deidentifiers=dict(deidentifiers or {}),
        policy=policy,
        on_batch=on_batch,
        stop=stop,
    )
    return compile_spec(spec, resources).run()


def ingest_spec(
    sources: str | Sequence[str],
    *,
    out: str,
    pixels: bool = False,
    query: Mapping[str, str] | None = None,
    cohort: str | None = None,
    dimse: PeerOptions | None = None,
    dicomweb: PeerOptions | None = None,
    max_associations: int = 2,
    scheduler: str | None = None,
    workers: int | None = None,
    storage_options: Mapping[str, Any] | None = None,
    out_storage_options: Mapping[str, Any] | None = None,
    anonymize: AnonymizeOperator | AnonymizeSettings | None = None,
    write_dicom: bool = False,
    send_to: str | None = None,
    send_options: PeerOptions | None = None,
    commit_port: int | None = None,
    commit_timeout: float = 60.0,
    labels: bool = False,
    name: str = "ingest",
    retries: int = 2,
    frames_per_chunk: int = 1,
    expand_palette: bool = False,
    pyramid: bool = False,
    inline_binary_limit: int = 1024,
    operators: Sequence[OperatorConfig] = (),
    incremental: bool = False,
    late_arrivals: bool = False,
    look_back_days: int | None = None,
    query_level: str = "image",
    retrieve: str = "get",
    move_ae: str | None = None,
    move_port: int | None = None,
    header_only: bool = False,
) -> PipelineSpec:
    """The spec that :func:`ingest` (and ``dicomflow ingest``) runs with these keywords.

    ``sources`` are files, folders, globs and fsspec URLs, or one ``dimse://`` or
    ``dicomweb+http(s)://`` peer retrieved by ``query`` (or a ``cohort`` CSV).
    ``storage_options`` reach the sources and ``out_storage_options`` the lake (the
    source's when not given). ``operators`` are added after the built-in ones.
    For a ``dimse://`` peer, ``query_level`` is where the C-FIND is made (patient,
    study, series or image), and ``retrieve="move"`` has the peer C-MOVE to our own
    Storage SCP, run for the retrieve as ``move_ae`` on ``move_port``. With
    ``header_only`` (``dicomflow scan``), a ``dicomweb+http(s)://`` server is scanned from
    its WADO-RS metadata, without transferring pixel data.
    """
    urls = [sources] if isinstance(sources, str) else list(sources)
    retrieval = _retrieval(query_level, retrieve, move_ae, move_port)
    source = _source(
        urls, query, cohort, dimse, dicomweb, dict(storage_options or {}), retrieval, header_only
    )
    steps: list[OperatorConfig] = []
    if isinstance(anonymize, AnonymizeSettings):
        write_dicom = write_dicom or anonymize.write_dicom
        steps.append(AnonymizeOperator(key_ref=PYTHON_KEY, mapping=anonymize.mapping_dir))
    elif anonymize is not None:
        steps.append(anonymize)
    steps.append(FlattenOperator(inline_binary_limit=inline_binary_limit))
    if pixels or labels:  # labels land on the image stacks pixels writes
        steps.append(
            PixelsOperator(
                frames_per_chunk=frames_per_chunk, expand_palette=expand_palette, pyramid=pyramid
            )
        )
    steps.extend(operators)
    if labels:
        steps.append(LabelsOperator())
    lake_options = storage_options if out_storage_options is None else out_storage_options
    sinks: list[SinkConfig] = [LakeSink(path=out, storage_options=dict(lake_options or {}))]
    if write_dicom:
        if anonymize is None:
            raise ConfigError("--dicom keeps de-identified files: it needs --anonymize")
        sinks.append(DicomSink())
    if send_to is not None:
        sink = _send_sink(send_to, send_options, dimse, dicomweb)
        if commit_port is not None:
            if not isinstance(sink, DimseSink):
                raise ConfigError("Storage Commitment is DIMSE's: --commit needs a dimse:// peer")
            sink = sink.model_copy(
                update={
                    "commit": True,
                    "commit_port": commit_port,
                    "commit_timeout": commit_timeout,
                }
            )
        sinks.append(sink)
    return _validated(
        name=name,
        source=source,
        operators=steps,
        sinks=sinks,
        cluster=Cluster(workers=workers, scheduler=scheduler),
        limits=Limits(max_associations=max_associations, retries=retries),
        incremental=incremental,
        late_arrivals=late_arrivals,
        look_back_days=look_back_days,
    )


def ingest(
    sources: str | Sequence[str],
    *,
    out: str,
    pixels: bool = False,
    client: Client | None = None,
    progress: bool | None = None,
    policy: PartitionPolicy | None = None,
    anonymize: AnonymizeOperator | AnonymizeSettings | None = None,
    **options: Any,
) -> RunSummary:
    """Ingest ``sources`` into the lake at ``out``, all in one run; return the summary.

    Sources are files, folders, globs or fsspec URLs, or one ``dimse://AE@host:port``
    peer (C-FIND by ``query``, then C-GET) or ``dicomweb+https://host/root`` server
    (QIDO-RS, then WADO-RS). With ``pixels``, every image stack is written to
    ``<out>/pixels.zarr`` plus the ``series`` table. With ``anonymize`` (a spec entry,
    or :class:`AnonymizeSettings` around a :func:`deidentifier`), every input is
    de-identified first and every output is made from de-identified data. With
    ``send_to``, every instance written is also sent there with C-STORE or STOW-RS
    (failures are ``not_stored`` error rows). Other keywords: :func:`ingest_spec`.
    """
    spec = ingest_spec(sources, out=out, pixels=pixels, anonymize=anonymize, **options)
    engines = (
        {PYTHON_KEY: anonymize.deidentifier} if isinstance(anonymize, AnonymizeSettings) else {}
    )
    return run(spec, client=client, progress=progress, deidentifiers=engines, policy=policy)


def run_scan(
    sources: str | Sequence[str],
    *,
    out: str | None = None,
    scheduler: str | None = None,
    workers: int | None = None,
    client: Client | None = None,
    storage_options: Mapping[str, Any] | None = None,
    out_storage_options: Mapping[str, Any] | None = None,
    policy: PartitionPolicy | None = None,
    progress: bool | None = None,
    inline_binary_limit: int = 1024,
) -> RunSummary:
    """Scan headers into the lake at ``out`` and return the run's summary: an ingest
    whose only operator is ``flatten``. With ``out=None`` the lake is temporary and
    the summary's ``tables`` hold its ``instances`` and ``errors`` (see :func:`scan_errors`)."""
    if out is None:
        with tempfile.TemporaryDirectory(prefix="dicomflow-scan-") as folder:
            summary = run_scan(
                sources,
                out=folder,
                scheduler=scheduler,
                workers=workers,
                client=client,
                storage_options=storage_options,
                policy=policy,
                progress=progress,
                inline_binary_limit=inline_binary_limit,
            )
            lake = read_lake(folder)
            summary.tables = {"instances": [lake.instances()], "errors": [lake.errors()]}
            summary.report = None
        return summary
    return ingest(
        sources,
        out=out,
        pixels=False,
        client=client,
        progress=progress,
        policy=policy,
        scheduler=scheduler,
        workers=workers,
        storage_options=storage_options,
        out_storage_options=out_storage_options,
        inline_binary_limit=inline_binary_limit,
        name="scan",
    )


def scan(src: str | Sequence[str], out: str | None = None, **options: Any) -> Lake:
    """Scan DICOM headers from ``src`` (paths, directories, globs, fsspec URLs) into a
    lake and return it, whatever the arguments: ``lake.instances()`` is the table,
    ``lake.errors()`` the inputs that could not be read. With ``out=None`` the lake is
    a temporary folder, removed when the returned :class:`Lake` is garbage collected.
    Keyword options are those of :func:`run_scan`.
    """
    if out is not None:
        run_scan(src, out=out, **options)
        return read_lake(out, storage_options=options.get("out_storage_options"))
    folder = tempfile.mkdtemp(prefix="dicomflow-scan-")
    try:
        run_scan(src, out=folder, **options)
    except BaseException:
        shutil.rmtree(folder, ignore_errors=True)
        raise
    lake = read_lake(folder)
    weakref.finalize(lake, shutil.rmtree, folder, True)
    return lake


def scan_errors(summary: RunSummary) -> pa.Table:
    """The error rows of a scan collected in memory (``run_scan(out=None)``)."""
    from dicomflow.schemas import errors_schema

    parts = summary.tables.get("errors", [])
    return pa.concat_tables(parts) if parts else errors_schema().empty_table()


def listen_spec(
    *,
    ae_title: str,
    port: int,
    out: str,
    pixels: bool = False,
    allow: Sequence[str] = (),
    batch_seconds: float = 5.0,
    host: str = "0.0.0.0",  # noqa: S104 (an SCP listens)
    max_associations: int = 16,
    tls_ca: str | None = None,
    tls_cert: str | None = None,
    tls_key: str | None = None,
    scheduler: str | None = None,
    workers: int | None = None,
    anonymize: AnonymizeOperator | None = None,
    name: str = "listen",
) -> PipelineSpec:
    """The spec of ``dicomflow listen``: a Storage SCP whose received files run
    through the same operators as any other source."""
    steps: list[OperatorConfig] = [] if anonymize is None else [anonymize]
    steps.append(FlattenOperator())
    if pixels:
        steps.append(PixelsOperator())
    source = ListenSource(
        ae_title=ae_title,
        port=port,
        allow=list(allow),
        batch_seconds=batch_seconds,
        host=host,
        max_associations=max_associations,
        tls_ca=tls_ca,
        tls_cert=tls_cert,
        tls_key=tls_key,
    )
    return _validated(
        name=name,
        source=source,
        operators=steps,
        sinks=[LakeSink(path=out)],
        cluster=Cluster(workers=workers, scheduler=scheduler),
    )


def echo(url: str, peer: DimsePeerConfig | None = None) -> Any:
    """C-ECHO the DICOM peer at ``dimse://AE@host:port``; returns the round trip and
    the accepted presentation contexts. ``peer`` carries our AE title, TLS and identity."""
    from dicomflow.connectors.dimse.address import DimseAddress
    from dicomflow.connectors.dimse.echo import c_echo
    from dicomflow.pipelines.endpoints import dimse_options

    settings = peer or DimsePeerConfig(url=url)
    return c_echo(DimseAddress.parse(url), dimse_options(settings))


def query(
    url: str,
    *,
    level: str = "study",
    keys: Mapping[str, str] | None = None,
    model: str = "study",
    return_keys: Sequence[str] = (),
    limit: int | None = None,
    cohort: str | None = None,
    peer: DimsePeerConfig | DicomwebPeerConfig | None = None,
) -> pa.Table:
    """Query the peer at ``dimse://AE@host:port`` (C-FIND) or the server at
    ``dicomweb+https://host/root`` (QIDO-RS: study, series or instance level); the
    matches as a table typed like ``instances``. With ``cohort`` (a CSV with an
    AccessionNumber, PatientID or StudyInstanceUID column), one query per row, results
    joined. A lone ``*`` is universal matching."""
    from dicomflow.connectors.dimse.find import read_cohort

    cohort_rows = read_cohort(cohort) if cohort else None
    if url.startswith(("dicomweb+http://", "dicomweb+https://")):
        return _qido(url, level, keys, return_keys, limit, cohort_rows, peer)
    from dicomflow.connectors.dimse.address import DimseAddress
    from dicomflow.connectors.dimse.find import find_cohort, find_table
    from dicomflow.pipelines.endpoints import dimse_options

    if level == "instance":
        level = "image"
    address = DimseAddress.parse(url)
    if peer is not None and not isinstance(peer, DimsePeerConfig):
        raise ConfigError("a DICOMweb server's settings were given for a dimse:// peer")
    options = dimse_options(peer or DimsePeerConfig(url=url))
    if level == "patient":  # only the patient-root model has a PATIENT level
        model = "patient"
    if cohort_rows is not None:
        column, values = cohort_rows
        return find_cohort(
            address,
            level,  # type: ignore[arg-type]
            column,
            values,
            query=dict(keys or {}),
            model=model,  # type: ignore[arg-type]
            return_keys=tuple(return_keys),
            options=options,
        )
    return find_table(
        address,
        level,  # type: ignore[arg-type]
        dict(keys or {}),
        model=model,  # type: ignore[arg-type]
        return_keys=tuple(return_keys),
        limit=limit,
        options=options,
    )


def _qido(
    url: str,
    level: str,
    keys: Mapping[str, str] | None,
    return_keys: Sequence[str],
    limit: int | None,
    cohort_rows: tuple[str, list[str]] | None,
    peer: DimsePeerConfig | DicomwebPeerConfig | None,
) -> pa.Table:
    """:func:`query` of a DICOMweb server."""
    from dicomflow.connectors.dicomweb.address import DicomwebAddress
    from dicomflow.connectors.dicomweb.qido import search_cohort, search_table
    from dicomflow.pipelines.endpoints import dicomweb_options

    if peer is not None and not isinstance(peer, DicomwebPeerConfig):
        raise ConfigError("a DIMSE peer's settings were given for a DICOMweb server")
    address = DicomwebAddress.parse(url)
    options = dicomweb_options(peer or DicomwebPeerConfig(url=url))
    level = "instance" if level == "image" else level
    if cohort_rows is not None:
        column, values = cohort_rows
        return search_cohort(
            address, level, column, values, options, query=keys, return_keys=return_keys
        )
    return search_table(
        address, level, dict(keys or {}), options, return_keys=return_keys, limit=limit
    )


def send(paths: Sequence[str | Path], url: str, peer: DimsePeerConfig | None = None) -> list[Any]:
    """C-STORE files and folders (recursively) to the peer at ``dimse://AE@host:port``;
    one outcome per file, in path order."""
    from dicomflow.connectors.dimse.address import DimseAddress
    from dicomflow.connectors.dimse.store import c_store
    from dicomflow.pipelines.endpoints import dimse_options

    files = sorted(
        p for s in map(Path, paths) for p in (s.rglob("*") if s.is_dir() else [s]) if p.is_file()
    )
    return c_store(DimseAddress.parse(url), files, dimse_options(peer or DimsePeerConfig(url=url)))


def request_commitment(
    url: str,
    sent: Sequence[tuple[str, str]],
    *,
    report_port: int,
    timeout: float,
    peer: DimsePeerConfig | None = None,
) -> Any:
    """Storage Commitment for ``sent`` (SOP class, SOP instance) pairs."""
    from dicomflow.connectors.dimse.address import DimseAddress
    from dicomflow.connectors.dimse.commitment import request_commitment as commit
    from dicomflow.pipelines.endpoints import dimse_options

    return commit(
        DimseAddress.parse(url),
        list(sent),
        dimse_options(peer or DimsePeerConfig(url=url)),
        report_port=report_port,
        timeout=timeout,
    )


def open_series(
    lake: str | Lake,
    series_uid: str,
    *,
    stack: str | None = None,
    level: int = 0,
    as_numpy: bool = False,
    labels: bool = False,
) -> Any:
    """Open one stack of a series written by ``ingest --pixels`` (its largest stack, or
    the one named ``stack``; pyramid ``level`` 0 is full resolution, -1 the coarsest).

    Returns a lazy, dask-backed ``xarray.DataArray`` whose dimensions are the stored
    array's (``z``, ``y``, ``x``, and ``c`` for colour). ``z``, ``y`` and ``x`` are in
    millimetres from the patient origin along the stack's own axes (the OME
    ``translation + index * scale``: for an axial stack, the S, P and L of each pixel
    centre), or in pixels when the stack has no geometry. ``position_L``/``_P``/``_S``
    give each slice's first pixel centre in patient space (LPS, mm; the slice's Image
    Position (Patient) at level 0) and ``SOPInstanceUID`` its instance. ``attrs`` hold
    the ``affine`` (index (z, y, x) to LPS mm), ``spatial_units``, ``spacing``,
    ``ImageOrientationPatient``, ``FrameOfReferenceUID`` (when known), the value
    ``units`` and the QC flags (see the lake page of the docs). With ``as_numpy=True``
    returns ``(numpy array, affine)`` instead: the level's array as stored, and its affine.
    With ``labels=True`` (level 0), the stack's label images (``ingest --labels``) come
    too: an ``xarray.Dataset`` of ``image`` and ``labels/<name>`` on the same z/y/x
    coordinates, or ``(array, affine, {name: labels array})``.
    """
    from dicomflow.pixels.open import open_stack

    return open_stack(
        read_lake(lake) if isinstance(lake, str) else lake,
        series_uid,
        stack=stack,
        level=level,
        as_numpy=as_numpy,
        labels=labels,
    )


def read_frames(
    url: str, frames: Sequence[int] = (1,), peer: DicomwebPeerConfig | None = None
) -> np.ndarray:
    """Frames of one instance on a DICOMweb server (WADO-RS ``/frames``), without
    retrieving the instance: ``url`` is its WADO-RS URL (the ``source`` of a header-only
    scan's row), ``frames`` are numbered from 1. Returns the stored values, shaped
    (frames, rows, columns[, samples]) as pydicom's ``pixel_array`` of the file; the
    server decodes compressed frames (colour models that exist only compressed, such
    as YBR_FULL_422, are refused: retrieve those instances)."""
    from dicomflow.connectors.dicomweb.address import DicomwebAddress
    from dicomflow.connectors.dicomweb.frames import InstanceLocation
    from dicomflow.connectors.dicomweb.frames import read_frames as fetch
    from dicomflow.pipelines.endpoints import dicomweb_options

    location = InstanceLocation.parse(url)
    if peer is not None and DicomwebAddress.parse(peer.url) != location.address:
        raise ConfigError(  # its credentials are for its own server, never another
            "the instance's URL is on another server than the peer whose settings were given"
        )
    options = dicomweb_options(peer or DicomwebPeerConfig(url=str(location.address)))
    return fetch(location, options, list(frames))


def write_sr(
    measurements: pa.Table | Sequence[Mapping[str, Any]],
    out: str | Path,
    *,
    lake: str | Lake | None = None,
    sources: Mapping[str, str] | None = None,
    observer: str = "dicomflow",
    storage_options: Mapping[str, Any] | None = None,
) -> Path:
    """Write measurements (rows shaped like the lake's ``measurements`` table, such as a
    model's output) as a TID 1500 Measurement Report that references the images they
    were made on: found through ``lake``'s ``instances`` (their ``source``), or in
    ``sources`` (SOP Instance UID → file or URL). Returns the SR's path."""
    from dicomflow.sr.write import write_sr as write

    rows = measurements.to_pylist() if isinstance(measurements, pa.Table) else measurements
    if sources is None:
        if lake is None:
            raise ConfigError("give the lake the measured images are in, or their sources")
        opened = read_lake(lake) if isinstance(lake, str) else lake
        table = opened.instances(columns=["SOPInstanceUID", "source"])
        sources = dict(zip(*(table.column(c).to_pylist() for c in table.column_names), strict=True))
    return write(rows, sources, out, observer=observer, storage_options=storage_options)


def write_seg(
    lake: str | Lake,
    series_uid: str,
    mask: Any,
    out: str | Path,
    *,
    segments: Mapping[int, Any] | None = None,
    stack: str | None = None,
    storage_options: Mapping[str, Any] | None = None,
) -> Path:
    """Write ``mask`` (an array on the grid of the series' image stack, as
    ``open_series(..., as_numpy=True)`` gives it: 0 background, n segment n; or
    booleans) as a binary DICOM SEG referencing the stack's instances. ``segments``
    maps a mask value to a :class:`SegmentInfo` (label,
    category, type, algorithm). Returns the SEG's path."""
    from dicomflow.labels.write import write_seg as write

    opened = read_lake(lake) if isinstance(lake, str) else lake
    return write(
        opened,
        series_uid,
        mask,
        out,
        segments=segments,
        stack=stack,
        storage_options=storage_options,
    )


def load_spec(path: str, sets: Sequence[str] = ()) -> PipelineSpec:
    """Read a YAML spec, apply ``--set PATH=VALUE`` overrides, validate."""
    from dicomflow.pipelines.spec_files import load_spec as load

    return load(path, sets)


def peer_options(
    *,
    calling_ae: str = "DICOMFLOW",
    tls_ca: str | None = None,
    tls_cert: str | None = None,
    tls_key: str | None = None,
    username: str | None = None,
    password_env: str | None = None,
    token_env: str | None = None,
    oauth_token_url: str | None = None,
    oauth_client_id: str | None = None,
    oauth_client_secret_env: str | None = None,
    oauth_refresh_token_env: str | None = None,
    oauth_scope: str | None = None,
) -> tuple[PeerOptions, PeerOptions]:
    """The connection options of a DIMSE peer and of a DICOMweb server from the same
    settings (the CLI's peer flags); each is built from its spec entry."""
    from dicomflow.pipelines.endpoints import dicomweb_options, dimse_options

    common: dict[str, Any] = {
        "tls_ca": tls_ca,
        "tls_cert": tls_cert,
        "tls_key": tls_key,
        "username": username,
        "password_env": password_env,
    }
    try:
        dimse = DimsePeerConfig(url="dimse://X@h:1", calling_ae=calling_ae, **common)
        web = DicomwebPeerConfig(
            url="dicomweb+http://h",
            token_env=token_env,
            oauth_token_url=oauth_token_url,
            oauth_client_id=oauth_client_id,
            oauth_client_secret_env=oauth_client_secret_env,
            oauth_refresh_token_env=oauth_refresh_token_env,
            oauth_scope=oauth_scope,
            **common,
        )
    except ValueError as exc:
        raise ConfigError(f"invalid peer settings: {exc}") from None
    return dimse_options(dimse), dicomweb_options(web)


def write_table(table: pa.Table, path: str) -> None:
    """Write ``table`` as one Parquet file (zstd)."""
    import pyarrow.parquet as pq

    pq.write_table(table, path, compression="zstd")


def _validated(**fields: Any) -> PipelineSpec:
    from dicomflow.pipelines.spec_files import validate_spec

    return validate_spec(fields)


def _source(
    urls: list[str],
    query: Mapping[str, str] | None,
    cohort: str | None,
    dimse: PeerOptions | None,
    dicomweb: PeerOptions | None,
    storage_options: dict[str, Any],
    retrieval: dict[str, Any] | None = None,
    header_only: bool = False,
) -> SourceConfig:
    peers = [u for u in urls if u.startswith(("dimse://", "dicomweb+http://", "dicomweb+https://"))]
    if not peers:
        return FilesSource(urls=urls, storage_options=storage_options)
    if len(urls) > 1:
        raise ConfigError("a pipeline has one source: one peer, or files (not both)")
    if not query and not cohort:
        raise ConfigError("a PACS or DICOMweb source needs a query (-q KEYWORD=VALUE)")
    url = peers[0]
    try:
        if url.startswith("dimse://"):
            if header_only:
                raise ConfigError(
                    "a DIMSE peer has no header-only retrieval: dicomflow query makes "
                    "the C-FIND, dicomflow ingest retrieves the instances"
                )
            return DimseSource(
                url=url,
                query=dict(query or {}),
                cohort=cohort,
                **_dimse_fields(dimse),
                **(retrieval or {}),
            )
        if retrieval:
            raise ConfigError("--query-level and --retrieve move are for dimse:// sources")
        return DicomwebSource(
            url=url,
            query=dict(query or {}),
            header_only=header_only,
            **_dicomweb_fields(dicomweb),
        )
    except ValueError as exc:
        raise ConfigError(f"invalid source: {exc}") from None


def _retrieval(
    query_level: str, retrieve: str, move_ae: str | None, move_port: int | None
) -> dict[str, Any]:
    """The DIMSE source's query level and retrieval fields that differ from the defaults."""
    fields = {
        "query_level": query_level,
        "retrieve": retrieve,
        "move_ae": move_ae,
        "move_port": move_port,
    }
    defaults = {"query_level": "image", "retrieve": "get", "move_ae": None, "move_port": None}
    return {k: v for k, v in fields.items() if v != defaults[k]}


def _send_sink(
    url: str, options: PeerOptions | None, dimse: PeerOptions | None, dicomweb: PeerOptions | None
) -> SinkConfig:
    from dicomflow.connectors.dicomweb.address import DicomwebOptions
    from dicomflow.connectors.dimse.address import DimseOptions

    try:
        if url.startswith("dimse://"):
            chosen = options if isinstance(options, DimseOptions) else dimse
            return DimseSink(url=url, **_dimse_fields(chosen))
        chosen = options if isinstance(options, DicomwebOptions) else dicomweb
        return DicomwebSink(url=url, **_dicomweb_fields(chosen))
    except ValueError as exc:
        raise ConfigError(f"invalid --send target: {exc}") from None


def _dimse_fields(options: PeerOptions | None) -> dict[str, Any]:
    """A :class:`DimseOptions` as the fields of a spec's DIMSE peer entry."""
    if options is None:
        return {}
    tls = options.tls
    return {
        "calling_ae": options.calling_ae,
        "connect_timeout": options.connect_timeout,
        "acse_timeout": options.acse_timeout,
        "dimse_timeout": options.dimse_timeout,
        "network_timeout": options.network_timeout,
        "tls_ca": tls.ca_file if tls else None,
        "tls_cert": tls.cert_file if tls else None,
        "tls_key": tls.key_file if tls else None,
        "username": options.username,
        "password_env": options.password_env,
    }


def _dicomweb_fields(options: PeerOptions | None) -> dict[str, Any]:
    """A :class:`DicomwebOptions` as the fields of a spec's DICOMweb peer entry."""
    if options is None:
        return {}
    names = DicomwebPeerConfig.model_fields.keys() - {"url"}
    return {name: getattr(options, name) for name in names}
