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

from dicomflow.dicom.rows import rows_to_table
from dicomflow.lake.layout import LakeLayout
from dicomflow.lake.writer import write_part
from dicomflow.operators.flatten import OUTPUT as INSTANCES
from dicomflow.pipelines.plan import Partition
from dicomflow.records import Batch
from dicomflow.schemas import ERRORS_SCHEMA_VERSION, errors_schema, series_schema


@dataclass(frozen=True)
class SinkResult:
    rows: int
    errors: int
    tables: dict[str, pa.Table] | None = None


class Sink(Protocol):
    name: ClassVar[str]

    def write(self, batch: Batch, partition: Partition) -> SinkResult: ...


def instance_table(batch: Batch) -> pa.Table:
    rows = [r.outputs[INSTANCES] for r in batch.records if not r.failed and INSTANCES in r.outputs]
    return rows_to_table(rows)


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
    """Commit the partition's ``instances`` and ``errors`` parts to a lake."""

    layout: LakeLayout
    name: ClassVar[str] = "lake"

    def write(self, batch: Batch, partition: Partition) -> SinkResult:
        instances = instance_table(batch)
        errors = error_table(batch)
        if "series" in batch.tables:
            series = pa.Table.from_pylist(list(batch.tables["series"]), schema=series_schema())
            write_part(self.layout, "series", partition.name, series)
        write_part(self.layout, "errors", partition.name, errors)
        write_part(self.layout, "instances", partition.name, instances)
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
