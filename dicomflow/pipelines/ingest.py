"""``ingest``: scan plus the chosen outputs. With pixels, work is batched by series.

Two stages in one run. First every input's header is read, in partitions, to
learn its series (a few hundred microseconds a file). Then each series becomes
a small graph: several tasks read its headers again, flatten them and (in a
local lake) decode its images into a scratch folder, one plans the stacks and
moves the decoded frames into their chunks, and one commits the ``instances``,
``series`` and ``errors`` parts of that series. In a bucket lake, or with
several frames per chunk, the plan is followed by decode-and-write shares
instead (:mod:`dicomflow.pixels.series_writer`, :mod:`dicomflow.pixels.early`).
Inputs with no series (errors, files without a SeriesInstanceUID) are committed
by ordinary scan partitions.
"""

from __future__ import annotations

import dataclasses
import math
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

from dask.delayed import Delayed
from distributed import Client, as_completed

from dicomflow._version import __version__
from dicomflow.connectors.files import FilesConnector
from dicomflow.dicom.elements import Elements
from dicomflow.dicom.geometry import SliceInfo
from dicomflow.lake.layout import LakeLayout
from dicomflow.lake.ledger import Committed, Ledger, config_digest
from dicomflow.operators.base import Operator
from dicomflow.operators.flatten import Flatten
from dicomflow.pipelines.anonymize import AnonymizeSettings, keyed_refs, run_deidentify
from dicomflow.pipelines.pipeline import (
    PartitionResult,
    RunSummary,
    commit_batch,
    execute,
    new_run_id,
    pending,
    prepare_lake,
    run_partition,
    task,
    task_key,
    timed,
)
from dicomflow.pipelines.plan import Partition, PartitionPolicy, partition_named, plan_partitions
from dicomflow.pipelines.report import write_report
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


@dataclass(frozen=True)
class IngestOptions:
    """What ``ingest`` writes besides the instances table."""

    pixels: bool = True
    frames_per_chunk: int = 1
    expand_palette: bool = False
    after_flatten: tuple[Operator, ...] = ()  # e.g. ``store`` to send instances on


def series_of(elements: Elements) -> str | None:
    """The SeriesInstanceUID of a header, read straight from its element tree."""
    for element in elements:
        if element.tag == SERIES_INSTANCE_UID and isinstance(element.value, bytes):
            return element.value.decode("ascii", "replace").rstrip("\x00 ") or None
        if element.tag > SERIES_INSTANCE_UID:
            break
    return None


def index_partition(
    source: FilesConnector, partition: Partition
) -> list[tuple[SourceRef, str | None]]:
    """Stage one: which series each input belongs to (None when it has none or fails)."""
    return [
        (record.ref, series_of(record.header.elements) if record.header else None)
        for record in source.fetch(partition.refs)
    ]


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
    stay on the worker that read them; the flattened rows travel to the plan), and, when
    the series is decoded early, what became of each image. Indices (of ``decoded``, of
    ``infos``) are positions in ``records``; frame ``f`` of record ``i`` waits in
    ``{chunks[i]}.{f}``, inside the ``scratch`` folder."""

    started: float
    records: tuple[InstanceRecord, ...]
    decoded: dict[int, InstancePixels | ErrorInfo] = field(default_factory=dict)
    infos: tuple[SliceInfo, ...] = ()  # the images' stack-planning facts (decoded early)
    chunks: tuple[str, ...] = ()
    scratch: str | None = None


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
    return _decoded_rows(started, batch.records, chunks, scratch, options)


def _decoded_rows(
    started: float,
    records: Sequence[InstanceRecord],
    chunks: tuple[str, ...],
    scratch: str,
    options: PixelOptions,
) -> SeriesRows:
    infos = slice_infos(records)
    decoded = decode_to_scratch(records, infos, chunks, scratch, options)
    return SeriesRows(started, _without_headers(records), decoded, tuple(infos), chunks, scratch)


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
) -> PartitionResult:
    """Task: commit the stacks and the series' table parts."""
    result = commit_batch(commit_series(plan, shares, context, options), partition, sinks)
    remove_scratch(plan.scratch)
    return timed(result, plan.started, partition)


