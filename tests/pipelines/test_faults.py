"""Faults during ingest: killed workers, failed commits and a killed run.

Whatever goes wrong, and however often, the lake a run (or its rerun) leaves
must be the lake an uninterrupted run writes: every instance exactly once,
every part and chunk readable, no temporary files, the same content.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import zarr
from distributed import Client
from distributed.diagnostics.plugin import WorkerPlugin

from dicomflow.api import ingest, ingest_spec, read_lake
from dicomflow.connectors.files import FilesConnector
from dicomflow.lake.layout import TABLES, LakeLayout
from dicomflow.lake.ledger import Ledger, config_digest
from dicomflow.pipelines.cluster import open_client
from dicomflow.pipelines.compiler import compile_spec
from dicomflow.pipelines.ingest import index_partition, ingest_config, list_inputs
from dicomflow.pipelines.plan import partition_named, plan_partitions
from dicomflow.pipelines.series_tasks import group_by_series
from dicomflow.schemas import instances_schema, series_schema
from tests.conftest import REPO

sys.path.insert(0, str(REPO / "benchmarks"))
from synth import write_ct_series

SERIES = 20
PER_SERIES = 100
INSTANCES = SERIES * PER_SERIES
KILLS = 3
INJECTED_SHARE = 0.01  # of partitions whose first commit attempt fails
COMMIT_DELAY = 0.3  # seconds added to each commit of fault run A
# Columns that differ between two runs over the same inputs (see dicomflow/schemas/):
PER_RUN = {"instances": ("run_id", "scanned_at"), "series": ("run_id",), "errors": ("run_id",)}
PER_RUN_ATTRIBUTES = ("run_id",)  # of each stack's Zarr group
# What `dicomflow ingest --pixels` files its ledger entries under.
CONFIG = config_digest(
    ingest_config(compile_spec(ingest_spec(["/in"], out="/lake", pixels=True)).options, None)
)
ENTRIES = Path("_ledger") / "entries"

pytestmark = pytest.mark.slow


# --- what a lake holds ---------------------------------------------------------------------


@dataclass(frozen=True)
class LakeContent:
    """A lake's tables without per-run columns (sorted), and every Zarr array read fully."""

    instances: pa.Table
    series: pa.Table
    errors: pa.Table
    arrays: dict[str, np.ndarray] = field(repr=False)
    attributes: dict[str, dict[str, Any]] = field(repr=False)


def _without_per_run(table: pa.Table, name: str, key: str) -> pa.Table:
    return table.drop_columns(list(PER_RUN[name])).sort_by(key).combine_chunks()


def stack_arrays(lake: Path) -> list[Path]:
    """Every Zarr array in place under ``pixels.zarr`` (relative paths), found from the
    metadata; arrays in hidden temporary directories are :func:`leftovers`."""
    arrays = []
    for meta in sorted((lake / "pixels.zarr").rglob("zarr.json")):
        relative = meta.parent.relative_to(lake)
        if any(part.startswith(".") for part in relative.parts):
            continue
        if json.loads(meta.read_text()).get("node_type") == "array":
            arrays.append(relative)
    return arrays


def read_content(lake: Path) -> LakeContent:
    opened = read_lake(str(lake))
    arrays: dict[str, np.ndarray] = {}
    attributes: dict[str, dict[str, Any]] = {}
    for relative in stack_arrays(lake):
        array = zarr.open_array(str(lake / relative), mode="r")
        arrays[str(relative)] = array[...]  # decodes every chunk
        stored = dict(zarr.open_group(str(lake / relative.parent), mode="r").attrs)
        attributes[str(relative.parent)] = {
            k: v for k, v in stored.items() if k not in PER_RUN_ATTRIBUTES
        }
    return LakeContent(
        _without_per_run(opened.instances(), "instances", "SOPInstanceUID"),
        _without_per_run(opened.series(), "series", "zarr_path"),
        _without_per_run(opened.errors(), "errors", "source"),
        arrays,
        attributes,
    )


