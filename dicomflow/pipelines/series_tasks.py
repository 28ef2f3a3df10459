"""The tasks that turn one series into its stacks and table parts (see :mod:`.ingest`).

A series is read by several tasks at once (:func:`read_rows`: headers, the metadata
operators and, in a local lake, early decoding into a scratch folder), then planned
and committed (:func:`place_and_commit_many`), or in a bucket lake (or with several
frames per chunk) planned, decoded and written by shares, and committed
(:mod:`dicomflow.pixels.series_writer`). :func:`series_graph` builds that graph.
"""

from __future__ import annotations

import dataclasses
import math
import time
from collections.abc import Callable, Hashable, Sequence
from dataclasses import dataclass, field
from typing import Any

import pyarrow as pa
from dask.delayed import Delayed
from dask.sizeof import sizeof

from dicomflow.connectors.files import FilesConnector
from dicomflow.dicom.elements import Elements
from dicomflow.dicom.geometry import SliceInfo
from dicomflow.operators.base import Operator
from dicomflow.operators.flatten import Flatten
from dicomflow.pipelines.instance_rows import (
    has_row,
    located,
    packed,
    rows_table,
    slimmed,
    unpacked,
)
from dicomflow.pipelines.pipeline import PartitionResult, commit_batch, task, task_key, timed
from dicomflow.pipelines.plan import Partition, partition_named
from dicomflow.pipelines.result_sizes import items_bytes, mapping_bytes, records_bytes
from dicomflow.pipelines.sinks import LakeSink
from dicomflow.pixels.early import applies as early_applies
from dicomflow.pixels.early import (
    decode_to_scratch,
    plan_decoded,
    remove_scratch,
    scratch_folder,
)
from dicomflow.pixels.series_writer import (
    InstancePixels,
    PixelOptions,
    SeriesPlan,
    commit_series,
    pixel_work,
    plan_series,
    write_items,
)
from dicomflow.pixels.slices import slice_infos
from dicomflow.records import Batch, ErrorInfo, InstanceRecord, RunContext, SourceRef

SERIES_INSTANCE_UID = 0x0020000E
SERIES_TABLE = "series"


def series_of(elements: Elements) -> str | None:
    """The SeriesInstanceUID of a header, read straight from its element tree."""
    for element in elements:
        if element.tag == SERIES_INSTANCE_UID and isinstance(element.value, bytes):
            return element.value.decode("ascii", "replace").rstrip("\x00 ") or None
        if element.tag > SERIES_INSTANCE_UID:
            break
    return None


def group_by_series(
    index: Sequence[tuple[SourceRef, str | None]],
) -> tuple[list[list[SourceRef]], list[SourceRef]]:
    """Series groups (sorted, deterministic) and the inputs that belong to none."""
    groups: dict[str, list[SourceRef]] = {}
    loose: list[SourceRef] = []
    for ref, series in index:
        if series is None:
            loose.append(ref)
        else:
            groups.setdefault(series, []).append(ref)
    ordered = [sorted(refs, key=lambda r: r.url) for _, refs in sorted(groups.items())]
    return ordered, sorted(loose, key=lambda r: r.url)


INSTANCES_PER_SHARE = 32
MAX_SHARES = 16


ROWS_PER_TASK = 64


@dataclass(frozen=True)
class SeriesRows:
    """Some of a series' instances after the metadata operators, headers dropped (they
    stay on the worker that read them; the flattened rows travel to the plan, or, when
    the series is decoded early, the ``table`` of those rows, the records keeping only
    what the commit reads: :func:`.instance_rows.slimmed`), and what became of each
    image. Indices (of ``decoded``, of ``infos``) are positions in ``records``; frame
    ``f`` of record ``i`` waits in ``{chunks[i]}.{f}``, inside the ``scratch`` folder."""

    started: float
    records: tuple[InstanceRecord, ...]
    decoded: dict[int, InstancePixels | ErrorInfo] = field(default_factory=dict)
    infos: tuple[SliceInfo, ...] = ()  # the images' stack-planning facts (decoded early)
    chunks: tuple[str, ...] = ()
    scratch: str | None = None
    table: pa.Table | None = None  # the instances table of records (see .instance_rows)

    def __reduce__(self) -> tuple[Any, tuple[dict[str, Any]]]:
        """Pickled with the table packed in one piece (:func:`.instance_rows.packed`)."""
        state = {f.name: getattr(self, f.name) for f in dataclasses.fields(self)}
        if self.table is not None:
            state["table"] = packed(self.table)
        return _series_rows, (state,)


