"""Sinks: the last step of a partition, committing what the operators produced.

``LakeSink`` writes one ``instances`` part and one ``errors`` part per
partition, atomically, under the partition's deterministic name (always both,
so every part directory is readable even when one partition had no errors).
``CollectSink`` returns the tables to the caller instead, for notebooks.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, ClassVar, Protocol

import pyarrow as pa

from dicomflow._version import __version__
from dicomflow.lake.layout import LakeLayout
from dicomflow.lake.ledger import Ledger, entry_for
from dicomflow.lake.writer import write_part
from dicomflow.pipelines.instance_rows import rows_table
from dicomflow.pipelines.plan import Partition
from dicomflow.records import Batch
from dicomflow.schemas import (
    ERRORS_SCHEMA_VERSION,
    INSTANCES_SCHEMA_VERSION,
    SERIES_SCHEMA_VERSION,
    errors_schema,
    series_schema,
)

FAILED_PARTITION_STAGE = "partition"  # the stage of error rows for a partition that kept failing


def operator_versions() -> dict[str, str]:
    """What wrote the outputs: the package and the schema versions."""
    return {
        "dicomflow": __version__,
        "instances_schema": INSTANCES_SCHEMA_VERSION,
        "errors_schema": ERRORS_SCHEMA_VERSION,
        "series_schema": SERIES_SCHEMA_VERSION,
    }


@dataclass(frozen=True)
class SinkResult:
    rows: int
    errors: int
    tables: dict[str, pa.Table] | None = None


class Sink(Protocol):
    name: ClassVar[str]

    def write(self, batch: Batch, partition: Partition) -> SinkResult: ...


def instance_table(batch: Batch) -> pa.Table:
    """The batch's ``instances`` table: built ahead, or from its records' rows."""
    if batch.instances is not None:
        table: pa.Table = batch.instances
        return table
    return rows_table(batch.records)


def error_table(batch: Batch) -> pa.Table:
    failed = [r for r in batch.records if r.error is not None]
    columns: dict[str, list[Any]] = {
        "source": [r.ref.source for r in failed],
        "stage": [r.error.stage for r in failed if r.error],
        "code": [str(r.error.code) for r in failed if r.error],
        "message": [r.error.message for r in failed if r.error],
        "run_id": [batch.context.run_id] * len(failed),
        "schema_version": [ERRORS_SCHEMA_VERSION] * len(failed),
    }
    return pa.table(columns, schema=errors_schema())


@dataclass(frozen=True)
class LakeSink:
    """Commit the partition's ``instances`` and ``errors`` parts to a lake, then its
    ledger entry (the commit itself: parts without an entry are never read).

    ``config`` is the digest of the run's configuration the entry is filed under.
    """

    layout: LakeLayout
    config: str = "default"
    name: ClassVar[str] = "lake"

    def write(self, batch: Batch, partition: Partition) -> SinkResult:
        instances = instance_table(batch)
        errors = error_table(batch)
        _, root = self.layout.filesystem()
        parts: dict[str, str] = {}
        if "series" in batch.tables:
            series = pa.Table.from_pylist(list(batch.tables["series"]), schema=series_schema())
            parts["series"] = write_part(self.layout, "series", partition.name, series)
        parts["errors"] = write_part(self.layout, "errors", partition.name, errors)
        parts["instances"] = write_part(self.layout, "instances", partition.name, instances)
        arrays = sorted(
            {str(r["zarr_path"]) for r in batch.tables.get("series", ()) if r.get("zarr_path")}
        )
        entry = entry_for(
            partition.name,
            (r.ref for r in batch.records),
            config=self.config,
            run_id=batch.context.run_id,
            parts={table: path.removeprefix(root + "/") for table, path in parts.items()},
            arrays=arrays,
            versions=operator_versions(),
            complete=not all(
                r.error is not None and r.error.stage == FAILED_PARTITION_STAGE
                for r in batch.records
            ),
        )
        Ledger(self.layout).commit(entry)
        return SinkResult(instances.num_rows, errors.num_rows)


@dataclass(frozen=True)
class CollectSink:
    """Return the partition's tables to the client (for in-memory use)."""

    name: ClassVar[str] = "collect"

    def write(self, batch: Batch, partition: Partition) -> SinkResult:
        instances = instance_table(batch)
        errors = error_table(batch)
        return SinkResult(
            instances.num_rows, errors.num_rows, {"instances": instances, "errors": errors}
        )