def leftovers(lake: Path) -> list[str]:
    """Temporary files and directories (hidden names, ``*.tmp``, ``_staging``) in a lake."""
    return sorted(
        str(path.relative_to(lake))
        for path in lake.rglob("*")
        if path.name.startswith(".") or path.name.endswith(".tmp") or path.name == "_staging"
    )


def differing_columns(actual: pa.Table, expected: pa.Table) -> list[str]:
    if actual.column_names != expected.column_names or actual.num_rows != expected.num_rows:
        return [f"shape {actual.shape} vs {expected.shape}"]
    return [n for n in expected.column_names if not actual.column(n).equals(expected.column(n))]


def assert_same_as_reference(lake: Path, reference: LakeContent) -> None:
    """The end state every run must reach, faults or not."""
    uids = read_lake(str(lake)).instances(columns=["SOPInstanceUID"]).column(0).to_pylist()
    assert len(uids) == INSTANCES, f"{len(uids)} instance rows, expected {INSTANCES}"
    assert len(set(uids)) == INSTANCES, f"{len(set(uids))} distinct SOPInstanceUIDs"
    for table in TABLES:
        for part in sorted((lake / table).glob("*.parquet")):
            pq.read_table(part)  # every part on disk is readable, committed or not
    assert leftovers(lake) == [], "temporary files left in the lake"
    content = read_content(lake)  # reads every chunk of every array
    assert content.errors.num_rows == reference.errors.num_rows == 0, content.errors.to_pylist()
    assert content.instances.equals(reference.instances), differing_columns(
        content.instances, reference.instances
    )
    assert content.series.equals(reference.series), differing_columns(
        content.series, reference.series
    )
    assert sorted(content.arrays) == sorted(reference.arrays)
    for path, expected in reference.arrays.items():
        actual = content.arrays[path]
        assert actual.dtype == expected.dtype and actual.shape == expected.shape, path
        assert np.array_equal(actual, expected), f"pixels differ in {path}"
    assert content.attributes == reference.attributes


def committed_entries(lake: Path) -> int:
    directory = lake / ENTRIES
    return sum(1 for _ in directory.rglob("*.json")) if directory.exists() else 0


def committed_inputs(lake: Path) -> int:
    return len(Ledger(LakeLayout(str(lake))).committed_inputs(CONFIG))


# --- fixtures ------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def source(tmp_path_factory: pytest.TempPathFactory) -> Path:
    src = tmp_path_factory.mktemp("faults") / "src"
    write_ct_series(src, INSTANCES, per_series=PER_SERIES, rows=16, cols=16)
    return src


@pytest.fixture(scope="module")
def reference(source: Path, client: Client) -> LakeContent:
    """The lake of one uninterrupted run."""
    lake = source.parent / "reference"
    summary = ingest([str(source)], out=str(lake), pixels=True, client=client, progress=False)
    assert (summary.rows, summary.errors, summary.skipped) == (INSTANCES, 0, 0)
    assert set(PER_RUN["instances"]) <= set(instances_schema().names)
    assert set(PER_RUN["series"]) <= set(series_schema().names)
    content = read_content(lake)
    assert content.instances.num_rows == INSTANCES and len(content.arrays) == SERIES
    return content


# --- two workers starting stacks in a fresh lake --------------------------------------------

RACE_LAKES = 40


def _start_stacks(root: str, series: str, barrier: Any, results: Any) -> None:
    """In its own process: start a stack of ``series`` in each fresh lake, in step with the
    other process (what two workers planning their first series do)."""
    from dicomflow.lake.zarr_store import StackLocation, create_temporary_stack

    failures = []
    for number in range(RACE_LAKES):
        barrier.wait()
        try:
            create_temporary_stack(
                LakeLayout(f"{root}/{number}"),
                StackLocation("1.2.3", series, "stack-0"),
                shape=(2, 4, 4),
                dtype=np.dtype("int16"),
            )
        except Exception as exc:
            failures.append(f"lake {number}: {type(exc).__name__}")
    results.put(failures)