def _series_rows(state: dict[str, Any]) -> SeriesRows:
    if state["table"] is not None:
        state["table"] = unpacked(state["table"])
    return SeriesRows(**state)


def series_rows_bytes(rows: SeriesRows) -> int:
    """What a reading task's result holds (see :mod:`.result_sizes`): mostly its table
    or, without one, its records' rows."""
    total = records_bytes(rows.records) + mapping_bytes(rows.decoded)
    total += items_bytes(rows.infos) + items_bytes(rows.chunks)
    # get_total_buffer_size: 9 µs for a 137-column table, against 230 µs for nbytes
    return total + (rows.table.get_total_buffer_size() if rows.table is not None else 0)


def series_plan_bytes(plan: SeriesPlan) -> int:
    """A series' plan: its records (every row) and the small work list."""
    return records_bytes(plan.records) + items_bytes(plan.items) + mapping_bytes(plan.outcomes)


sizeof.register(SeriesRows, series_rows_bytes)
sizeof.register(SeriesPlan, series_plan_bytes)


def read_rows(
    source: FilesConnector,
    refs: Sequence[SourceRef],
    context: RunContext,
    operators: Sequence[Operator] = (Flatten(),),
    start: int = 0,
    scratch: str | None = None,
    options: PixelOptions | None = None,
) -> SeriesRows:
    """Task: read part of a series' headers (its inputs ``start`` onwards) and run the
    metadata operators (flatten first) on them; with a ``scratch`` folder, also decode
    the images into it (:mod:`dicomflow.pixels.early`). A series is read by several of
    these at once, so its plan does not wait for one worker to read every header."""
    started = time.time()
    batch = Batch(tuple(source.fetch(refs)), context)
    for operator in operators:
        batch = operator(batch)
    if scratch is None or options is None:
        return SeriesRows(started, _without_headers(batch.records))
    chunks = tuple(f"{scratch}/{start + k}" for k in range(len(batch.records)))
    return decoded_rows(started, batch.records, chunks, scratch, options)


def decoded_rows(
    started: float,
    records: Sequence[InstanceRecord],
    chunks: tuple[str, ...],
    scratch: str,
    options: PixelOptions,
) -> SeriesRows:
    """Records of one series after the metadata operators, their images decoded early:
    frame ``f`` of record ``i`` written to ``{chunks[i]}.{f}`` in ``scratch``."""
    infos = slice_infos(records)
    decoded = decode_to_scratch(records, infos, chunks, scratch, options)
    table = rows_table(records)
    return SeriesRows(started, slimmed(records), decoded, tuple(infos), chunks, scratch, table)


def _without_headers(records: Sequence[InstanceRecord]) -> tuple[InstanceRecord, ...]:
    return tuple(dataclasses.replace(r, header=None) for r in records)


