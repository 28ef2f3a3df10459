"""A pipeline: source → operators → sinks, compiled into one Dask graph and run.

Each partition becomes one task in which the source's fetch, every operator and
every sink run back to back (operators fused per partition), so records never
cross a task boundary; only a small :class:`PartitionResult` does. Task keys are
made from partition digests, never from paths or DICOM values.
"""

from __future__ import annotations

import dataclasses
import logging
import time
import traceback
import uuid
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any, Protocol

import pyarrow as pa
from dask.delayed import Delayed, delayed
from dask.sizeof import sizeof
from distributed import Client, Future, as_completed

from dicomflow.connectors.files import Listing
from dicomflow.errors import DicomflowError, ErrorCode
from dicomflow.lake.access import check_lake_writable
from dicomflow.lake.ledger import Committed, Ledger
from dicomflow.operators.base import Operator
from dicomflow.pipelines.plan import Partition, PartitionPolicy, partition_named, plan_partitions
from dicomflow.pipelines.progress import Progress
from dicomflow.pipelines.result_sizes import mapping_bytes
from dicomflow.pipelines.sinks import FAILED_PARTITION_STAGE, LakeSink, Sink
from dicomflow.pipelines.summary import RunSummary
from dicomflow.records import Batch, InstanceRecord, RunContext, SourceRef

logger = logging.getLogger(__name__)


class Source(Protocol):
    """A connector used as a pipeline source: list on the client, fetch on a worker."""

    def query(self) -> Listing: ...

    def fetch(self, refs: Sequence[SourceRef]) -> Any: ...


@dataclass(frozen=True)
class PartitionResult:
    """What a partition task sends back: counts, error codes, and collected tables."""

    partition: int
    inputs: int
    rows: int
    errors: int
    error_codes: dict[str, int]
    tables: dict[str, pa.Table] | None = None
    seconds: float = 0.0  # how long the partition's work took
    faults: int = 0  # error rows of instances that kept their row (see InstanceRecord.faults)
    first_source: str = ""  # names the partition in reports (display form, no credentials)


def partition_result_bytes(result: PartitionResult) -> int:
    """A partition's result: its collected tables, when a sink returns them."""
    tables = mapping_bytes(result.tables) if result.tables is not None else 0
    return tables + mapping_bytes(result.error_codes) + sizeof(result.first_source)


sizeof.register(PartitionResult, partition_result_bytes)


def per_input(func: Callable[..., Any]) -> Callable[..., Any]:
    """Mark ``func``, a task body that takes its partition as an argument, as right for
    any part of a partition too: a failed partition is then run again input by input
    (see :func:`one_by_one`), so only a poisoned input is lost."""
    setattr(func, _PER_INPUT, True)
    return func


_PER_INPUT = "_dicomflow_per_input"


@per_input
def run_partition(
    source: Source,
    partition: Partition,
    operators: Sequence[Operator],
    sinks: Sequence[Sink],
    context: RunContext,
) -> PartitionResult:
    """The fused body of one task: fetch, every operator, every sink."""
    started = time.time()
    records: tuple[InstanceRecord, ...] = tuple(source.fetch(partition.refs))
    batch = Batch(records, context)
    for operator in operators:
        batch = operator(batch)
    return timed(commit_batch(batch, partition, sinks), started, partition)


def timed(result: PartitionResult, started: float, partition: Partition) -> PartitionResult:
    """``result`` with how long its partition took and the source that names it."""
    first = partition.refs[0].source if partition.refs else ""
    return dataclasses.replace(result, seconds=time.time() - started, first_source=first)


def commit_batch(batch: Batch, partition: Partition, sinks: Sequence[Sink]) -> PartitionResult:
    """Hand a finished batch to every sink and summarise it."""
    records = batch.records
    rows = errors = 0
    tables: dict[str, pa.Table] | None = None
    for sink in sinks:
        result = sink.write(batch, partition)
        rows, errors = result.rows, result.errors
        if result.tables is not None:
            tables = result.tables
    return PartitionResult(
        partition.index,
        len(records),
        rows,
        errors,
        error_codes(batch.records),
        tables,
        faults=sum(len(r.faults) for r in records),
    )