def test_two_workers_starting_stacks_in_a_fresh_lake_both_succeed(tmp_path: Path) -> None:
    """The first series two workers plan in a new lake both create ``pixels.zarr`` and the
    study group (found as an ``internal ContainsGroupError`` error row in an ordinary run)."""
    import multiprocessing

    context = multiprocessing.get_context("spawn")
    barrier, results = context.Barrier(2), context.Queue()
    processes = [
        context.Process(target=_start_stacks, args=(str(tmp_path), s, barrier, results))
        for s in ("1.2.3.1", "1.2.3.2")
    ]
    for process in processes:
        process.start()
    failures = sorted(results.get(timeout=120) + results.get(timeout=120))
    for process in processes:
        process.join(timeout=30)
    assert failures == [], f"{len(failures)} of {2 * RACE_LAKES} stacks failed: {failures[:5]}"


def test_the_next_run_removes_what_an_interrupted_stack_write_left(
    tmp_path: Path, client: Client
) -> None:
    """A worker killed while building a stack leaves its hidden temporary directory; one
    killed while replacing a stack (``commit_stack``: stack → ``.old``, new stack in place,
    ``rmtree(.old)``) leaves the old one. The next run removes both."""
    src = tmp_path / "src"
    write_ct_series(src, 4, per_series=4, rows=16, cols=16)
    lake = tmp_path / "lake"
    ingest([str(src)], out=str(lake), pixels=True, client=client, progress=False)
    (stack,) = (lake / p for p in read_lake(str(lake)).series().column("zarr_path").to_pylist())
    for suffix in ("tmp", "old"):
        shutil.copytree(stack, stack.parent / f".{stack.name}.{os.urandom(16).hex()}.{suffix}")
    again = ingest([str(src)], out=str(lake), pixels=True, client=client, progress=False)
    assert again.skipped == 4
    assert leftovers(lake) == []


# --- fault run A: killed workers and failed commits -----------------------------------------


class FailFirstCommit(WorkerPlugin):
    """Make the first ledger commit of each selected partition raise ``OSError``.

    The parts (and Zarr stacks) are written by then: this is a failure between
    write and commit. Attempts are tracked with marker files, which outlive
    restarted workers, so the retry commits.
    """

    name = "fail-first-commit"

    def __init__(self, selected: frozenset[str], markers: str, delay: float = 0.0) -> None:
        self.selected = selected
        self.markers = markers
        self.delay = delay  # seconds added to every commit (see fault_run_a)

    def setup(self, worker: Any) -> None:
        from dicomflow.lake import ledger

        original = ledger.Ledger.commit
        if getattr(original, "fault_injected", False):
            return
        selected, markers, delay = self.selected, Path(self.markers), self.delay

        def commit(self: ledger.Ledger, entry: ledger.LedgerEntry) -> None:
            time.sleep(delay)
            if entry.partition in selected:
                try:
                    (markers / entry.partition).touch(exist_ok=False)
                except FileExistsError:
                    pass  # not the first attempt
                else:
                    raise OSError(f"injected: first commit of {entry.partition}")
            original(self, entry)

        commit.fault_injected = True  # type: ignore[attr-defined]
        commit.original = original  # type: ignore[attr-defined]
        ledger.Ledger.commit = commit  # type: ignore[method-assign]

    def teardown(self, worker: Any) -> None:
        from dicomflow.lake import ledger

        ledger.Ledger.commit = getattr(ledger.Ledger.commit, "original", ledger.Ledger.commit)


def series_partition_names(src: Path) -> list[str]:
    """The names ingest gives the series partitions of ``src`` (computed here, on the client)."""
    connector = FilesConnector((str(src),), {})
    refs = list_inputs(connector)
    index = [pair for p in plan_partitions(refs) for pair in index_partition(connector, p)]
    groups, loose = group_by_series(index)
    assert not loose
    return [partition_named(number, refs).name for number, refs in enumerate(groups)]


def selected_by_hash(names: list[str], share: float) -> frozenset[str]:
    """``share`` of ``names`` (at least one), chosen by the hash of the name."""
    count = max(1, round(len(names) * share))
    return frozenset(sorted(names, key=lambda n: hashlib.sha256(n.encode()).hexdigest())[:count])


