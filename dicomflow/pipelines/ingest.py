"""``ingest``: scan plus the chosen outputs. With pixels, work is batched by series.

Two stages in one run. First every input's header is read, in partitions, to
learn its series (a few hundred microseconds a file). Then each series becomes
a small graph (:mod:`.series_tasks`): several tasks read its headers again, run
the metadata operators and decode and encode its images, and one task writes its
stacks, a shard at a time, and commits the ``instances``, ``series`` and
``errors`` parts of that series (:mod:`dicomflow.pixels.series_writer`); small
series share that task. Inputs with no series (errors, files without a
SeriesInstanceUID) are committed by ordinary scan partitions.

When the lake holds nothing of this configuration yet, the first stage does the
reading tasks' work itself and the files are read once (:mod:`.read_once`); the
series' graph and the outputs are the same.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from dataclasses import dataclass, replace
from datetime import UTC, datetime
from typing import Any, cast

import pyarrow as pa
from distributed import Client, as_completed

from dicomflow._version import __version__
from dicomflow.anonymize.proof import ProofKey
from dicomflow.connectors.files import FilesConnector, Listing
from dicomflow.lake.layout import LakeLayout
from dicomflow.lake.ledger import Committed, Ledger, config_digest
from dicomflow.operators.base import Operator, TableOutput
from dicomflow.operators.flatten import Flatten
from dicomflow.operators.write_pixels import SERIES_TASK_FAILED, WithoutSeries, WritePixels
from dicomflow.pipelines.anonymize import AnonymizeSettings, keyed_refs, run_deidentify
from dicomflow.pipelines.cluster import planned_workers
from dicomflow.pipelines.deid_proof import FINGERPRINTS_TABLE, Prover, RunLogs, collect_fingerprints
from dicomflow.pipelines.pipeline import (
    RunSummary,
    execute,
    new_run_id,
    pending,
    prepare_lake,
    run_partition,
    task,
    task_key,
)
from dicomflow.pipelines.plan import Partition, PartitionPolicy, partition_named, plan_partitions
from dicomflow.pipelines.read_once import MAX_BYTES as READ_ONCE_MAX_BYTES
from dicomflow.pipelines.read_once import MAX_INPUTS as READ_ONCE_MAX_INPUTS
from dicomflow.pipelines.read_once import Reading, submit_reading, write_held_series
from dicomflow.pipelines.report import report_files, write_report
from dicomflow.pipelines.series_tasks import (
    commit_groups,
    group_by_series,
    series_graph,
    series_of,
    small_series_graph,
)
from dicomflow.pipelines.sinks import LakeSink
from dicomflow.pixels.series_writer import PixelOptions
from dicomflow.records import RunContext, SourceRef


@dataclass(frozen=True)
class IngestOptions:
    """What ``ingest`` runs and writes: the instance operators in order (flatten among
    them), the pixel series operator's settings, and the extra tables the operators
    declare (the compiler, :mod:`.compiler`, resolves these from a spec)."""

    pixels: bool = True
    frames_per_chunk: int = 1
    expand_palette: bool = False
    pyramid: bool = False
    operators: tuple[Operator, ...] = (Flatten(),)
    series_operators: tuple[Operator, ...] = ()  # run on each series once its stacks are written
    tables: tuple[TableOutput, ...] = ()  # declared by operators besides the built-ins
    columns: tuple[pa.Field, ...] = ()  # added to ``instances`` by operators
    read_once: bool = True  # in a fresh local lake, read each file once (same outputs)
    fingerprints: tuple[tuple[str, str], ...] = ()  # (operator, digest of its config)


def index_partition(
    source: FilesConnector, partition: Partition
) -> list[tuple[SourceRef, str | None]]:
    """Stage one: which series each input belongs to (None when it has none or fails)."""
    return [
        (record.ref, series_of(record.header.elements) if record.header else None)
        for record in source.fetch(partition.refs)
    ]


def run_ingest(
    client: Client,
    sources: Sequence[str] | FilesConnector,
    *,
    out: str,
    options: IngestOptions | None = None,
    storage_options: dict[str, Any] | None = None,
    policy: PartitionPolicy | None = None,
    progress: bool | None = None,
    retries: int = 2,
    anonymize: AnonymizeSettings | None = None,
    name: str = "ingest",
    source_storage_options: dict[str, Any] | None = None,
    context: RunContext | None = None,
    not_retrieved: int = 0,
    listing: Listing | None = None,
) -> RunSummary:
    """Run the stages on ``client`` and return the summary (its report is written to
    ``<lake>/_runs/``).

    Inputs the lake's ledger already holds for this configuration are skipped (a
    rerun, or the resumption of a killed run); a series with new instances is
    assembled again from all of them. With ``anonymize``, every input is first
    de-identified (see :mod:`dicomflow.pipelines.anonymize`) and the later stages
    read only the de-identified files. ``storage_options`` reach the lake and
    ``source_storage_options`` the sources (the same when not given). The
    ``not_retrieved`` error rows a retrieval already committed under ``context``
    are counted in the summary and its report. ``sources`` may also be a listing
    source already built (``query()`` on the client, ``fetch()`` on workers), and
    ``listing`` what its ``query()`` returned.
    """
    options = options or IngestOptions()
    storage = dict(storage_options or {})
    started = time.perf_counter()
    context = context or RunContext(new_run_id(), datetime.now(UTC))
    layout = LakeLayout(out, storage)
    config = ingest_config(options, anonymize)
    tables = options.tables
    if options.pixels and not any(t.name == "series" for t in tables):
        tables = (*tables, *WritePixels.outputs.tables)
    sinks = (LakeSink(layout, config_digest(config), tables, fingerprint(config), options.columns),)
    done = prepare_lake(sinks)
    if not isinstance(sources, (str, list, tuple)):
        # A listing source (query on the client, fetch on workers). Only the files
        # connector reads whole files, which de-identification and pixels need; the
        # compiler refuses those with any other (a header-only DICOMweb scan).
        source = cast(FilesConnector, sources)
    else:
        source_storage = storage if source_storage_options is None else source_storage_options
        source = FilesConnector(tuple(sources), dict(source_storage))
    refs = list_inputs(source, listing)
    stages = _Stages(client, layout, context, options, policy, progress, retries, sinks)
    if anonymize is not None:
        key = ProofKey.new()  # the proof's, for this run alone
        anonymize = replace(anonymize, deidentifier=replace(anonymize.deidentifier, proof_key=key))
        keyed = keyed_refs(refs, anonymize.deidentifier)
        with RunLogs(client, context.run_id) as logs:
            if options.pixels:  # a series with new instances is de-identified again whole
                groups, loose = index_series(client, source, keyed, context, policy, retries)
                todo_groups, todo_loose, skipped = pending_series(groups, loose, done)
                todo = sorted((r for g in todo_groups for r in g), key=lambda r: r.url)
                todo += todo_loose
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
            prints, unchecked = collect_fingerprints(stage_one.tables.pop(FINGERPRINTS_TABLE, []))
            prover = Prover(key, prints, unchecked, layout, context.run_id)
            try:
                if options.pixels:
                    groups, loose = group_by_series(written)
                else:
                    groups, loose = [], [ref for ref, _ in written]
                stages.run(lake_files, groups, loose, summary)
                summary.proof = prover.run([ref.url for ref, _ in written], logs.lines())
            finally:
                if not anonymize.write_dicom:
                    destination.remove()
        summary = finish(with_not_retrieved(summary, not_retrieved), layout, name, context, started)
        if summary.report is not None:
            summary.proof = prover.scan_report(report_files(summary.report))
        return summary
    if not options.pixels:
        todo, skipped = pending(refs, done)
        summary = RunSummary(context.run_id, files=len(refs), skipped=skipped)
        stages.run(source, [], todo, summary)
        return finish(with_not_retrieved(summary, not_retrieved), layout, name, context, started)

    if reads_once(options, done, refs):
        reading = submit_reading(
            client,
            source,
            refs,
            context,
            stages.operators,
            stages.pixel_options(source),
            workers=stages.workers(),
            policy=policy,
            retries=retries,
            progress=progress,
        )
        summary = RunSummary(context.run_id, files=len(refs))
        groups, loose = group_by_series(reading.index)
        stages.run(source, groups, loose, summary, reading)
        return finish(with_not_retrieved(summary, not_retrieved), layout, name, context, started)
    series_groups, loose = index_series(client, source, refs, context, policy, retries)
    todo_groups, todo_loose, skipped = pending_series(series_groups, loose, done)
    summary = RunSummary(context.run_id, files=len(refs), skipped=skipped)
    stages.run(source, todo_groups, todo_loose, summary)
    return finish(with_not_retrieved(summary, not_retrieved), layout, name, context, started)


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


def reads_once(options: IngestOptions, done: Committed, refs: Sequence[SourceRef]) -> bool:
    """Whether the run reads each file once (:mod:`.read_once`): nothing of this
    configuration in the lake yet, and few and small enough inputs to hold."""
    return (
        options.read_once
        and options.pixels
        and not done.by_identity
        and not done.by_name
        and len(refs) <= READ_ONCE_MAX_INPUTS
        and sum(ref.size or 0 for ref in refs) <= READ_ONCE_MAX_BYTES
    )


def pending_series(
    groups: Sequence[Sequence[SourceRef]], loose: Sequence[SourceRef], done: Committed
) -> tuple[list[Sequence[SourceRef]], list[SourceRef], int]:
    """The series not fully committed (whole), the loose inputs not committed, and how
    many inputs are skipped: a series is done only when all of its instances are."""
    todo = [bool(done.todo(g)) for g in groups]
    # Small series are committed together: one of them redone takes the others of its
    # commit with it, so the new entries cover (and supersede) the old one whole.
    redone = {
        p for g, t in zip(groups, todo, strict=True) if t for p in map(done.partition_of, g)
    } - {None}
    if redone:
        todo = [
            t or not redone.isdisjoint(map(done.partition_of, g))
            for g, t in zip(groups, todo, strict=True)
        ]
    todo_groups = [g for g, t in zip(groups, todo, strict=True) if t]
    todo_loose, skipped = pending(loose, done)
    skipped += sum(len(g) for g in groups) - sum(len(g) for g in todo_groups)
    return todo_groups, todo_loose, skipped


def with_not_retrieved(summary: RunSummary, missing: int) -> RunSummary:
    """``summary`` counting the ``not_retrieved`` error rows committed before the ingest."""
    summary.files += missing
    summary.errors += missing
    if missing:
        summary.error_codes["not_retrieved"] += missing
    return summary


def finish(
    summary: RunSummary, layout: LakeLayout, name: str, context: RunContext, started: float
) -> RunSummary:
    """Sweep what killed tasks left behind, stamp the run's duration, write its report."""
    Ledger(layout).remove_orphans()
    summary.seconds = time.perf_counter() - started
    summary.report = write_report(summary, layout, name=name, started_at=context.started_at)
    return summary


