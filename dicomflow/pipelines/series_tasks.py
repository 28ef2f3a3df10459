"""The tasks that turn one series into its stacks and table parts (see :mod:`.ingest`).

A series has one graph shape (:func:`series_graph`): several tasks read its headers,
run the metadata operators and decode and encode its images (:func:`read_rows`), and
one task writes its stacks, shard by shard, and commits them with the series' table
parts (:func:`write_and_commit`). Small series share that last task
(:func:`commit_groups`, :func:`small_series_graph`); a run that reads each file once
(:mod:`.read_once`) feeds it the same reading results.
"""

from __future__ import annotations

import dataclasses
import math
import pickle
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
from dicomflow.operators.series import run_series_operators
from dicomflow.operators.write_pixels import sharing_decode
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
from dicomflow.pixels.series_writer import (
    ENCODED_OUTPUT,
    EncodedImage,
    PixelOptions,
    commit_series,
    encode_images,
    write_series,
)
from dicomflow.pixels.slices import slice_infos
from dicomflow.records import Batch, ErrorInfo, InstanceRecord, RunContext, SourceRef

SERIES_INSTANCE_UID = 0x0020000E


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


@dataclass(frozen=True)
class SeriesRows:
    """Some of a series' instances after the metadata operators, headers dropped (they
    stay on the worker that read them), with the ``table`` of their ``instances`` rows
    built ahead (the records keep only what the commit reads:
    :func:`.instance_rows.slimmed`), the images' stack-planning facts (``infos``) and
    each image encoded as its chunks, or its error. Indices (of ``encoded``, of
    ``infos``) are positions in ``records``."""

    started: float
    records: tuple[InstanceRecord, ...]
    encoded: dict[int, EncodedImage | ErrorInfo] = field(default_factory=dict)
    infos: tuple[SliceInfo, ...] = ()
    table: pa.Table | None = None  # the instances table of records (see .instance_rows)

    def __reduce_ex__(self, protocol: Any) -> tuple[Any, tuple[dict[str, Any]]]:
        """Pickled with the table packed in one piece (:func:`.instance_rows.packed`) and
        the encoded frames in another (:func:`packed_chunks`; out of band from protocol 5,
        Dask's)."""
        state = {f.name: getattr(self, f.name) for f in dataclasses.fields(self)}
        if self.table is not None:
            state["table"] = packed(self.table)
        state["encoded"], data = packed_chunks(self.encoded)
        state["chunk_data"] = data if protocol >= 5 else data.raw().tobytes()
        return _series_rows, (state,)


def _series_rows(state: dict[str, Any]) -> SeriesRows:
    if state["table"] is not None:
        state["table"] = unpacked(state["table"])
    state["encoded"] = unpacked_chunks(state["encoded"], state.pop("chunk_data"))
    return SeriesRows(**state)


def packed_chunks(
    encoded: dict[int, EncodedImage | ErrorInfo],
) -> tuple[dict[int, EncodedImage | ErrorInfo], pickle.PickleBuffer]:
    """The images with their chunks' bytes gathered in one buffer, which pickle protocol
    5 (Dask's) moves out of band, and each chunk as its length (None stays None).

    Pickled as they are, a reading task's 200 chunks of 100 KB are copied into the
    pickle stream and out again: moving 400 slices' worth from one worker to the series'
    writer took 0.23 s of an 800-slice job's 1.5 s."""
    parts: list[bytes | memoryview] = []
    images: dict[int, EncodedImage | ErrorInfo] = {}
    for index, image in encoded.items():
        if isinstance(image, EncodedImage):
            lengths = tuple(None if c is None else len(c) for c in image.chunks)
            parts.extend(c for c in image.chunks if c is not None)
            image = dataclasses.replace(image, chunks=lengths)  # type: ignore[arg-type]
        images[index] = image
    return images, pickle.PickleBuffer(b"".join(parts))


def unpacked_chunks(
    images: dict[int, EncodedImage | ErrorInfo], data: Any
) -> dict[int, EncodedImage | ErrorInfo]:
    """The images :func:`packed_chunks` packed, their chunks views of ``data``."""
    view, offset = memoryview(data).cast("B"), 0
    encoded: dict[int, EncodedImage | ErrorInfo] = {}
    for index, image in images.items():
        if isinstance(image, EncodedImage):
            chunks: list[memoryview | None] = []
            for length in image.chunks:
                if length is None:
                    chunks.append(None)
                    continue
                chunks.append(view[offset : offset + length])  # type: ignore[operator]
                offset += length  # type: ignore[operator]
            image = dataclasses.replace(image, chunks=tuple(chunks))
        encoded[index] = image
    return encoded


def series_rows_bytes(rows: SeriesRows) -> int:
    """What a reading task's result holds (see :mod:`.result_sizes`): its encoded frames,
    and its table or, without one, its records' rows."""
    total = records_bytes(rows.records) + mapping_bytes(rows.encoded) + items_bytes(rows.infos)
    total += sum(e.nbytes for e in rows.encoded.values() if isinstance(e, EncodedImage))
    # get_total_buffer_size: 9 µs for a 137-column table, against 230 µs for nbytes
    return total + (rows.table.get_total_buffer_size() if rows.table is not None else 0)


sizeof.register(SeriesRows, series_rows_bytes)


def read_rows(
    source: FilesConnector,
    refs: Sequence[SourceRef],
    context: RunContext,
    operators: Sequence[Operator],
    options: PixelOptions,
) -> SeriesRows:
    """Task: read part of a series' headers, run the metadata operators (flatten first) on
    them and decode and encode their images. A series is read by several of these at
    once, so its stacks do not wait for one worker to decode every image."""
    started = time.time()
    return encoded_rows(started, Batch(tuple(source.fetch(refs)), context), operators, options)


