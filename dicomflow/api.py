"""The notebook API: ``scan`` a source, ``read_lake`` to open the result."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from contextlib import AbstractContextManager, nullcontext
from datetime import UTC, datetime
from typing import Any

import pyarrow as pa
from distributed import Client

from dicomflow.anonymize.config import deidentifier
from dicomflow.connectors.dicomweb.address import DicomwebAddress, DicomwebOptions
from dicomflow.connectors.dimse.address import DimseAddress, DimseOptions
from dicomflow.errors import ConfigError
from dicomflow.lake.dicom_files import remove_files
from dicomflow.lake.layout import LakeLayout
from dicomflow.lake.reader import Lake, read_lake
from dicomflow.operators.store import Store
from dicomflow.pipelines.anonymize import AnonymizeSettings
from dicomflow.pipelines.cluster import open_client
from dicomflow.pipelines.limits import associations_limit
from dicomflow.pipelines.peers import is_peer_url, peer_for
from dicomflow.pipelines.pipeline import RunSummary, new_run_id
from dicomflow.pipelines.plan import PartitionPolicy
from dicomflow.pipelines.retrieve import report_missing, retrieve
from dicomflow.pipelines.scan import scan_pipeline
from dicomflow.records import RunContext
from dicomflow.schemas import errors_schema, instances_schema

__all__ = [
    "AnonymizeSettings",
    "Lake",
    "connect_client",
    "deidentifier",
    "ingest",
    "open_series",
    "read_lake",
    "run_scan",
    "scan",
    "scan_errors",
]


def _current_client() -> Client | None:
    try:
        from distributed import get_client

        return get_client()
    except ValueError:
        return None


def connect_client(
    client: Client | None, scheduler: str | None, workers: int | None
) -> AbstractContextManager[Client]:
    """``client`` if given, else an already-active client, else the scheduler named by
    ``scheduler``/``DASK_SCHEDULER_ADDRESS``, else a new local cluster (closed after)."""
    active = client or (_current_client() if scheduler is None else None)
    return nullcontext(active) if active is not None else open_client(scheduler, workers)


def run_scan(
    sources: Sequence[str],
    *,
    out: str | None = None,
    scheduler: str | None = None,
    workers: int | None = None,
    client: Client | None = None,
    storage_options: dict[str, Any] | None = None,
    policy: PartitionPolicy | None = None,
    progress: bool | None = None,
) -> RunSummary:
    """Run the metadata scan and return its summary (used by the CLI and :func:`scan`).

    Uses ``client`` if given, else an already-active client, else the scheduler
    named by ``scheduler``/``DASK_SCHEDULER_ADDRESS``, else a local cluster.
    """
    pipeline = scan_pipeline(sources, out=out, storage_options=storage_options, policy=policy)
    with connect_client(client, scheduler, workers) as connected:
        return pipeline.run(connected, progress=progress)


def ingest(
    sources: str | Sequence[str],
    *,
    out: str,
    pixels: bool = True,
    query: Mapping[str, str] | None = None,
    dimse: DimseOptions | None = None,
    dicomweb: DicomwebOptions | None = None,
    max_associations: int = 2,
    scheduler: str | None = None,
    workers: int | None = None,
    client: Client | None = None,
    storage_options: dict[str, Any] | None = None,
    policy: PartitionPolicy | None = None,
    progress: bool | None = None,
    anonymize: AnonymizeSettings | None = None,
    send_to: str | None = None,
    send_options: DimseOptions | DicomwebOptions | None = None,
    name: str = "ingest",
    retries: int = 2,
    frames_per_chunk: int = 1,
    expand_palette: bool = False,
) -> RunSummary:
    """Ingest ``sources`` into the lake at ``out``, all in one run.

    Sources are files, folders, globs or fsspec URLs, ``dimse://AE@host:port``
    peers (retrieved with C-GET by ``query``, e.g. ``{"StudyInstanceUID": …}``) and
    ``dicomweb+https://host/root`` servers (QIDO-RS then WADO-RS by the same
    ``query``), at most ``max_associations`` connections to a peer at a time. With
    ``pixels``, every image stack is
    written to ``<out>/pixels.zarr`` plus the ``series`` table. With
    ``anonymize`` (see :func:`deidentifier`), every input is de-identified first
    and all outputs are made from the de-identified data; retrieved originals
    are deleted once de-identified. With ``send_to`` (``dimse://AE@host:port`` or
    ``dicomweb+https://host/root``), every instance written is also sent there with
    C-STORE or STOW-RS (the de-identified files when anonymizing), at most
    ``max_associations`` at a time; failures are ``not_stored`` error rows.
    ``send_options`` configure that peer (else ``dimse``/``dicomweb`` do).
    """
    from dicomflow.pipelines.ingest import IngestOptions, run_ingest

    urls = [sources] if isinstance(sources, str) else list(sources)
    after: tuple[Store, ...] = ()
    if send_to is not None:
        after = (
            _store_to(
                send_to, send_options, dimse, dicomweb, max_associations, storage_options or {}
            ),
        )
    peers = [peer_for(u, dimse, dicomweb) for u in urls if is_peer_url(u)]
    files = [u for u in urls if not is_peer_url(u)]
    if peers and not query:
        raise ConfigError("a PACS or DICOMweb source needs a query (-q KEYWORD=VALUE)")
    with connect_client(client, scheduler, workers) as connected:
        missing = 0
        retrieved: list[str] = []
        layout = LakeLayout(out, dict(storage_options or {}))
        for peer in peers:
            paths, lost = retrieve(
                connected, peer, query or {}, layout=layout, max_associations=max_associations
            )
            files.extend(paths)
            retrieved.extend(paths)
            missing += report_missing(
                layout, peer, lost, RunContext(new_run_id(), datetime.now(UTC)), query
            )
        summary = run_ingest(
            connected,
            files,
            out=out,
            options=IngestOptions(
                pixels=pixels,
                frames_per_chunk=frames_per_chunk,
                expand_palette=expand_palette,
                after_flatten=after,
            ),
            storage_options=storage_options,
            policy=policy,
            progress=progress,
            anonymize=anonymize,
            name=name,
            retries=retries,
        )
        if anonymize is not None and retrieved:
            remove_files(layout, retrieved)  # originals must not stay in a de-identified lake
    summary.files += missing
    summary.errors += missing
    if missing:
        summary.error_codes["not_retrieved"] += missing
    return summary


def _store_to(
    url: str,
    options: DimseOptions | DicomwebOptions | None,
    dimse: DimseOptions | None,
    dicomweb: DicomwebOptions | None,
    max_associations: int,
    storage_options: dict[str, Any],
) -> Store:
    """The ``store`` operator for ``send_to``: C-STORE to a DIMSE peer, else STOW-RS."""
    target: DimseAddress | DicomwebAddress
    if url.startswith("dimse://"):
        target = DimseAddress.parse(url)
        options = options if isinstance(options, DimseOptions) else dimse or DimseOptions()
    else:
        target = DicomwebAddress.parse(url)
        options = options if isinstance(options, DicomwebOptions) else dicomweb
        options = options or DicomwebOptions()
    return Store(
        target, options, associations_limit(target, max_associations), dict(storage_options)
    )


def open_series(
    lake: str | Lake, series_uid: str, *, stack: str | None = None, as_numpy: bool = False
) -> Any:
    """Open one stack of a series written by ``ingest --pixels``.

    Returns a lazy, dask-backed ``xarray.DataArray`` with ``z``/``y``/``x``
    coordinates in millimetres along the stack's axes (and the affine, units and
    UIDs in ``attrs``); with ``as_numpy=True`` returns ``(numpy array, affine)``.
    """
    from dicomflow.pixels.open import open_stack

    return open_stack(
        read_lake(lake) if isinstance(lake, str) else lake,
        series_uid,
        stack=stack,
        as_numpy=as_numpy,
    )


def scan(
    src: str | Sequence[str],
    out: str | None = None,
    **options: Any,
) -> pa.Table | str:
    """Scan DICOM headers from ``src`` (paths, directories, globs, fsspec URLs).

    With ``out=None`` returns the ``instances`` table as a :class:`pyarrow.Table`
    (use :func:`run_scan` and :func:`scan_errors` to see the error rows too).
    With ``out`` set, writes the lake there and returns its path. Keyword
    options are those of :func:`run_scan`.
    """
    sources = [src] if isinstance(src, str) else list(src)
    summary = run_scan(sources, out=out, **options)
    if out is not None:
        return out
    parts = summary.tables.get("instances", [])
    if not parts:
        return instances_schema().empty_table()
    return pa.concat_tables(parts)


def scan_errors(summary: RunSummary) -> pa.Table:
    """The error rows of a collected scan."""
    parts = summary.tables.get("errors", [])
    return pa.concat_tables(parts) if parts else errors_schema().empty_table()