def error_codes(records: Sequence[InstanceRecord]) -> dict[str, int]:
    """How many failures of ``records`` (error rows) there are of each error code."""
    return dict(Counter(str(p.code) for r in records for p in r.problems))


@dataclass(frozen=True)
class Pipeline:
    """Source, operators and sinks. Build it anywhere; run it on any distributed client."""

    source: Source
    operators: tuple[Operator, ...]
    sinks: tuple[Sink, ...]
    policy: PartitionPolicy = field(default_factory=PartitionPolicy)
    name: str = "scan"

    def plan(self, done: Committed | None = None) -> tuple[list[Partition], int]:
        """Partitions of the inputs not in ``done`` (committed identities), and how many
        inputs were left out because they are."""
        listing = self.source.query()
        refs = listing.refs + [ref for ref, _ in listing.failures]
        todo, skipped = pending(refs, done or Committed())
        return plan_partitions(sorted(todo, key=lambda r: r.url), self.policy), skipped

    def to_delayed(self, partitions: Sequence[Partition], context: RunContext) -> list[Delayed]:
        """The Dask graph: one fused task per partition."""
        return [
            task(
                run_partition,
                self.source,
                part,
                self.operators,
                self.sinks,
                context,
                key=task_key("scan", context, part.name),
            )
            for part in partitions
        ]

    def run(
        self,
        client: Client,
        *,
        run_id: str | None = None,
        progress: bool | None = None,
        retries: int = 2,
    ) -> RunSummary:
        """Plan on the client, run every partition on the cluster, gather the counts."""
        started = time.perf_counter()
        context = RunContext(run_id or new_run_id(), datetime.now(UTC))
        done = prepare_lake(self.sinks)
        partitions, skipped = self.plan(done)
        summary = RunSummary(
            context.run_id, files=sum(len(p.refs) for p in partitions) + skipped, skipped=skipped
        )
        if not partitions:
            logger.warning("no input files were found")
        jobs = list(zip(partitions, self.to_delayed(partitions, context), strict=True))
        execute(
            client,
            jobs,
            summary,
            sinks=self.sinks,
            context=context,
            progress=progress,
            retries=retries,
        )
        lake = next((s for s in self.sinks if isinstance(s, LakeSink)), None)
        if lake is not None:
            Ledger(lake.layout).remove_orphans()  # what killed tasks left behind
        summary.seconds = time.perf_counter() - started
        if lake is not None:
            from dicomflow.pipelines.report import write_report  # the report reads the lake

            summary.report = write_report(
                summary, lake.layout, name=self.name, started_at=context.started_at
            )
        return summary


def pending(refs: Sequence[SourceRef], done: Committed) -> tuple[list[SourceRef], int]:
    """The inputs not committed yet, and the count of those that were.

    An input that changed since it was committed takes the other inputs of its old
    partition with it, so the new entries cover (and supersede) that partition whole
    and no older row survives beside the new one.
    """
    todo = done.todo(refs)
    return todo, len(refs) - len(todo)


def prepare_lake(sinks: Sequence[Sink]) -> Committed:
    """Before a run: drop what an interrupted run left uncommitted, and return the
    inputs the lake sink's configuration has already committed."""
    lake = _lake_sink(sinks)
    if lake is None:
        return Committed()
    check_lake_writable(lake.layout)  # a store refusing access fails here, before any work
    ledger = Ledger(lake.layout)
    entries = ledger.entries()  # read once: a lake may hold thousands
    ledger.remove_orphans(entries)
    return ledger.committed(lake.config, entries, lake.operators)


def check_sinks_writable(sinks: Sequence[Sink]) -> None:
    """Raise the lake's access error when the lake sink can no longer be written."""
    lake = _lake_sink(sinks)
    if lake is not None:
        check_lake_writable(lake.layout)