class WorkerKiller(threading.Thread):
    """Kill a busy worker with ``os._exit`` ``kills`` times while the run commits, waiting
    for the nanny to restart it (and for another entry to be committed) in between."""

    def __init__(self, client: Client, lake: Path, kills: int) -> None:
        super().__init__(daemon=True)
        self.client, self.lake, self.kills = client, lake, kills
        self.done = threading.Event()
        self.killed: list[str] = []
        self.entries_at_kill: list[int] = []
        self.error: BaseException | None = None

    def run(self) -> None:
        try:
            seen = 0
            for _ in range(self.kills):
                if not self._wait(lambda s=seen: committed_entries(self.lake) > s):
                    return
                seen = committed_entries(self.lake)
                self._kill_one()
        except BaseException as exc:  # reported by the test
            self.error = exc

    def _wait(self, condition: Any, timeout: float = 120.0) -> bool:
        deadline = time.monotonic() + timeout
        while not condition():
            if self.done.is_set():
                return False
            if time.monotonic() > deadline:
                raise TimeoutError("condition not reached")
            time.sleep(0.02)
        return True

    def _kill_one(self) -> None:
        processing = self.client.processing()
        victim = max(sorted(processing), key=lambda a: len(processing[a]))
        self.entries_at_kill.append(committed_entries(self.lake))
        # The worker dies before answering: the broadcast returns the closed connection.
        self.client.run(os._exit, 1, workers=[victim], on_error="return")
        self.killed.append(victim)

        def restarted() -> bool:
            workers = self.client.scheduler_info()["workers"]
            return victim not in workers and len(workers) == 2

        deadline = time.monotonic() + 60
        while not restarted():  # not interrupted by ``done``: the cluster must be whole
            if time.monotonic() > deadline:
                raise TimeoutError("the nanny did not restart the killed worker")
            time.sleep(0.05)


@dataclass
class FaultRun:
    lake: Path
    rows: int
    errors: int
    error_codes: dict[str, int]
    injected: frozenset[str]
    failed_first: list[str]
    kills: list[int]
    partitions: int


@pytest.fixture(scope="module")
def fault_run_a(source: Path, reference: LakeContent) -> FaultRun:
    """Ingest with three worker kills and ~1% of commits failing once (own cluster)."""
    lake = source.parent / "fault-a"
    markers = source.parent / "fault-a-markers"
    markers.mkdir()
    names = series_partition_names(source)
    injected = selected_by_hash(names, INJECTED_SHARE)
    with open_client(workers=2) as client:
        # Each commit takes COMMIT_DELAY longer, so that the three kills (each waits for the
        # nanny's restart, about 1.5 s) land while series are still committing: reading each
        # file once, the run commits its 20 series in about a second otherwise.
        client.register_plugin(FailFirstCommit(injected, str(markers), COMMIT_DELAY))
        killer = WorkerKiller(client, lake, KILLS)
        killer.start()
        try:
            summary = ingest(
                [str(source)], out=str(lake), pixels=True, client=client, progress=False
            )
        finally:
            killer.done.set()
            killer.join(timeout=120)
        if killer.error is not None:
            raise killer.error
    return FaultRun(
        lake,
        summary.rows,
        summary.errors,
        dict(summary.error_codes),
        injected,
        sorted(p.name for p in markers.iterdir()),
        killer.entries_at_kill,
        len(names),
    )


def test_fault_run_a_really_faulted(fault_run_a: FaultRun) -> None:
    run = fault_run_a
    assert len(run.kills) == KILLS, f"the run ended after {len(run.kills)} kills"
    assert all(0 < k < run.partitions for k in run.kills), run.kills  # in the middle
    assert run.failed_first == sorted(run.injected) != []


def test_fault_run_a_loses_no_partition(fault_run_a: FaultRun) -> None:
    """No partition fell back to ``internal`` error rows: retries and restarts recovered."""
    run = fault_run_a
    assert (run.rows, run.errors, run.error_codes) == (INSTANCES, 0, {})


def test_fault_run_a_leaves_no_temporary_files(fault_run_a: FaultRun) -> None:
    assert leftovers(fault_run_a.lake) == []


def test_fault_run_a_gives_the_reference_lake(
    fault_run_a: FaultRun, reference: LakeContent
) -> None:
    assert_same_as_reference(fault_run_a.lake, reference)


