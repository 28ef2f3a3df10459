"""The command's early worker: started before the command's imports, joined by a growing
cluster's scheduler, stopped in every other case, and never outliving the command."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import textwrap
import time
from collections.abc import Iterator
from pathlib import Path

import psutil
import pytest

from dicomflow import early_start
from dicomflow.cli import _may_grow
from dicomflow.pipelines import cluster
from dicomflow.pipelines.cluster import connect_client, growing_client, planned_workers
from tests.helpers import FROZEN, FROZEN_AT_LEAST

WORKER = "dicomflow.pipelines.early_worker"


def _alive(pid: int) -> bool:
    try:
        return psutil.Process(pid).status() != psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return False


def _gone_within(pid: int, seconds: float) -> bool:
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        if not _alive(pid):
            return True
        time.sleep(0.05)
    return False


def _early_workers() -> set[int]:
    found = set()
    for process in psutil.process_iter(["cmdline"]):
        if WORKER in " ".join(process.info["cmdline"] or ()) and _alive(process.pid):
            found.add(process.pid)
    return found


@pytest.fixture
def early(monkeypatch: pytest.MonkeyPatch) -> Iterator[early_start.EarlyWorker]:
    """An early worker started as the command starts it (no active client to take over)."""
    monkeypatch.setattr(cluster, "_current_client", lambda: None)
    monkeypatch.delenv("DASK_SCHEDULER_ADDRESS", raising=False)
    monkeypatch.delenv(early_start.ENV, raising=False)
    worker = early_start.start(pixels=False)
    yield worker
    early_start.dismiss(worker)
    assert _gone_within(worker.pid, 10), "an early worker outlived its test"


@pytest.mark.parametrize(
    ("arguments", "grows"),
    [
        (["scan", "src", "--out", "lake"], True),
        (["ingest", "src", "--out", "lake", "--pixels"], True),
        (["scan", "src", "--out", "lake", "--workers", "2"], False),
        (["ingest", "src", "--out", "lake", "--scheduler=tcp://h:8786"], False),
        (["ingest", "src", "--out", "lake", "--print-spec"], False),
        (["scan", "--help"], False),
        (["query", "dimse://A@h:104"], False),
        (["echo", "dimse://A@h:104"], False),
        ([], False),
    ],
)
def test_which_commands_start_an_early_worker(
    arguments: list[str], grows: bool, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("DASK_SCHEDULER_ADDRESS", raising=False)
    assert _may_grow(arguments) is grows
    if arguments:
        monkeypatch.setenv("DASK_SCHEDULER_ADDRESS", "tcp://h:8786")
        assert _may_grow(arguments) is False


def test_a_growing_cluster_takes_the_early_worker(
    early: early_start.EarlyWorker, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(cluster, "default_workers", lambda: 2)
    with connect_client(None, None, None, inputs=10_000) as client:
        assert client.scheduler.address == early.address
        assert planned_workers(client) == 2
        client.wait_for_workers(2, timeout=60)
        pids = set(client.run(os.getpid).values())
        assert pids == {os.getpid(), early.pid}  # no Nanny process: the early worker is it
        assert not client.cluster.worker_spec.keys() - {0}  # only the thread is in the spec
    assert _gone_within(early.pid, 10), "the early worker outlived its cluster"
    assert early_start.ENV not in os.environ


def test_any_other_choice_stops_the_early_worker(early: early_start.EarlyWorker) -> None:
    with connect_client(None, None, None, inputs=1) as client:  # a job for this process
        assert client.cluster.processes is False
        assert _gone_within(early.pid, 10)


def test_a_taken_port_leaves_the_early_worker_out(
    early: early_start.EarlyWorker, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(cluster, "default_workers", lambda: 2)
    with socket.socket() as squatter:
        try:
            squatter.bind(("127.0.0.1", early.port))
        except OSError:
            pytest.fail("the port was taken before the test could take it")
        squatter.listen()
        with growing_client(2, pixels=False, early=early_start.claim()) as client:
            assert client.scheduler.address != early.address
            client.wait_for_workers(2, timeout=60)  # a Nanny process instead
            assert early.pid not in set(client.run(os.getpid).values())
    assert _gone_within(early.pid, 10)


def test_the_early_worker_leaves_when_the_command_ends(tmp_path: Path) -> None:
    """However the command ends (here without any exit handler: ``os._exit``), its early
    worker leaves: its standard input closes."""
    script = textwrap.dedent(
        """
        import os
        from dicomflow import early_start
        worker = early_start.start(pixels=False)
        print(worker.pid, flush=True)
        os._exit(0)
        """
    )
    ended = subprocess.run(
        [sys.executable, "-c", script], capture_output=True, text=True, timeout=60, check=True
    )
    pid = int(ended.stdout.split()[0])
    assert _gone_within(pid, 10), "the early worker outlived the command"


def test_a_command_leaves_no_early_worker_behind(tmp_path: Path) -> None:
    source = tmp_path / "src"
    source.mkdir()
    before = _early_workers()
    result = subprocess.run(
        [sys.executable, "-m", "dicomflow", "scan", str(source), "--out", str(tmp_path / "lake")],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode == 0, result.stderr
    time.sleep(0.5)
    assert not (_early_workers() - before), "a command left its early worker running"


@pytest.mark.parametrize(
    ("inputs", "alone", "alone_with_early"), [(500, True, True), (1_500, True, False)]
)
def test_an_early_worker_makes_smaller_jobs_worth_growing(
    inputs: int, alone: bool, alone_with_early: bool, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Headers at about 0.6 ms each: 1,500 are 0.9 s of work, under the 1.2 s a worker
    process takes to join after the job starts, over the 0.5 s an early one takes."""
    monkeypatch.setattr(cluster, "default_workers", lambda: 2)
    assert cluster.runs_in_process(inputs) is alone
    assert cluster.runs_in_process(inputs, early=True) is alone_with_early


def test_the_early_worker_runs_the_users_preloads(monkeypatch: pytest.MonkeyPatch) -> None:
    """As every local worker does: the user's preloads (Dask's configuration), then ours."""
    monkeypatch.setattr(cluster, "_current_client", lambda: None)
    monkeypatch.setattr(cluster, "default_workers", lambda: 2)
    monkeypatch.delenv(early_start.ENV, raising=False)
    monkeypatch.setenv("DASK_DISTRIBUTED__WORKER__PRELOAD", '["tabnanny"]')
    worker = early_start.start(pixels=False)
    try:
        with connect_client(None, None, None, inputs=10_000) as client:
            client.wait_for_workers(2, timeout=60)
            loaded = client.run(eval, "'tabnanny' in __import__('sys').modules", workers=None)
            frozen = client.run(eval, FROZEN)
            pids = client.run(os.getpid)
            (address,) = [a for a, pid in pids.items() if pid == worker.pid]
            assert loaded[address] is True
            assert frozen[address] > FROZEN_AT_LEAST  # its imports, left out of collections
    finally:
        early_start.dismiss(worker)
    assert _gone_within(worker.pid, 10)
