"""The ``instances`` table of a series, built ahead by its reading tasks.

Turning 400 flattened rows into an Arrow table takes about 35 ms. The series'
commit runs alone, after every reading task, so each reading task builds the
table of its own records instead, in parallel, and the commit only joins the
pieces, drops the rows of instances that failed since (a broken image) and
fills in where each instance's frames went (``zarr_path``, ``frame_index``).
The result equals the table built from the committed records' rows.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from typing import Any

import pyarrow as pa

from dicomflow.dicom.rows import rows_to_table
from dicomflow.operators.flatten import OUTPUT as INSTANCES
from dicomflow.records import InstanceRecord
from dicomflow.schemas import instances_schema

LOCATED = ("zarr_path", "frame_index")  # the columns the commit fills in
_SCHEMA_COLUMNS = frozenset(instances_schema().names)  # an operator's added columns are not
WARNINGS = "warnings"  # where the commit adds the faults of operators that ran since
# What the commit still reads of a row once the table is built: the stacks' place in the
# lake and the series rows (dicomflow.pixels.series_writer.plan_stacks and _series_row),
# and whether an image that found no stack should have had one (has_image_row).
COMMIT_COLUMNS = ("StudyInstanceUID", "SeriesInstanceUID", "Modality", "has_pixel_data")


def has_row(record: InstanceRecord) -> bool:
    """Whether ``record`` has a row in the ``instances`` table."""
    return not record.failed and INSTANCES in record.outputs


def rows_table(records: Sequence[InstanceRecord]) -> pa.Table:
    """The ``instances`` table of ``records`` as they are now."""
    return rows_to_table([r.outputs[INSTANCES] for r in records if has_row(r)])


def slimmed(records: Sequence[InstanceRecord]) -> tuple[InstanceRecord, ...]:
    """``records`` without their headers and with their rows cut to :data:`COMMIT_COLUMNS`,
    once :func:`rows_table` holds the rows whole. A full row (about 135 values and the
    header as DICOM JSON) made most of what a read series held on its worker and moved
    to the commit; 5,000 held instances took 118 MB more than 1,000."""
    return tuple(dataclasses.replace(r, header=None, outputs=_slim(r)) for r in records)


def _slim(record: InstanceRecord) -> dict[str, Any]:
    if not has_row(record):
        return record.outputs
    row = record.outputs[INSTANCES]
    kept = {name: row.get(name) for name in COMMIT_COLUMNS}
    added = {name: value for name, value in row.items() if name not in _SCHEMA_COLUMNS}
    return {**record.outputs, INSTANCES: {**kept, **added}}


def with_columns(
    table: pa.Table, records: Sequence[InstanceRecord], columns: Sequence[pa.Field]
) -> pa.Table:
    """``table`` (the ``instances`` rows of ``records``) with the columns operators add,
    their values taken from each record's row."""
    rows = [r.outputs[INSTANCES] for r in records if has_row(r)]
    for column in columns:
        if column.name in table.schema.names:
            continue
        values = pa.array([row.get(column.name) for row in rows], type=column.type)
        table = table.append_column(column, values)
    return table


def packed(table: pa.Table) -> bytes:
    """``table`` as one Arrow IPC stream, to travel between workers in one piece.

    Pickled as it is, inside another object, a table becomes one out-of-band buffer
    per column buffer: about 290 frames for 14 instances' rows, and moving seven such
    results between two workers took 48 ms instead of 18."""
    sink = pa.BufferOutputStream()
    with pa.ipc.new_stream(sink, table.schema) as writer:
        writer.write_table(table)
    return sink.getvalue().to_pybytes()


def unpacked(data: bytes) -> pa.Table:
    """The table :func:`packed` wrote."""
    return pa.ipc.open_stream(pa.py_buffer(data)).read_all()


def located(
    pieces: Sequence[pa.Table], had_row: Sequence[bool], records: Sequence[InstanceRecord]
) -> pa.Table:
    """The ``instances`` table of the committed ``records`` from ``pieces`` (built when
    ``had_row`` was true of each record, in the same order)."""
    table = pa.concat_tables(pieces)
    kept = [r for r, had in zip(records, had_row, strict=True) if had]
    mask = [has_row(r) for r in kept]
    if not all(mask):  # some lost their row since (say, a pixel error that drops it)
        table = table.filter(pa.array(mask, type=pa.bool_()))
    with_rows = [r for r, keep in zip(kept, mask, strict=True) if keep]
    rows = [r.outputs[INSTANCES] for r in with_rows]
    for name in LOCATED:
        index = table.schema.get_field_index(name)
        column = table.schema.field(index)
        values = pa.array([row.get(name) for row in rows], type=column.type)
        table = table.set_column(index, column, values)
    if any(r.faults for r in with_rows):  # operators that failed since: named in warnings
        table = _with_fault_warnings(table, with_rows)
    return table.combine_chunks()


def _with_fault_warnings(table: pa.Table, records: Sequence[InstanceRecord]) -> pa.Table:
    index = table.schema.get_field_index(WARNINGS)
    column = table.schema.field(index)
    values = []
    for before, record in zip(table.column(WARNINGS).to_pylist(), records, strict=True):
        warnings = list(before or ())
        warnings += [w for w in (f.warning for f in record.faults) if w not in warnings]
        values.append(warnings)
    return table.set_column(index, column, pa.array(values, type=column.type))
