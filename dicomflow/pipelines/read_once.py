"""Ingest into a fresh lake reading each file once.

The two-stage ingest (:mod:`.ingest`) reads every header twice: once to learn the
series, then again in the series' reading tasks. When the lake holds nothing of
this configuration yet (no rerun to skip inputs for), the first pass can do the
reading tasks' work instead: each task reads its files, runs the metadata
operators and decodes and encodes their images, grouped by series, and keeps the
result on its worker. The client learns the series from small lists, then one
task per series (or per group of small series) takes its parts from those results,
writes the stacks and commits (:func:`.series_tasks.write_and_commit`): the
series' graph is the one the two-stage path builds, fed by other reading tasks.

Every result is held until the series are known, so this path is for runs of at
most :data:`MAX_INPUTS` inputs and :data:`MAX_BYTES` of files; larger runs take the
two-stage path, whose memory does not grow with the run.
"""

from __future__ import annotations

import math
import time
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import dask
from dask.sizeof import sizeof
from distributed import Client, Future, as_completed

from dicomflow.connectors.files import FilesConnector
from dicomflow.operators.base import Operator
from dicomflow.pipelines.pipeline import PartitionResult, task, task_key
from dicomflow.pipelines.plan import Partition, PartitionPolicy, split_partitions
from dicomflow.pipelines.progress import Progress
from dicomflow.pipelines.result_sizes import items_bytes
from dicomflow.pipelines.series_tasks import (
    SeriesRows,
    encoded_rows,
    series_of,
    series_rows_bytes,
    write_and_commit,
)
from dicomflow.pipelines.sinks import LakeSink
from dicomflow.pixels.series_writer import PixelOptions
from dicomflow.records import Batch, InstanceRecord, RunContext, SourceRef

MAX_INPUTS = 5_000  # held at once: 5,000 small CT instances took 100 MB more in the workers
MAX_BYTES = 1 << 30  # of listed files: their frames, encoded, are held until written


@dataclass(frozen=True)
class ReadPart:
    """What a reading task keeps on its worker: the series of each of its inputs (None
    when it has none or cannot be read) and, per series, its rows and decoded frames."""

    series: tuple[str | None, ...]
    rows: dict[str, SeriesRows]


def read_part_bytes(part: ReadPart) -> int:
    """What a held reading result weighs, for Dask (see :mod:`.result_sizes`)."""
    return items_bytes(part.series) + sum(map(series_rows_bytes, part.rows.values()))


sizeof.register(ReadPart, read_part_bytes)


def read_part(
    source: FilesConnector,
    partition: Partition,
    context: RunContext,
    operators: Sequence[Operator],
    options: PixelOptions,
) -> ReadPart:
    """Task: read the partition's files once, run the metadata operators on those that
    belong to a series and decode and encode their images. Inputs without a series are
    left to the run's scan partitions."""
    started = time.time()
    records = tuple(source.fetch(partition.refs))
    series = tuple(series_of(r.header.elements) if r.header else None for r in records)
    members: dict[str, list[InstanceRecord]] = {}
    for record, uid in zip(records, series, strict=True):
        if uid is not None:
            members.setdefault(uid, []).append(record)
    rows = {}
    for uid, group in members.items():
        rows[uid] = encoded_rows(started, Batch(tuple(group), context), operators, options)
    return ReadPart(series, rows)


def series_list(part: ReadPart) -> tuple[str | None, ...]:
    """Task: the small part of a reading task's result that the client needs."""
    return part.series


def write_held_series(
    parts: Sequence[ReadPart],
    series: Sequence[str],
    partition: Partition,
    context: RunContext,
    options: PixelOptions,
    sinks: Sequence[LakeSink],
    series_operators: Sequence[Operator] = (),
) -> PartitionResult:
    """Task: gather each series' rows from the reading tasks (in input order), write
    their stacks, run the series operators and commit them together (small series share
    a commit: :func:`.series_tasks.commit_groups`)."""
    rows = [[part.rows[uid] for part in parts if uid in part.rows] for uid in series]
    return write_and_commit(rows, partition, context, options, sinks, series_operators)


SMALLEST_PART = 8