def place_and_commit(
    parts: Sequence[SeriesRows],
    partition: Partition,
    context: RunContext,
    options: PixelOptions,
    sinks: Sequence[LakeSink],
) -> PartitionResult:
    """Task: plan an early-decoded series, move its frames into place and commit it (one
    task, not two: the plan has no decoding left to hand out)."""
    plan = plan_rows(parts, context, options, early=True)
    return commit_series_partition(plan, [], partition, context, options, sinks)


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
            place_and_commit,
            rows,
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


def run_ingest(
    client: Client,
    sources: Sequence[str],
    *,
    out: str,
    options: IngestOptions | None = None,
    storage_options: dict[str, Any] | None = None,
    policy: PartitionPolicy | None = None,
    progress: bool | None = None,
    retries: int = 2,
    anonymize: AnonymizeSettings | None = None,
    name: str = "ingest",
) -> RunSummary:
    """Run the stages on ``client`` and return the summary (its report is written to
    ``<lake>/_runs/``).

    Inputs the lake's ledger already holds for this configuration are skipped (a
    rerun, or the resumption of a killed run); a series with new instances is
    assembled again from all of them. With ``anonymize``, every input is first
    de-identified (see :mod:`dicomflow.pipelines.anonymize`) and the later stages
    read only the de-identified files.
    """
    options = options or IngestOptions()
    storage = dict(storage_options or {})
    started = time.perf_counter()
    context = RunContext(new_run_id(), datetime.now(UTC))
    layout = LakeLayout(out, storage)
    config = config_digest(ingest_config(options, anonymize))
    sinks = (LakeSink(layout, config),)
    done = prepare_lake(sinks)
    source = FilesConnector(tuple(sources), storage)
    refs = list_inputs(source)
    stages = _Stages(client, layout, context, options, policy, progress, retries, sinks)
    if anonymize is not None:
        keyed = keyed_refs(refs, anonymize.deidentifier)
        if options.pixels:  # a series with new instances is de-identified again whole
            groups, loose = index_series(client, source, keyed, context, policy, retries)
            todo_groups, todo_loose, skipped = pending_series(groups, loose, done)
            todo = sorted((r for g in todo_groups for r in g), key=lambda r: r.url) + todo_loose
        else:
            todo, skipped = pending(keyed, done)
        summary = RunSummary(context.run_id, files=len(refs), skipped=skipped)
        stage_one, destination, written = run_deidentify(
            client,
            plan_partitions(todo, policy),
            reader=source,
            sinks=sinks,
            settings=anonymize,
            context=context,
            progress=progress,
            retries=retries,
        )
        summary.errors += stage_one.errors
        summary.error_codes.update(stage_one.error_codes)
        summary.slowest.extend(stage_one.slowest)
        lake_files = FilesConnector((), layout.storage_options)
        try:
            if options.pixels:
                groups, loose = group_by_series(written)
            else:
                groups, loose = [], [ref for ref, _ in written]
            stages.run(lake_files, groups, loose, summary)
        finally:
            if not anonymize.write_dicom:
                destination.remove()
        return finish(summary, layout, name, context, started)
    if not options.pixels:
        todo, skipped = pending(refs, done)
        summary = RunSummary(context.run_id, files=len(refs), skipped=skipped)
        stages.run(source, [], todo, summary)
        return finish(summary, layout, name, context, started)

    series_groups, loose = index_series(client, source, refs, context, policy, retries)
    todo_groups, todo_loose, skipped = pending_series(series_groups, loose, done)
    summary = RunSummary(context.run_id, files=len(refs), skipped=skipped)
    stages.run(source, todo_groups, todo_loose, summary)
    return finish(summary, layout, name, context, started)