def plan_rows(
    parts: Sequence[SeriesRows],
    context: RunContext,
    options: PixelOptions,
    early: bool = False,
) -> SeriesPlan:
    """Task: plan and start the series' stacks from its rows, parts in input order
    (``early``: plan them and move the early-decoded frames into place)."""
    batch = Batch(tuple(r for part in parts for r in part.records), context)
    if early:
        decoded: dict[int, InstancePixels | ErrorInfo] = {}
        infos: list[SliceInfo] = []
        chunks: list[str] = []
        for part in parts:  # positions in a part become indices in the series
            offset = len(chunks)
            decoded.update((offset + k, v) for k, v in part.decoded.items())
            infos.extend(dataclasses.replace(i, index=offset + i.index) for i in part.infos)
            chunks.extend(part.chunks or [""] * len(part.records))
        folders = sorted({part.scratch for part in parts if part.scratch})
        plan = plan_decoded(batch, decoded, chunks, folders, options, infos)
    else:
        plan = plan_series(batch, options)
    plan.started = min((part.started for part in parts), default=time.time())
    return plan


def commit_series_partition(
    plan: SeriesPlan,
    shares: list[dict[int, Any]],
    partition: Partition,
    context: RunContext,
    options: PixelOptions,
    sinks: Sequence[LakeSink],
    parts: Sequence[SeriesRows] = (),
) -> PartitionResult:
    """Task: commit the stacks and the series' table parts (with the instances table
    the reading ``parts`` built ahead, when each did)."""
    batch = with_instances(commit_series(plan, shares, context, options), parts)
    result = commit_batch(batch, partition, sinks)
    remove_scratch(plan.scratch)
    return timed(result, plan.started, partition)


def with_instances(batch: Batch, parts: Sequence[SeriesRows]) -> Batch:
    """``batch`` with its ``instances`` table assembled from the pieces its reading
    ``parts`` built, when each built one."""
    if not parts or any(part.table is None for part in parts):
        return batch
    had_row = [has_row(r) for part in parts for r in part.records]
    pieces = [part.table for part in parts if part.table is not None]
    return dataclasses.replace(batch, instances=located(pieces, had_row, batch.records))


def place_and_commit_many(
    series: Sequence[Sequence[SeriesRows]],
    partition: Partition,
    context: RunContext,
    options: PixelOptions,
    sinks: Sequence[LakeSink],
) -> PartitionResult:
    """Task: place early-decoded series (each given as its reading parts) and commit them
    together: their stacks one by one, their table parts and ledger entry once (one task
    for a series, not two: the plan has no decoding left to hand out). Committed alone,
    a one-instance series cost 18 ms, most of it three Parquet parts (a one-row
    ``instances`` part took 4.4 ms and 48 KB) and the entry."""
    batches, plans = [], []
    for parts in series:
        plan = plan_rows(parts, context, options, early=True)
        batches.append(commit_series(plan, [], context, options))
        plans.append(plan)
    batch = with_instances(merged(batches, context), [part for parts in series for part in parts])
    result = commit_batch(batch, partition, sinks)
    for plan in plans:
        remove_scratch(plan.scratch)
    return timed(result, min((p.started for p in plans), default=time.time()), partition)


def merged(batches: Sequence[Batch], context: RunContext) -> Batch:
    """Several series' committed batches as one: their records and ``series`` rows."""
    if len(batches) == 1:
        return batches[0]
    records = tuple(r for batch in batches for r in batch.records)
    rows = tuple(row for batch in batches for row in batch.tables.get(SERIES_TABLE, ()))
    return Batch(records, context, {SERIES_TABLE: rows})


SMALL_SERIES = 32  # a series of fewer instances is committed together with others
COMMIT_INSTANCES = 128  # at most this many instances of small series in one commit


def commit_groups(
    groups: Sequence[Sequence[SourceRef]], holder: Callable[[Sequence[SourceRef]], Hashable]
) -> list[list[Sequence[SourceRef]]]:
    """Series (each its inputs) in the order given, as the groups committed together: a
    series of :data:`SMALL_SERIES` instances or more alone, smaller ones with others of
    the same ``holder`` (say the reading tasks that hold them, so that no commit waits
    for rows from elsewhere), up to :data:`COMMIT_INSTANCES` instances a group."""
    commits: list[list[Sequence[SourceRef]]] = []
    filling: dict[Hashable, list[Sequence[SourceRef]]] = {}
    for refs in groups:
        if len(refs) >= SMALL_SERIES:
            commits.append([refs])
            continue
        key = holder(refs)
        group = filling.get(key)
        if group is None or sum(map(len, group)) + len(refs) > COMMIT_INSTANCES:
            group = filling[key] = []
            commits.append(group)
        group.append(refs)
    return commits