def ingest_config(options: IngestOptions, anonymize: AnonymizeSettings | None) -> dict[str, Any]:
    """What makes two runs produce the same outputs (their ledger configuration): each
    operator with a digest of its configuration, in order."""
    steps = dict(options.fingerprints) or {
        op.name: config_digest({"repr": repr(op)}) for op in options.operators
    }
    if options.pixels:
        steps.setdefault(
            "pixels",
            config_digest(
                {
                    "frames": options.frames_per_chunk,
                    "palette": options.expand_palette,
                    "pyramid": options.pyramid,
                }
            ),
        )
    if anonymize is not None:
        steps["anonymize"] = config_digest(anonymize.fingerprint())
    return {"version": __version__, "operators": steps}


def fingerprint(config: dict[str, Any]) -> dict[str, str]:
    """The operators of a run's configuration, each with the digest of its settings (what
    the ledger compares across pipelines: see :meth:`dicomflow.lake.ledger.Ledger.committed`)."""
    return {**config["operators"], "version": config["version"]}


def list_inputs(source: FilesConnector, listing: Listing | None = None) -> list[SourceRef]:
    """Every input, sorted; inputs that failed to list are kept (they become error rows)."""
    listing = listing if listing is not None else source.query()
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

    def pixel_options(self, source: FilesConnector) -> PixelOptions:
        """Where stacks go, and how ``source``'s files are read to decode them."""
        return PixelOptions(
            self.layout,
            getattr(source, "storage_options", {}),  # a header-only source reads no files
            frames_per_chunk=self.options.frames_per_chunk,
            expand_palette=self.options.expand_palette,
            pyramid=self.options.pyramid,
        )

    @property
    def operators(self) -> tuple[Operator, ...]:
        return self.options.operators

    def workers(self) -> int:
        return planned_workers(self.client)

    def run(
        self,
        source: FilesConnector,
        series_groups: Sequence[Sequence[SourceRef]],
        loose: Sequence[SourceRef],
        summary: RunSummary,
        reading: Reading | None = None,
    ) -> None:
        """Commit every series (from ``reading``'s results when the files were read
        already, else with its own graph) and scan the loose inputs."""
        context, sinks, operators = self.context, self.sinks, self.operators
        series_operators = self.options.series_operators
        pixel_options = self.pixel_options(source)
        jobs = []
        workers = self.workers() if series_groups and reading is None else 1
        series_of_url = {ref.url: uid for ref, uid in reading.index} if reading else {}

        def uid(refs: Sequence[SourceRef]) -> str:
            return series_of_url[refs[0].url] or ""

        def holder(refs: Sequence[SourceRef]) -> tuple[int, ...]:
            return reading.held_by(uid(refs)) if reading is not None else ()

        commits = commit_groups(series_groups, holder)  # small series share a commit
        series_in: dict[str, Sequence[Sequence[SourceRef]]] = {}  # partition -> its series

        def smaller(part: Partition) -> list[tuple[Partition, Any]]:
            """A failed commit of several series: each series alone; a series that
            fails alone: its inputs' rows, its images with an error row each; and when
            that fails too (the lake cannot be written), nothing smaller is left."""
            group = series_in.pop(part.name, ())
            if len(group) > 1:
                alone = []
                for refs in group:
                    single = partition_named(part.index, list(refs))
                    series_in[single.name] = [refs]
                    graph = series_graph(
                        source,
                        single,
                        context,
                        pixel_options,
                        sinks,
                        operators,
                        1,
                        series_operators,
                    )
                    alone.append((single, graph))
                return alone
            if len(group) == 1:
                rows_only = (*operators, SERIES_TASK_FAILED)
                key = task_key("series-rows", context, part.name)
                job = task(run_partition, source, part, rows_only, sinks, context, key=key)
                return [(part, job)]
            return []

        for number, group in enumerate(commits):
            part = partition_named(number, [ref for refs in group for ref in refs])
            series_in[part.name] = group
            if reading is not None:
                uids = tuple(uid(refs) for refs in group)
                graph = task(
                    write_held_series,
                    reading.holding(*uids),
                    uids,
                    part,
                    context,
                    pixel_options,
                    sinks,
                    series_operators,
                    key=task_key("series", context, part.name),
                )
            elif len(group) > 1:
                graph = small_series_graph(
                    source, group, part, context, pixel_options, sinks, operators, series_operators
                )
            else:
                graph = series_graph(
                    source,
                    part,
                    context,
                    pixel_options,
                    sinks,
                    operators,
                    workers,
                    series_operators,
                )
            jobs.append((part, graph))
        # Loose inputs have no series: in a pixel run, their images get an error row.
        loose_operators = (*operators, WithoutSeries()) if self.options.pixels else operators
        for part in plan_partitions(loose, self.policy):
            key = task_key("scan", context, part.name)
            job = task(run_partition, source, part, loose_operators, sinks, context, key=key)
            jobs.append((part, job))
        execute(
            self.client,
            jobs,
            summary,
            sinks=sinks,
            context=context,
            progress=self.progress,
            retries=self.retries,
            submitted=reading.release if reading is not None else None,
            smaller=smaller,
        )
