"""Where a job runs: the choice between this process, worker processes and a named
scheduler, the clusters' workers, and their teardown."""

from __future__ import annotations

import gc
import logging
import os
import subprocess
import sys
from collections.abc import Iterator

import dask
import pandas as pd
import psutil
import pyarrow as pa
import pytest
from distributed import Client, LocalCluster, Worker

import dicomflow
from dicomflow.pipelines import cluster
from dicomflow.pipelines.cluster import (
    FREEZE_IMPORTS,
    SCHEDULER_ENV,
    WORKER_IMPORTS,
    WORKER_MALLOC_ENV,
    _pre_spawn_environ,
    connect_client,
    default_workers,
    growing_client,
    grows,
    open_client,
    planned_workers,
    runs_in_process,
    worker_preloads,
)
from dicomflow.pipelines.worker_imports import MODULES
from tests.conftest import PYDICOM_TEST_FILES
from tests.helpers import FROZEN, FROZEN_AT_LEAST

# Asked of each fresh worker before it runs any task. ``eval`` is pickled by reference,
# so asking imports nothing on the worker (a function from this module would).
LOADED = "sorted(m for m in __import__('sys').modules if m in {names!r})"

VOLATILE = ["run_id", "scanned_at"]


@pytest.fixture
def no_active_client(monkeypatch: pytest.MonkeyPatch) -> None:
    """Other tests leave a session-wide client active, which ``connect_client`` would
    rightly use; these tests are about what it starts when there is none."""
    monkeypatch.setattr(cluster, "_current_client", lambda: None)
    monkeypatch.delenv(SCHEDULER_ENV, raising=False)


def _addresses(client: Client) -> list[str]:
    return list(client.scheduler_info()["workers"])


def _children() -> set[int]:
    return {p.pid for p in psutil.Process().children(recursive=True)}


def _gone(pids: set[int]) -> bool:
    return not any(
        psutil.pid_exists(pid) and psutil.Process(pid).status() != psutil.STATUS_ZOMBIE
        for pid in pids
    )


@pytest.mark.parametrize(
    ("inputs", "input_bytes", "pixels", "workers", "in_process"),
    [
        (1, 500_000, False, None, True),
        (1_000, 500_000_000, False, None, True),
        (100_000, None, False, None, False),
        (100, 50_000_000, True, None, True),
        (10_000, None, False, None, False),  # over before no worker process could help
        (100_000, 50_000_000_000, True, None, False),
        (1, 10_000_000_000, True, None, False),  # one multi-frame file, but 10 GB of it
        (None, None, False, None, False),  # not listed first: a query, a retrieve
        (1, 500_000, False, 1, True),
        (1, 500_000, False, 2, False),
    ],
    ids=[
        "one-file",
        "1000-headers",
        "100000-headers",
        "100-slices",
        "10000-headers",
        "100000-slices",
        "huge-multiframe",
        "unknown-size",
        "one-worker-asked",
        "two-workers-asked",
    ],
)
def test_which_jobs_run_in_this_process(
    inputs: int | None, input_bytes: int | None, pixels: bool, workers: int | None, in_process: bool
) -> None:
    assert runs_in_process(inputs, input_bytes, pixels=pixels, workers=workers) is in_process


def test_a_small_job_runs_in_this_process_and_starts_no_process(
    no_active_client: None, caplog: pytest.LogCaptureFixture
) -> None:
    before = _children()
    with (
        caplog.at_level(logging.INFO, logger=cluster.__name__),
        connect_client(None, None, None, inputs=3, input_bytes=3 * 2**20) as client,
    ):
        assert client.cluster.processes is False
        addresses = _addresses(client)
        pids = set(client.run(os.getpid).values())
        started = _children() - before
    assert [a.split("://")[0] for a in addresses] == ["inproc"]  # one worker thread
    assert pids == {os.getpid()}
    assert not started
    assert "Running in this process (3 inputs, 1 worker thread)" in caplog.messages


def test_a_small_pixel_job_runs_on_one_task_thread(no_active_client: None) -> None:
    """Warning filters are process-wide: tasks in two threads of one process would undo
    each other's ``warnings.catch_warnings`` (pydicom's and ours), so in this process a
    job gets one task thread, and worker processes when it is larger."""
    with connect_client(None, None, None, inputs=3, input_bytes=2**20, pixels=True) as client:
        addresses = _addresses(client)
        threads = sum(client.nthreads().values())
    assert len(addresses) == 1 and threads == 1
    assert all(a.startswith("inproc://") for a in addresses)


def test_a_large_job_gets_worker_processes_that_are_gone_after_it(
    no_active_client: None, caplog: pytest.LogCaptureFixture
) -> None:
    before = _children()
    with (
        caplog.at_level(logging.INFO, logger=cluster.__name__),
        connect_client(None, None, None, inputs=100_000) as client,
    ):
        assert client.cluster.processes is True
        addresses = _addresses(client)
        pids = set(client.run(os.getpid).values())
        started = _children() - before
        loaded = client.run(eval, LOADED.format(names={"pandas", "imagecodecs"}))
    assert len(addresses) == default_workers()
    assert all(a.startswith("tcp://") for a in addresses)
    assert len(pids) == len(addresses) and pids <= started
    assert _gone(pids), "a worker process outlived its cluster"
    # a job without pixels: its workers imported pandas, and no codec
    assert all(names == ["pandas"] for names in loaded.values())
    assert "Starting a local cluster of %d worker process%s" in {r.msg for r in caplog.records}