def _lake_sink(sinks: Sequence[Sink]) -> LakeSink | None:
    return next((s for s in sinks if isinstance(s, LakeSink)), None)


def run_failed_partition(
    partition: Partition, sinks: Sequence[Sink], context: RunContext, message: str
) -> PartitionResult:
    """Commit an error row for every input of a partition whose task kept failing."""
    records = tuple(
        InstanceRecord(ref).with_error(FAILED_PARTITION_STAGE, ErrorCode.INTERNAL, message)
        for ref in partition.refs
    )
    batch = Batch(records, context)
    errors = 0
    for sink in sinks:
        errors = sink.write(batch, partition).errors
    return PartitionResult(
        partition.index, len(records), 0, errors, {str(ErrorCode.INTERNAL): errors}
    )


def execute(
    client: Client,
    jobs: Sequence[tuple[Partition, Delayed]],
    summary: RunSummary,
    *,
    sinks: Sequence[Sink],
    context: RunContext,
    progress: bool | None,
    retries: int,
    submitted: Callable[[], None] | None = None,
    smaller: Smaller | None = None,
) -> None:
    """Run the partition tasks, folding results into ``summary`` as they finish
    (``submitted`` is called once they are all submitted).

    A partition whose task still fails after its retries is not lost: ``smaller``
    may split it into smaller jobs (the series of a shared commit, one by one), else
    its inputs are run again one by one where the task allows it (see
    :func:`recover`), and the inputs that still fail are committed as error rows
    (code ``internal``). Failures are logged with the exception type only.
    """
    futures = client.compute([task for _, task in jobs], retries=retries)
    if submitted is not None:
        submitted()
    jobs_by_key = {future.key: job for future, job in zip(futures, jobs, strict=True)}
    clock = time.perf_counter()
    done_inputs = 0
    with Progress(sum(len(p.refs) for p, _ in jobs), enabled=progress) as bar:
        for future in as_completed(futures):
            partition, job = jobs_by_key[future.key]
            try:
                results = [future.result()]
            except Exception as exc:
                logger.error(
                    "partition %s failed after %d retries (%s)",
                    partition.name,
                    retries,
                    failure_name(exc),
                )
                check_sinks_writable(sinks)  # a lake that stopped taking writes ends the run
                results, lost = settle(
                    client, partition, job, exc, sinks=sinks, context=context, smaller=smaller
                )
                bar.advance(lost)
            for result in results:
                if summary.first_result_seconds is None:
                    summary.first_result_seconds = time.perf_counter() - summary.started
                fold(summary, result)
                bar.advance(result.inputs)
                done_inputs += result.inputs
                summary.timeline.append((time.perf_counter() - clock, done_inputs))
            future.release()


def fold(summary: RunSummary, result: PartitionResult) -> None:
    """Add one partition's counts, error codes and tables to ``summary``."""
    summary.rows += result.rows
    summary.errors += result.errors
    summary.faults += result.faults
    summary.error_codes.update(result.error_codes)
    if result.tables:
        for name, table in result.tables.items():
            summary.tables.setdefault(name, []).append(table)
    if result.seconds:
        summary.slowest.append((result.seconds, result.inputs, result.first_source))
        summary.slowest.sort(reverse=True)
        del summary.slowest[SLOWEST_KEPT:]


Smaller = Callable[[Partition], Sequence[tuple[Partition, Delayed]]]