def encoded_rows(
    started: float, batch: Batch, operators: Sequence[Operator], options: PixelOptions
) -> SeriesRows:
    """Part of one series after its instance operators, its images encoded (from the
    operators' own decode when some of them decoded them: :func:`sharing_decode`)."""
    for operator in sharing_decode(operators, options):
        batch = operator(batch)
    records = batch.records
    infos = slice_infos(records)
    encoded = encode_images(records, infos, options)
    records = tuple(_without_encoded(r) for r in records)  # held once, in ``encoded``
    return SeriesRows(started, slimmed(records), encoded, tuple(infos), rows_table(records))


def _without_encoded(record: InstanceRecord) -> InstanceRecord:
    if ENCODED_OUTPUT not in record.outputs:
        return record
    outputs = {k: v for k, v in record.outputs.items() if k != ENCODED_OUTPUT}
    return dataclasses.replace(record, outputs=outputs)


def with_instances(batch: Batch, parts: Sequence[SeriesRows]) -> Batch:
    """``batch`` with its ``instances`` table assembled from the pieces its reading
    ``parts`` built, when each built one."""
    if not parts or any(part.table is None for part in parts):
        return batch
    had_row = [has_row(r) for part in parts for r in part.records]
    pieces = [part.table for part in parts if part.table is not None]
    return dataclasses.replace(batch, instances=located(pieces, had_row, batch.records))


def write_one(
    parts: Sequence[SeriesRows], context: RunContext, options: PixelOptions
) -> tuple[Batch, float]:
    """Write one series' stacks from its reading ``parts`` (in input order) and commit
    them; return the batch of its records and ``series`` rows, and when it started."""
    records: list[InstanceRecord] = []
    encoded: dict[int, EncodedImage | ErrorInfo] = {}
    infos: list[SliceInfo] = []
    for part in parts:  # positions in a part become indices in the series
        offset = len(records)
        records.extend(part.records)
        encoded.update((offset + k, v) for k, v in part.encoded.items())
        infos.extend(dataclasses.replace(i, index=offset + i.index) for i in part.infos)
    plan = write_series(records, encoded, options, context.run_id, infos)
    started = min((part.started for part in parts), default=time.time())
    return commit_series(plan, context, options), started


def write_and_commit(
    series: Sequence[Sequence[SeriesRows]],
    partition: Partition,
    context: RunContext,
    options: PixelOptions,
    sinks: Sequence[LakeSink],
    series_operators: Sequence[Operator] = (),
) -> PartitionResult:
    """Task: write the stacks of the ``series`` (each given as its reading parts), run
    the series operators on each (:mod:`dicomflow.operators.series`) and commit them
    together: their stacks one by one, their table parts and ledger entry once.
    Committed alone, a one-instance series cost 18 ms, most of it three Parquet parts (a
    one-row ``instances`` part took 4.4 ms and 48 KB) and the entry."""
    batches, started = [], []
    for parts in series:
        batch, began = write_one(parts, context, options)
        if series_operators:
            batch = run_series_operators(with_instances(batch, parts), series_operators)
        batches.append(with_instances(batch, parts))  # faults since: in its warnings
        started.append(began)
    result = commit_batch(merged(batches, context), partition, sinks)
    return timed(result, min(started, default=time.time()), partition)


def merged(batches: Sequence[Batch], context: RunContext) -> Batch:
    """Several series' committed batches as one: their records, their ``instances``
    tables (when each has one) and the rows of every other table."""
    if len(batches) == 1:
        return batches[0]
    records = tuple(r for batch in batches for r in batch.records)
    names = dict.fromkeys(name for batch in batches for name in batch.tables)
    tables = {name: tuple(row for b in batches for row in b.tables.get(name, ())) for name in names}
    pieces = [batch.instances for batch in batches]
    instances = None
    if all(piece is not None for piece in pieces):
        instances = pa.concat_tables(pieces).combine_chunks()
    return Batch(records, context, tables, instances)


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
    """How many reading tasks a series of ``instances`` gets: one per
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
    series_operators: Sequence[Operator] = (),
) -> Delayed:
    """One series as reading tasks (headers, operators, decoding) → one task that writes
    its stacks and commits."""
    name = partition.name
    refs = list(partition.refs)
    size = math.ceil(len(refs) / share_count(len(refs), workers)) or 1
    rows = [
        task(
            read_rows,
            source,
            refs[start : start + size],
            context,
            tuple(operators),
            options,
            key=task_key("rows", context, f"{name}-{start // size}"),
        )
        for start in range(0, len(refs), size)
    ]
    return task(
        write_and_commit,
        [rows],
        partition,
        context,
        options,
        sinks,
        tuple(series_operators),
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
    series_operators: Sequence[Operator] = (),
) -> Delayed:
    """Several small series (:func:`commit_groups`): each read by one task, all written
    and committed by one task."""
    reads = []
    for refs in groups:
        name = partition_named(0, refs).name  # the series' own, as series_graph names it
        key = task_key("rows", context, f"{name}-0")
        reads.append(
            task(read_rows, source, list(refs), context, tuple(operators), options, key=key)
        )
    return task(
        write_and_commit,
        [[read] for read in reads],
        partition,
        context,
        options,
        sinks,
        tuple(series_operators),
        key=task_key("series", context, partition.name),
    )