@pytest.mark.parametrize(
    ("inputs", "input_bytes", "pixels", "workers", "growing"),
    [
        (10_000, None, False, None, True),
        (2_000, 2_000 * 530_000, True, None, True),
        (100_000, None, False, None, False),  # processes cost under 5 % of such a job
        (30_000, 30_000 * 530_000, True, None, False),
        (None, None, False, None, False),
        (10_000, None, False, 2, False),  # processes asked for
    ],
    ids=["10000-headers", "2000-slices", "100000-headers", "30000-slices", "unknown", "asked"],
)
def test_which_jobs_grow(
    inputs: int | None,
    input_bytes: int | None,
    pixels: bool,
    workers: int | None,
    growing: bool,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(cluster, "default_workers", lambda: 2)
    assert grows(inputs, input_bytes, pixels=pixels, workers=workers) is growing


def test_a_moderate_job_works_at_once_and_grows_worker_processes(
    no_active_client: None, caplog: pytest.LogCaptureFixture, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A thread of this process is the first worker; a worker process for the other core
    joins it, and is gone once the job is over."""
    monkeypatch.setattr(cluster, "default_workers", lambda: 2)
    before = _children()
    with (
        caplog.at_level(logging.INFO, logger=cluster.__name__),
        connect_client(None, None, None, inputs=10_000) as client,
    ):
        first = set(client.run(os.getpid).values())
        planned = planned_workers(client)
        client.wait_for_workers(2, timeout=60)
        pid_of = client.run(os.getpid)
        started = _children() - before
        loaded = client.run(eval, LOADED.format(names={"pandas", "imagecodecs"}))
        frozen = client.run(eval, FROZEN)
    assert os.getpid() in first and planned == 2
    assert all(a.startswith("tcp://127.0.0.1:") for a in pid_of)
    (process,) = [a for a, pid in pid_of.items() if pid != os.getpid()]
    assert pid_of[process] in started
    assert _gone({pid_of[process]}), "a worker process outlived its cluster"
    assert loaded[process] == ["pandas"]  # a job without pixels: the process imported no codec
    assert frozen[process] > FROZEN_AT_LEAST  # the worker process's own imports
    assert "Running in this process while %d worker process%s join%s" in {
        r.msg for r in caplog.records
    }


def test_a_growing_cluster_writes_the_table_of_any_other(
    no_active_client: None, client: Client
) -> None:
    """Tasks run on both the thread and the worker process: the table is the same as
    that of the suite's two worker processes."""
    from distributed import get_task_stream

    from dicomflow.pipelines.plan import PartitionPolicy

    sources = [str(PYDICOM_TEST_FILES)]
    small = PartitionPolicy(min_files=5, max_files=5)
    with growing_client(2, pixels=False) as grown:
        grown.wait_for_workers(2, timeout=60)
        with get_task_stream(grown) as stream:
            here = dicomflow.scan(sources, client=grown, progress=False, policy=small)
            table = here.instances()
        workers = {task["worker"] for task in stream.data}
    assert len(workers) == 2  # the thread and the process each ran tasks
    elsewhere = dicomflow.scan(sources, client=client, progress=False).instances()
    assert table.num_rows > 50
    pd.testing.assert_frame_equal(_content(table), _content(elsewhere))


def test_workers_asked_for_are_processes_whatever_the_size(no_active_client: None) -> None:
    with connect_client(None, None, 2, inputs=1) as client:
        assert client.cluster.processes is True
        assert len(_addresses(client)) == 2


@pytest.fixture
def running_scheduler() -> Iterator[str]:
    """A scheduler someone else runs, reached over TCP."""
    with LocalCluster(
        n_workers=1, processes=False, protocol="tcp", dashboard_address=None
    ) as running:
        yield running.scheduler_address


def test_a_named_scheduler_is_used_whatever_the_size(
    no_active_client: None, running_scheduler: str
) -> None:
    with connect_client(None, running_scheduler, None, inputs=1) as client:
        assert client.scheduler.address == running_scheduler
        assert client.cluster is None  # nothing started here


def test_the_scheduler_in_the_environment_is_used(
    no_active_client: None, running_scheduler: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv(SCHEDULER_ENV, running_scheduler)
    with connect_client(None, None, None, inputs=1) as client:
        assert client.scheduler.address == running_scheduler


def test_a_given_or_active_client_is_used_and_left_open(running_scheduler: str) -> None:
    with Client(running_scheduler) as active:
        with connect_client(active, None, None, inputs=1) as given:
            assert given is active
        with connect_client(None, None, None, inputs=1) as found:
            assert found is active
        assert active.status == "running"


def _content(table: pa.Table) -> pd.DataFrame:
    frame = table.drop_columns(VOLATILE).to_pandas()
    return frame.sort_values("source").reset_index(drop=True)


def test_in_this_process_and_in_worker_processes_the_table_is_the_same(
    no_active_client: None, client: Client
) -> None:
    """``client`` is the suite's cluster of two worker processes."""
    sources = [str(PYDICOM_TEST_FILES)]
    files = [p for p in PYDICOM_TEST_FILES.rglob("*") if p.is_file()]
    with connect_client(None, None, None, inputs=len(files)) as here:
        assert _addresses(here)[0].startswith("inproc://")
        in_process = dicomflow.scan(sources, client=here, progress=False).instances()
    in_processes = dicomflow.scan(sources, client=client, progress=False).instances()
    assert in_process.num_rows > 50
    pd.testing.assert_frame_equal(_content(in_process), _content(in_processes))


def test_local_workers_start_with_the_malloc_setting_and_the_task_imports() -> None:
    """Ours come on top of the user's own preloads (here ``tabnanny``, which nothing else
    imports), as the malloc setting comes on top of their environment."""
    wanted = {"pandas", "dicomflow.pipelines.ingest", "dicomflow.pixels.imagecodecs_plugin"}
    assert wanted <= set(MODULES)
    with (
        dask.config.set({"distributed.worker.preload": ["tabnanny"]}),
        open_client(workers=1) as client,
    ):
        environment = client.run(_malloc_environment)
        loaded = client.run(eval, LOADED.format(names=wanted | {"tabnanny"}))
        frozen = client.run(eval, FROZEN)
        sampling = client.run(_samples_its_stack)
    assert list(environment.values()) == [WORKER_MALLOC_ENV]
    assert list(loaded.values()) == [sorted(wanted | {"tabnanny"})]
    assert all(count > FROZEN_AT_LEAST for count in frozen.values()), frozen
    assert list(sampling.values()) == [False], "the workers' statistical profiler is on"


def _samples_its_stack(dask_worker: Worker) -> bool:
    """Whether the worker runs Dask's statistical profiler (its sampling callback)."""
    return "profile" in dask_worker.periodic_callbacks


def _malloc_environment() -> dict[str, str | None]:
    return {name: os.environ.get(name) for name in WORKER_MALLOC_ENV}


def test_the_users_preload_arguments_stay_with_their_preloads() -> None:
    config = {"distributed.worker.preload": ["tabnanny"], "distributed.worker.preload-argv": []}
    with dask.config.set(config):
        assert worker_preloads(pixels=False) == (
            ["tabnanny", WORKER_IMPORTS],
            [[], [FREEZE_IMPORTS, "--headers-only"]],
        )
    config["distributed.worker.preload-argv"] = ["--verbose"]
    with dask.config.set(config):
        assert worker_preloads(pixels=True) == (
            ["tabnanny", WORKER_IMPORTS],
            [["--verbose"], [FREEZE_IMPORTS]],
        )


def test_our_preload_in_the_users_own_process_freezes_nothing() -> None:
    """A user may name our preload in Dask's configuration (as the connectors page shows
    for their own workers); workers in their own process then run it too, and must not
    freeze that process (a frozen object left in a reference cycle is never freed)."""
    assert gc.get_freeze_count() == 0
    try:
        with (
            dask.config.set({"distributed.worker.preload": [WORKER_IMPORTS]}),
            cluster.in_process_client() as client,
        ):
            ran = client.run(
                eval, "'dicomflow.pipelines.worker_imports' in __import__('sys').modules"
            )
        assert list(ran.values()) == [True]  # the preload did run here
        assert gc.get_freeze_count() == 0, "the preload froze the user's own process"
    finally:
        gc.unfreeze()


def test_a_worker_the_user_starts_with_our_preload_and_its_flag_freezes(
    running_scheduler: str,
) -> None:
    """The command the connectors page gives for one's own workers."""
    command = [
        sys.executable,
        "-m",
        "distributed.cli.dask_worker",
        running_scheduler,
        "--nthreads",
        "1",
        "--preload",
        WORKER_IMPORTS,
        FREEZE_IMPORTS,
    ]
    worker = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        with Client(running_scheduler) as client:
            before = set(_addresses(client))
            client.wait_for_workers(len(before) + 1, timeout=60)
            (address,) = set(_addresses(client)) - before
            frozen = client.run(eval, FROZEN, workers=[address])
        assert frozen[address] > FROZEN_AT_LEAST
    finally:
        worker.terminate()
        worker.wait(timeout=30)


def test_a_trim_threshold_the_user_configured_is_kept() -> None:
    """Ours replaces Dask's default (64 KiB), not a value of the user's."""
    assert _pre_spawn_environ()["MALLOC_TRIM_THRESHOLD_"] == str(16 * 2**20)
    environ = {"MALLOC_TRIM_THRESHOLD_": 131072, "OMP_NUM_THREADS": 1}
    with dask.config.set({"distributed.nanny.pre-spawn-environ": environ}):
        assert _pre_spawn_environ()["MALLOC_TRIM_THRESHOLD_"] == 131072
        assert _pre_spawn_environ()["OMP_NUM_THREADS"] == 1