def settle(
    client: Client,
    partition: Partition,
    job: Delayed,
    exc: BaseException,
    *,
    sinks: Sequence[Sink],
    context: RunContext,
    smaller: Smaller | None,
) -> tuple[list[PartitionResult], int]:
    """The results of a partition whose task kept failing: its ``smaller`` jobs, each
    settled the same way when it fails too, or else :func:`recover`'s."""
    jobs = smaller(partition) if smaller is not None else ()
    if not jobs:
        return recover(client, partition, job, exc, sinks=sinks, context=context)
    logger.error("partition %s run again in %d smaller jobs", partition.name, len(jobs))
    results: list[PartitionResult] = []
    lost = 0
    futures = client.compute([j for _, j in jobs], retries=0)
    for (part, j), future in zip(jobs, futures, strict=True):
        try:
            results.append(future.result())
        except Exception as inner:
            more, more_lost = settle(
                client, part, j, inner, sinks=sinks, context=context, smaller=smaller
            )
            results.extend(more)
            lost += more_lost
        future.release()
    return results, lost


def recover(
    client: Client,
    partition: Partition,
    job: Delayed,
    exc: BaseException,
    *,
    sinks: Sequence[Sink],
    context: RunContext,
) -> tuple[list[PartitionResult], int]:
    """What is left of a partition whose task kept failing: the results of its inputs
    run one by one (when its task allows, see :func:`per_input`), and error rows
    (code ``internal``) for the inputs that failed alone too, or for every input when
    the task cannot be split. Also returns how many inputs could not even be
    recorded (the sink itself is failing).

    The inputs run alone side by side first; those that fail run again one at a
    time, so that an input is never blamed for a worker another input killed.
    """
    singles = one_by_one(partition, job)
    if singles is None:
        message = f"the partition task failed ({failure_name(exc)})"
        return _record_failed(client, [(partition, message)], sinks=sinks, context=context)
    assert isinstance(job, CallTask)  # one_by_one splits only those
    results, failed = _run_alone(client, partition, job, singles, context, "alone")
    failed_again: list[tuple[Partition, str]] = []
    for single, _ in failed:
        done, still = _run_alone(client, partition, job, [single], context, "alone-again")
        results.extend(done)
        failed_again.extend(still)
    logger.error(
        "partition %s run input by input: %d of %d inputs failed alone",
        partition.name,
        len(failed_again),
        len(singles),
    )
    recorded, lost = _record_failed(client, failed_again, sinks=sinks, context=context)
    return results + recorded, lost


def one_by_one(partition: Partition, job: Delayed) -> list[Partition] | None:
    """A partition for each input of ``partition`` (named by that input), in order,
    when ``job`` can run on them (its function is marked :func:`per_input` and takes
    ``partition``); None otherwise, or when the partition holds one input only."""
    if not isinstance(job, CallTask) or len(partition.refs) < 2:
        return None
    func, args = job.call
    if not getattr(func, _PER_INPUT, False) or not any(a is partition for a in args):
        return None
    return [partition_named(partition.index, [ref]) for ref in partition.refs]


def _run_alone(
    client: Client,
    partition: Partition,
    job: CallTask,
    singles: Sequence[Partition],
    context: RunContext,
    stage: str,
) -> tuple[list[PartitionResult], list[tuple[Partition, str]]]:
    """Run ``job`` on each of ``singles`` instead of ``partition``, side by side, once
    (no retries); the results, and each single that failed with its error message."""
    func, args = job.call
    jobs = [
        task(
            func,
            *(single if a is partition else a for a in args),
            key=task_key(stage, context, single.name),
        )
        for single in singles
    ]
    results: list[PartitionResult] = []
    failed: list[tuple[Partition, str]] = []
    for single, future in zip(singles, client.compute(jobs, retries=0), strict=True):
        try:
            results.append(future.result())
        except Exception as exc:
            failed.append((single, f"the task failed on this input alone ({failure_name(exc)})"))
        future.release()
    return results, failed


def _record_failed(
    client: Client,
    failed: Sequence[tuple[Partition, str]],
    *,
    sinks: Sequence[Sink],
    context: RunContext,
) -> tuple[list[PartitionResult], int]:
    """Commit the error rows of each failed partition (with its message); the results,
    and how many inputs could not be recorded."""
    results: list[PartitionResult] = []
    lost = 0
    for partition, message in failed:
        fallback = task(
            run_failed_partition,
            partition,
            sinks,
            context,
            message,
            key=task_key("failed", context, partition.name),
        )
        try:
            results.append(client.compute(fallback).result())
        except Exception as fallback_exc:  # the sink itself is failing: report, go on
            logger.error(
                "cannot record the failed partition %s (%s)",
                partition.name,
                failure_name(fallback_exc),
            )
            lost += len(partition.refs)
    return results, lost