def test_a_rerun_after_fault_run_a_repairs_what_it_left(
    fault_run_a: FaultRun, source: Path, reference: LakeContent, client: Client, tmp_path: Path
) -> None:
    lake = tmp_path / "lake"
    shutil.copytree(fault_run_a.lake, lake)
    committed = committed_inputs(lake)
    again = ingest([str(source)], out=str(lake), pixels=True, client=client, progress=False)
    assert again.skipped == committed  # exactly the complete, live entries are kept
    assert (again.rows, again.errors) == (INSTANCES - committed, 0) and again.accounted
    assert_same_as_reference(lake, reference)


# --- the whole run killed -------------------------------------------------------------------

SUMMARY_LINE = re.compile(
    r"files: (?P<files>\d+)  rows: (?P<rows>\d+)  errors: (?P<errors>\d+)  .*?"
    r"(?:skipped \(already committed\): (?P<skipped>\d+))?$",
    re.MULTILINE,
)


def _ingest_command(source: Path, lake: Path) -> list[str]:
    return [
        sys.executable,
        "-m",
        "dicomflow",
        "ingest",
        str(source),
        "--out",
        str(lake),
        "--pixels",
        "--workers",
        "2",
        "--no-progress",
    ]


def _session_processes(session: int) -> list[int]:
    """Live (not zombie) processes of a session: the CLI, its nannies' workers."""
    import psutil

    alive = []
    for process in psutil.process_iter(["status"]):
        try:
            if os.getsid(process.pid) == session and process.info["status"] != "zombie":
                alive.append(process.pid)
        except (ProcessLookupError, PermissionError):
            continue
    return alive


@pytest.fixture
def killed_run(source: Path, tmp_path: Path) -> Iterator[tuple[Path, int, int]]:
    """Start the CLI, SIGKILL its process group mid-run; yield (lake, entries, inputs
    committed at kill time)."""
    lake = tmp_path / "lake"
    log = (tmp_path / "killed.log").open("wb")
    process = subprocess.Popen(
        _ingest_command(source, lake),
        cwd=tmp_path,
        stdout=log,
        stderr=subprocess.STDOUT,
        start_new_session=True,
    )
    try:
        deadline = time.monotonic() + 120
        while committed_entries(lake) < 3:
            assert process.poll() is None, (tmp_path / "killed.log").read_text()
            assert time.monotonic() < deadline, "no ledger entries after 120 s"
            time.sleep(0.02)
        os.killpg(process.pid, signal.SIGKILL)
        assert process.wait(timeout=30) == -signal.SIGKILL  # it had not finished
        deadline = time.monotonic() + 30
        while _session_processes(process.pid):  # workers included
            assert time.monotonic() < deadline, "processes of the killed run are still alive"
            time.sleep(0.1)
        yield lake, committed_entries(lake), committed_inputs(lake)
    finally:
        if process.poll() is None:
            os.killpg(process.pid, signal.SIGKILL)
            process.wait()
        log.close()


def test_a_killed_run_resumes_to_the_reference_lake(
    killed_run: tuple[Path, int, int], source: Path, reference: LakeContent, tmp_path: Path
) -> None:
    lake, entries, committed = killed_run
    assert 0 < entries < SERIES and 0 < committed < INSTANCES, (entries, committed)
    rerun = subprocess.run(
        _ingest_command(source, lake),
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )
    assert rerun.returncode == 0, rerun.stdout + rerun.stderr
    match = SUMMARY_LINE.search(rerun.stdout)
    assert match, rerun.stdout
    files, rows, errors = (int(match[k]) for k in ("files", "rows", "errors"))
    skipped = int(match["skipped"] or 0)
    print(f"killed after {entries} entries ({committed} inputs); rerun: {match[0]}")
    assert (files, errors) == (INSTANCES, 0), rerun.stdout
    # Only what was not committed at the kill (the in-flight partitions) was redone:
    assert skipped >= committed, (skipped, committed)
    assert rows == INSTANCES - skipped, rerun.stdout
    assert_same_as_reference(lake, reference)
