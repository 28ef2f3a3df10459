"""The notebook API: ``scan`` a source, ``read_lake`` to open the result."""

from __future__ import annotations

from collections.abc import Sequence
from contextlib import AbstractContextManager, nullcontext
from typing import Any

import pyarrow as pa
from distributed import Client

from dicomflow.lake.reader import Lake, read_lake
from dicomflow.pipelines.cluster import open_client
from dicomflow.pipelines.pipeline import RunSummary
from dicomflow.pipelines.plan import PartitionPolicy
from dicomflow.pipelines.scan import scan_pipeline
from dicomflow.schemas import errors_schema, instances_schema

__all__ = ["Lake", "ingest", "open_series", "read_lake", "run_scan", "scan", "scan_errors"]


def _current_client() -> Client | None:
    try:
        from distributed import get_client

        return get_client()
    except ValueError:
        return None


def _connected(
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
    with _connected(client, scheduler, workers) as connected:
        return pipeline.run(connected, progress=progress)


def ingest(
    sources: str | Sequence[str],
    *,
    out: str,
    pixels: bool = True,
    scheduler: str | None = None,
    workers: int | None = None,
    client: Client | None = None,
    storage_options: dict[str, Any] | None = None,
    policy: PartitionPolicy | None = None,
    progress: bool | None = None,
) -> RunSummary:
    """Scan ``sources`` into the lake at ``out`` and, with ``pixels``, write every image
    stack to ``<out>/pixels.zarr`` plus the ``series`` table, all in one run."""
    from dicomflow.pipelines.ingest import IngestOptions, run_ingest

    urls = [sources] if isinstance(sources, str) else list(sources)
    with _connected(client, scheduler, workers) as connected:
        return run_ingest(
            connected,
            urls,
            out=out,
            options=IngestOptions(pixels=pixels),
            storage_options=storage_options,
            policy=policy,
            progress=progress,
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