def index_series(
    client: Client,
    source: FilesConnector,
    refs: Sequence[SourceRef],
    context: RunContext,
    policy: PartitionPolicy | None,
    retries: int,
) -> tuple[list[list[SourceRef]], list[SourceRef]]:
    """Stage one of a pixel ingest: the series of every input, as groups plus the rest."""
    partitions = plan_partitions(refs, policy)
    futures = client.compute(
        [
            task(index_partition, source, p, key=task_key("index", context, p.name))
            for p in partitions
        ],
        retries=retries,
    )
    # Results are fetched as tasks finish, so fetching overlaps the tasks still running.
    found = {
        future.key: result
        for future, result in as_completed(futures, with_results=True, raise_errors=False)
        if future.status == "finished"
    }
    index: list[tuple[SourceRef, str | None]] = []
    for partition, future in zip(partitions, futures, strict=True):
        if future.key in found:
            index.extend(found[future.key])
        else:  # unindexed inputs still go through a scan and get their rows
            index.extend((ref, None) for ref in partition.refs)
    return group_by_series(index)


def pending_series(
    groups: Sequence[Sequence[SourceRef]], loose: Sequence[SourceRef], done: Committed
) -> tuple[list[Sequence[SourceRef]], list[SourceRef], int]:
    """The series not fully committed (whole), the loose inputs not committed, and how
    many inputs are skipped: a series is done only when all of its instances are."""
    todo_groups = [g for g in groups if done.todo(g)]
    todo_loose, skipped = pending(loose, done)
    skipped += sum(len(g) for g in groups) - sum(len(g) for g in todo_groups)
    return todo_groups, todo_loose, skipped


def finish(
    summary: RunSummary, layout: LakeLayout, name: str, context: RunContext, started: float
) -> RunSummary:
    """Sweep what killed tasks left behind, stamp the run's duration, write its report."""
    Ledger(layout).remove_orphans()
    summary.seconds = time.perf_counter() - started
    summary.report = write_report(summary, layout, name=name, started_at=context.started_at)
    return summary


def ingest_config(options: IngestOptions, anonymize: AnonymizeSettings | None) -> dict[str, Any]:
    """What makes two ingest runs produce the same outputs (their ledger configuration)."""
    config: dict[str, Any] = {
        "job": "ingest",
        "version": __version__,
        "pixels": options.pixels,
        "frames_per_chunk": options.frames_per_chunk,
        "expand_palette": options.expand_palette,
        "after_flatten": [repr(op) for op in options.after_flatten],
    }
    if anonymize is not None:
        config["anonymize"] = anonymize.fingerprint()
    return config


def list_inputs(source: FilesConnector) -> list[SourceRef]:
    """Every input, sorted; inputs that failed to list are kept (they become error rows)."""
    listing = source.query()
    return sorted(listing.refs + [ref for ref, _ in listing.failures], key=lambda r: r.url)


@dataclass(frozen=True)
class _Stages:
    """The last stage of ingest: one graph per series, scan partitions for the rest."""

    client: Client
    layout: LakeLayout
    context: RunContext
    options: IngestOptions
    policy: PartitionPolicy | None
    progress: bool | None
    retries: int
    sinks: tuple[LakeSink, ...]

    def run(
        self,
        source: FilesConnector,
        series_groups: Sequence[Sequence[SourceRef]],
        loose: Sequence[SourceRef],
        summary: RunSummary,
    ) -> None:
        context = self.context
        pixel_options = PixelOptions(
            self.layout,
            self.layout.storage_options,
            frames_per_chunk=self.options.frames_per_chunk,
            expand_palette=self.options.expand_palette,
        )
        sinks = self.sinks
        operators = (Flatten(), *self.options.after_flatten)
        jobs = []
        workers = len(self.client.scheduler_info().get("workers", {})) if series_groups else 1
        for number, refs in enumerate(series_groups):
            part = partition_named(number, refs)
            graph = series_graph(source, part, context, pixel_options, sinks, operators, workers)
            jobs.append((part, graph))
        for part in plan_partitions(loose, self.policy):
            key = task_key("scan", context, part.name)
            jobs.append(
                (part, task(run_partition, source, part, operators, sinks, context, key=key))
            )
        execute(
            self.client,
            jobs,
            summary,
            sinks=sinks,
            context=context,
            progress=self.progress,
            retries=self.retries,
        )