def share_count(instances: int, workers: int = 1) -> int:
    """How many decode-and-write shares a series of ``instances`` gets: one per
    :data:`INSTANCES_PER_SHARE` up to :data:`MAX_SHARES`, rounded up to a multiple of
    the workers when that adds at most a quarter more, so that no worker idles while
    another decodes the last share (13 shares of 400 JPEG 2000 slices on 2 workers
    left one idle for half a second)."""
    count = max(1, min(MAX_SHARES, math.ceil(instances / INSTANCES_PER_SHARE)))
    balanced = math.ceil(count / max(1, workers)) * max(1, workers)
    if balanced <= count * 1.25:
        count = balanced
    return max(1, min(count, instances))


def series_graph(
    source: FilesConnector,
    partition: Partition,
    context: RunContext,
    options: PixelOptions,
    sinks: Sequence[LakeSink],
    operators: Sequence[Operator] = (Flatten(),),
    workers: int = 1,
) -> Delayed:
    """One series as header-reading shares → plan → decode-and-write shares → commit;
    where the series is decoded early, the header-reading shares decode too and one task
    places their frames and commits."""
    name = partition.name
    refs = list(partition.refs)
    scratch = scratch_folder(options, name, context.run_id) if early_applies(options) else None
    size = ROWS_PER_TASK
    if scratch is not None:  # the decoding shares are the reading shares
        size = math.ceil(len(refs) / share_count(len(refs), workers)) or 1
    rows = [
        task(
            read_rows,
            source,
            refs[start : start + size],
            context,
            tuple(operators),
            start,
            scratch,
            options,
            key=task_key("rows", context, f"{name}-{start // size}"),
        )
        for start in range(0, len(refs), size)
    ]
    if scratch is not None:  # one task places the frames and commits
        return task(
            place_and_commit_many,
            [rows],
            partition,
            context,
            options,
            sinks,
            key=task_key("series", context, name),
        )
    plan = task(plan_rows, rows, context, options, key=task_key("plan", context, name))
    count = share_count(len(partition.refs), workers)
    # Shares depend on the small work list, not on the plan (which holds every header
    # row), so the scheduler is free to spread them over all workers.
    work = task(pixel_work, plan, key=task_key("work", context, name))
    shares = [
        task(write_items, work, k, count, options, key=task_key("pixels", context, f"{name}-{k}"))
        for k in range(count)
    ]
    return task(
        commit_series_partition,
        plan,
        shares,
        partition,
        context,
        options,
        sinks,
        key=task_key("series", context, name),
    )


def small_series_graph(
    source: FilesConnector,
    groups: Sequence[Sequence[SourceRef]],
    partition: Partition,
    context: RunContext,
    options: PixelOptions,
    sinks: Sequence[LakeSink],
    operators: Sequence[Operator] = (Flatten(),),
) -> Delayed:
    """Several small series decoded early (:func:`commit_groups`): each read by one task
    into its own scratch folder, all placed and committed by one task."""
    reads = []
    for refs in groups:
        name = partition_named(0, refs).name  # the series' own, as series_graph names it
        scratch = scratch_folder(options, name, context.run_id)
        key = task_key("rows", context, f"{name}-0")
        reads.append(
            task(
                read_rows,
                source,
                list(refs),
                context,
                tuple(operators),
                0,
                scratch,
                options,
                key=key,
            )
        )
    return task(
        place_and_commit_many,
        [[read] for read in reads],
        partition,
        context,
        options,
        sinks,
        key=task_key("series", context, partition.name),
    )
