"""The notebook API: ``scan`` a source, ``read_lake`` to open the result."""

from __future__ import annotations

from collections.abc import Sequence
from contextlib import nullcontext
from typing import Any

import pyarrow as pa
from distributed import Client

from dicomflow.lake.reader import Lake, read_lake
from dicomflow.pipelines.cluster import open_client
from dicomflow.pipelines.pipeline import RunSummary
from dicomflow.pipelines.plan import PartitionPolicy
from dicomflow.pipelines.scan import scan_pipeline
from dicomflow.schemas import errors_schema, instances_schema

__all__ = ["Lake", "read_lake", "run_scan", "scan", "scan_errors"]


def _current_client() -> Client | None:
    try:
        from distributed import get_client

        return get_client()
    except ValueError:
        return None


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
    active = client or (_current_client() if scheduler is None else None)
    manager = nullcontext(active) if active is not None else open_client(scheduler, workers)
    with manager as connected:
        return pipeline.run(connected, progress=progress)


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