def reading_partitions(
    refs: Sequence[SourceRef], workers: int, policy: PartitionPolicy | None = None
) -> list[Partition]:
    """Partitions of the sorted inputs, largest first (each a share of what is left:
    ``remaining / (2 × workers)``, at least :data:`SMALLEST_PART`), so the last tasks
    are short and no worker waits long for the other's last one (equal tasks of 29
    JPEG 2000 slices left one worker idle for up to 0.6 s). Capped by the policy's
    count and bytes."""
    policy = policy or PartitionPolicy()

    def size_for(remaining: int) -> int:
        return min(policy.max_files, max(SMALLEST_PART, math.ceil(remaining / (2 * workers))))

    return split_partitions(refs, size_for, policy.max_bytes)


@dataclass
class Reading:
    """The reading tasks of a run, submitted: their futures (held until the series tasks
    that need them are submitted) and what the client learnt from them."""

    futures: list[Future]
    index: list[tuple[SourceRef, str | None]]  # every input with its series, in input order
    parts_of: dict[str, list[int]]  # series -> the reading tasks holding some of it

    def holding(self, *series: str) -> list[Future]:
        """The reading tasks that hold some of ``series``, in input order."""
        return [self.futures[n] for n in self.held_by(*series)]

    def held_by(self, *series: str) -> tuple[int, ...]:
        """The numbers of the reading tasks that hold some of ``series``, in order."""
        return tuple(sorted({n for uid in series for n in self.parts_of.get(uid, [])}))

    def release(self) -> None:
        """Let Dask drop each reading task's result once its series tasks are done (called
        once they are submitted). Held on, a result lost with its worker would be computed
        again even after every series it feeds was committed: a decode for nothing."""
        for future in self.futures:
            future.release()
        self.futures.clear()


def submit_reading(
    client: Client,
    source: FilesConnector,
    refs: Sequence[SourceRef],
    context: RunContext,
    operators: Sequence[Operator],
    options: PixelOptions,
    *,
    workers: int,
    policy: PartitionPolicy | None,
    retries: int,
    progress: bool | None = None,
) -> Reading:
    """Submit the reading tasks and wait for the series of every input (a task that
    still fails after its retries leaves its inputs without a series: they are scanned)."""
    parts = reading_partitions(refs, workers, policy)
    reads = []
    for number, part in enumerate(parts):
        with dask.annotate(priority=len(parts) - number):  # largest first
            reads.append(
                task(
                    read_part,
                    source,
                    part,
                    context,
                    tuple(operators),
                    options,
                    key=task_key("read", context, part.name),
                )
            )
    futures = client.compute(reads, retries=retries)
    sizes = {f.key: len(p.refs) for f, p in zip(futures, parts, strict=True)}
    with Progress(len(refs), enabled=progress, description="read") as bar:
        for done in as_completed(futures):  # most of the run's time: show it
            bar.advance(sizes[done.key])
    found = _series_in_memory(client, [f.key for f in futures])
    # Lost results (a worker died) are computed again through a task; failed ones fail it.
    missing = [(f, p) for f, p in zip(futures, parts, strict=True) if f.key not in found]
    lists = [
        client.submit(series_list, f, key=task_key("index", context, p.name), retries=retries)
        for f, p in missing
    ]
    for (future, _), result in zip(missing, _results(lists), strict=True):
        if result is not None:
            found[future.key] = result
    index: list[tuple[SourceRef, str | None]] = []
    parts_of: dict[str, list[int]] = {}
    for number, (part, future) in enumerate(zip(parts, futures, strict=True)):
        uids = found.get(future.key) or (None,) * len(part.refs)
        index.extend(zip(part.refs, uids, strict=True))
        for uid in dict.fromkeys(u for u in uids if u is not None):
            parts_of.setdefault(uid, []).append(number)
    return Reading(futures, index, parts_of)


def _series_in_memory(client: Client, keys: list[str]) -> dict[str, tuple[str | None, ...]]:
    """The series lists of the reading results the workers hold, asked of every worker at
    once: a list task per result cost 2 to 3 ms each, one after another on a worker."""
    found: dict[str, tuple[str | None, ...]] = {}
    answers = client.run(_held_series, keys, on_error="return")
    for answer in answers.values():
        if isinstance(answer, dict):
            found.update(answer)
    return found


def _held_series(keys: list[str], dask_worker: Any = None) -> dict[str, tuple[str | None, ...]]:
    data = dask_worker.data if dask_worker is not None else {}
    return {key: data[key].series for key in keys if key in data}


def _results(futures: list[Future]) -> list[Any]:
    """Each future's result, or None where it failed; in the order given."""
    done = {
        future.key: result if future.status == "finished" else None
        for future, result in as_completed(futures, with_results=True, raise_errors=False)
    }
    return [done.get(future.key) for future in futures]
