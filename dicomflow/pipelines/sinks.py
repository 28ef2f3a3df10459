"""Sinks: the last step of a partition, committing what the operators produced.

``LakeSink`` writes one ``instances`` part and one ``errors`` part per
partition, atomically, under the partition's deterministic name (always both,
so every part directory is readable even when one partition had no errors),
and one part of every table the run's operators declare (``series``, or a
plugin's own). ``CollectSink`` returns the tables to the caller instead.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, ClassVar, Protocol

import pyarrow as pa

from dicomflow._version import __version__
from dicomflow.lake.layout import LakeLayout
from dicomflow.lake.ledger import Ledger, entry_for
from dicomflow.lake.writer import write_part
from dicomflow.operators.base import TableOutput
from dicomflow.operators.flatten import OUTPUT as INSTANCES
from dicomflow.pipelines.instance_rows import rows_table, with_columns
from dicomflow.pipelines.plan import Partition
from dicomflow.records import Batch, InstanceRecord, RunContext
from dicomflow.schemas import (
    ERRORS_SCHEMA_VERSION,
    INSTANCES_SCHEMA_VERSION,
    SERIES_SCHEMA_VERSION,
    errors_schema,
)
from dicomflow.schemas.tables import table_from_rows

SCHEMA_VERSION_KEY = b"dicomflow.schema_version"

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
    """One error row for every failure of every record: its own, or an operator's that
    ran after its row was made (the row stays)."""
    failures = [(r.ref.source, problem) for r in batch.records for problem in r.problems]
    columns: dict[str, list[Any]] = {
        "source": [source for source, _ in failures],
        "stage": [problem.stage for _, problem in failures],
        "code": [str(problem.code) for _, problem in failures],
        "message": [problem.message for _, problem in failures],
        "run_id": [batch.context.run_id] * len(failures),
        "schema_version": [ERRORS_SCHEMA_VERSION] * len(failures),
    }
    return pa.table(columns, schema=errors_schema())


def declared_rows(batch: Batch, table: str) -> list[dict[str, Any]]:
    """The rows of a declared ``table``: the batch's own, then each record's (a record
    carries one row as a mapping, or a list of them, in ``outputs[table]``)."""
    rows = list(batch.tables.get(table, ()))
    for record in batch.records:
        value = record.outputs.get(table)
        if isinstance(value, Mapping):
            rows.append(dict(value))
        elif isinstance(value, list | tuple):
            rows.extend(dict(row) for row in value)
    return rows


def declared_table(batch: Batch, output: TableOutput) -> pa.Table:
    """One declared table of ``batch``, its schema version in the Parquet metadata."""
    table = table_from_rows(declared_rows(batch, output.name), output.schema)
    return table.replace_schema_metadata(
        {**(table.schema.metadata or {}), SCHEMA_VERSION_KEY: output.version.encode()}
    )


@dataclass(frozen=True)
class LakeSink:
    """Commit the partition's ``instances`` and ``errors`` parts and a part of every
    declared table to a lake, then its ledger entry (the commit itself: parts without
    an entry are never read).

    ``config`` is the digest of the run's configuration the entry is filed under;
    ``operators`` names each operator of the run with a digest of its settings, so
    another pipeline over the same lake can tell what it may reuse.
    """

    layout: LakeLayout
    config: str = "default"
    tables: tuple[TableOutput, ...] = ()
    operators: dict[str, str] = field(default_factory=dict)
    columns: tuple[pa.Field, ...] = ()  # operators' own columns on ``instances``
    # False for records made outside a partition (a lake operator's, a retrieval's
    # missing instances): with no instance rows they add no ``instances`` part, whose
    # schema would lack the columns the run's operators added.
    empty_instances: bool = True
    name: ClassVar[str] = "lake"

    def write(self, batch: Batch, partition: Partition) -> SinkResult:
        instances = with_columns(instance_table(batch), batch.records, self.columns)
        errors = error_table(batch)
        _, root = self.layout.filesystem()
        parts: dict[str, str] = {}
        versions = operator_versions()
        for output in self.tables:
            if output.name == INSTANCES:
                continue  # built from the records' rows below
            table = declared_table(batch, output)
            parts[output.name] = write_part(self.layout, output.name, partition.name, table)
            versions[f"{output.name}_schema"] = output.version
        parts["errors"] = write_part(self.layout, "errors", partition.name, errors)
        if instances.num_rows or self.empty_instances:
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
            versions=versions,
            operators=self.operators,
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


def commit_records(
    layout: LakeLayout,
    config: str,
    name: str,
    records: Sequence[InstanceRecord],
    context: RunContext,
    tables: Sequence[TableOutput] = (),
) -> None:
    """Commit records made outside any partition task (a retrieval's missing
    instances, a commitment's refusals, a lake operator's rows) as one partition of
    their own, ``name``, under ``config``."""
    refs = tuple(record.ref for record in records)
    sink = LakeSink(layout, config, tuple(tables), empty_instances=False)
    sink.write(Batch(tuple(records), context), Partition(0, name, refs))