SLOWEST_KEPT = 10


def task_key(stage: str, context: RunContext, name: str) -> str:
    """A Dask key unique to this run: the same inputs in another run (or with other
    operators) must never be answered from a result the scheduler still holds."""
    return f"dicomflow-{stage}-{context.run_id}-{name}"


class _Embedded:
    """A task argument carried inside its task as it is: Dask neither walks into it nor
    makes it a graph node of its own (such a node costs a scheduler round trip before
    the task can start: 1 to 8 ms per task, measured)."""

    __slots__ = ("value",)

    def __init__(self, value: Any) -> None:
        self.value = value

    def __reduce__(self) -> tuple[type[_Embedded], tuple[Any]]:
        return _Embedded, (self.value,)


def _holds_tasks(value: Any) -> bool:
    """A task, or a list or tuple holding tasks at any depth (say, each series' parts)."""
    return isinstance(value, Delayed | Future) or (
        type(value) in (list, tuple) and any(map(_holds_tasks, value))
    )


class TaskFailed(DicomflowError, RuntimeError):
    """A graph task failed with an exception whose text may quote values.

    Dask's worker logs a failed task's exception text (once per attempt) and sends
    the exception to the client, so a third-party exception leaves the task as this
    one: its type name only, no message, no chained exception. dicomflow's own errors
    are PHI-free by contract and leave as they are.
    """

    def __init__(self, failed: str) -> None:
        super().__init__(f"the task failed ({failed})")
        self.failed = failed

    def __reduce__(self) -> tuple[type[TaskFailed], tuple[str]]:
        return TaskFailed, (self.failed,)


def failure_name(exc: BaseException) -> str:
    """The type name of what made a task fail (inside :class:`TaskFailed`, if so)."""
    return exc.failed if isinstance(exc, TaskFailed) else type(exc).__name__


def _call(func: Callable[..., Any], *args: Any) -> Any:
    try:
        return func(*(a.value if isinstance(a, _Embedded) else a for a in args))
    except DicomflowError:
        raise
    except Exception as exc:
        logger.debug(
            "a task failed (%s) at\n%s",
            type(exc).__name__,
            "".join(traceback.format_tb(exc.__traceback__)),  # code lines, never values
        )
        raise TaskFailed(type(exc).__name__) from None


class CallTask(Delayed):
    """A graph task that remembers the call it makes (``func`` and its arguments, on
    the client only), so a failed partition's task can be made again for each of its
    inputs (see :func:`one_by_one`)."""

    __slots__ = ("call",)

    def __init__(self, made: Delayed, func: Callable[..., Any], args: tuple[Any, ...]) -> None:
        super().__init__(made.key, made.dask, layer=made._layer)
        self.call = (func, args)


def task(func: Callable[..., Any], *args: Any, key: str) -> Delayed:
    """The graph task ``key`` that calls ``func(*args)``. Arguments that are tasks (or
    lists of tasks) are its dependencies; every other argument is embedded as is. Passed
    to a delayed call directly, every source reference of a partition (a dataclass) is
    traversed on the client: 3.7 s to build the scan graph of 100,000 inputs."""
    embedded = [a if _holds_tasks(a) else _Embedded(a) for a in args]
    return CallTask(delayed(_call, pure=True)(func, *embedded, dask_key_name=key), func, args)


def new_run_id() -> str:
    """A sortable, unique run id: UTC timestamp plus a random suffix."""
    return f"{datetime.now(UTC):%Y%m%dT%H%M%SZ}-{uuid.uuid4().hex[:8]}"
