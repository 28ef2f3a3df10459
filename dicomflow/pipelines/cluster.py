"""Where a pipeline runs: the caller's client, a named scheduler, this process, or a
local cluster of processes.

:func:`connect_client` chooses, in this order:

1. the client the caller passes;
2. a client already active in this process (``distributed.get_client``), unless a
   scheduler is named;
3. the scheduler named by ``scheduler``, else by ``DASK_SCHEDULER_ADDRESS``;
4. a cluster inside this process (:func:`in_process_client`) when the job is small;
5. for a job of moderate size, a cluster that works at once (:func:`growing_client`):
   a worker thread in this process takes tasks while worker processes for the other
   cores start beside it and join;
6. a fresh ``LocalCluster`` of single-threaded worker processes, one per core
   (:func:`open_client`): pydicom is pure Python, so processes, not threads, give
   parallelism to parsing.

Small means: the work the job is estimated to take on one core is over before a
worker process could join it (:func:`runs_in_process`): on 2 cores up to about 2,000
header-only inputs, or 550 slices with pixels; a one-file scan takes 1.1 s instead of
2.5 s. Moderate means: up to :data:`GROWING_MAX_SECONDS` of such work. Each constant
below says where it was measured (``benchmarks/startup.py`` measures them again).

An in-process cluster is a real ``distributed`` scheduler and workers, so futures,
``as_completed`` and Dask semaphores work as on any cluster. Its workers are threads
in this process: a crash in native code (a codec) takes the command down with it,
where a worker process would be restarted and its task retried. That is one more
reason the in-process path is kept to small jobs, and the growing one to jobs of at
most :data:`GROWING_MAX_SECONDS` of work: past that, starting every worker as a
process costs the job under 5 %.
"""

from __future__ import annotations

import logging
import os
import tempfile
from collections.abc import Iterator
from contextlib import AbstractContextManager, contextmanager, nullcontext

import dask
from distributed import Client, LocalCluster
from distributed.comm.addressing import get_address_host_port

from dicomflow.early_start import WORKER_MALLOC_ENV, EarlyWorker, claim, dismiss
from dicomflow.errors import ConfigError

logger = logging.getLogger(__name__)

SCHEDULER_ENV = "DASK_SCHEDULER_ADDRESS"

# One core's work per input, measured in this process on 512x512 CT slices (2 cores,
# benchmarks/startup.py): reading a header, flattening it and committing its row,
# 0.57 ms (5,000 files in 2.87 s); decoding the pixels and writing them to Zarr besides,
# 2.2 ms a slice in all (800 uncompressed slices in 1.71 s, 800 RLE slices in 1.9 s).
# A multi-frame file is one input but many frames, so pixel work is also counted by the
# byte: 1.6 ms of pixel work for a 0.52 MB uncompressed slice. Decoding compressed
# frames costs more (JPEG 2000: 13 ms a slice), but it releases the GIL, so an
# in-process job with pixels gets one worker thread per core: 300 JPEG 2000 slices took
# 2.6 s on two in-process workers, as on two worker processes, and 4.7 s on one (800
# uncompressed slices, where parsing holds the GIL, 1.9 s on two and 1.7 s on one).
SECONDS_PER_INPUT = 0.6e-3
SECONDS_PER_PIXEL_INPUT = 1.6e-3
SECONDS_PER_PIXEL_BYTE = 3e-9

# What a local cluster of worker processes costs a job over an in-process one (2 cores,
# benchmarks/startup.py): its workers start in 1.15 s when they import what a header job
# needs, 1.2 s with the pixel codecs too, where threads start in 0.02 s; they stop in
# 0.02 s either way (worker_imports.dask_teardown). And this process imports, to read
# the lake back for the run report, what in-process tasks had imported already (pandas,
# through pyarrow.dataset): 0.25 s. A scan of 5,000 files is where the two meet (3.7 s
# each, whole command).
PROCESS_CLUSTER_SECONDS = 1.4
PROCESS_CLUSTER_PIXEL_SECONDS = 1.45

# A job of up to this much work on one core (about 22,000 slices with pixels, 80,000
# headers) runs on a growing cluster; a larger one starts worker processes only.
# Measured on 2 cores, a scan of 5,000 files (whole command): 4.7-4.8 s growing, against
# 5.9 s on two worker processes; the first worker process joined after about 1.2 s.
# Starting one process per core beside the thread (and retiring the thread once they
# joined) took 5.8 s: two processes starting at once slow the thread down.
GROWING_MAX_SECONDS = 50.0
# How long a worker process takes to join a running scheduler (2 cores, importing what
# tasks need): 1.15-1.85 s. A job shorter than that on one core is over before a
# process could take a share of it.
PROCESS_JOIN_SECONDS = 1.2
# The command's early worker (dicomflow.early_start) starts with the command and joins
# about 0.3 s after the job begins (1.1 s after the command, whose imports and listing
# take 0.8 s): a job of more than 0.5 s on one core is then done sooner on both cores.
EARLY_JOIN_SECONDS = 0.5

# Dask starts workers with MALLOC_TRIM_THRESHOLD_ at 64 KiB, and glibc then also fixes its
# mmap threshold at 128 KiB: every decoded frame becomes a fresh mmap whose pages fault in
# on first touch. Measured on a 512² CT slice, decode-and-write cost 2.4 to 2.8 ms instead
# of 1.6 to 2.0. Buffers up to 16 MiB come from the heap again; larger ones are still
# mapped and returned to the system when freed. The 64 KiB trim threshold alone still
# handed the heap's top back after every slice (1.58 ms a slice in one process, against
# 1.33 with it at 4 MiB or more), so it goes to 16 MiB as well: a worker keeps at most
# 16 MiB of freed heap. A value the user configured is kept.
# (WORKER_MALLOC_ENV, in dicomflow.early_start: the early worker starts before Dask is imported.)


# Imported by each worker as it starts, so the first run's tasks do not pay for imports.
WORKER_IMPORTS = "dicomflow.pipelines.worker_imports"
FREEZE_IMPORTS = "--freeze-imports"  # its argument in the worker processes we start


def _pre_spawn_environ() -> dict[str, object]:
    """Dask's own pre-spawn environment for worker processes, plus ours (the user's wins
    over ours, ours over Dask's default trim threshold)."""
    key = "distributed.nanny.pre-spawn-environ"
    configured = dict(dask.config.get(key, default={}) or {})
    shipped = dask.config.get(key, default={}, config=dask.config.merge(*dask.config.defaults))
    trim = "MALLOC_TRIM_THRESHOLD_"
    if trim in configured and str(configured[trim]) == str((shipped or {}).get(trim)):
        del configured[trim]  # Dask's own default, not the user's choice
    return {**WORKER_MALLOC_ENV, **configured}


def _local_worker_settings() -> dict[str, object]:
    """Dask settings for the worker processes of our local clusters: no statistical
    profiler (it samples the task's stack every 10 ms: 6 % of a 400-slice run) and the
    pre-spawn environment (:func:`_pre_spawn_environ`)."""
    return {
        "distributed.worker.profile.enabled": False,
        "distributed.nanny.pre-spawn-environ": _pre_spawn_environ(),
    }


def worker_preloads(pixels: bool) -> tuple[list[str], list[list[str]]]:
    """The user's worker preloads with ours last, and each one's arguments (Dask takes
    one list of arguments for all preloads, or one list per preload). Ours is told to
    freeze what the worker imported (``--freeze-imports``: see :mod:`.worker_imports`):
    these are the worker processes dicomflow starts itself."""
    preload = dask.config.get("distributed.worker.preload", None) or []
    preload = [preload] if isinstance(preload, str) else list(preload)
    argv = dask.config.get("distributed.worker.preload-argv", None) or []
    if argv and isinstance(argv[0], str):
        per_preload = [list(argv)] * len(preload)
    elif argv:
        per_preload = [list(item) for item in argv]
    else:
        per_preload = [[] for _ in preload]
    ours = [FREEZE_IMPORTS] + ([] if pixels else ["--headers-only"])
    return [*preload, WORKER_IMPORTS], [*per_preload, ours]


def default_workers() -> int:
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1


def estimated_seconds(
    inputs: int, input_bytes: int | None = None, *, pixels: bool, decode_seconds: float = 0.0
) -> float:
    """The work of a job on one core, from its inputs and their bytes (see the constants)
    and, with pixels, what decoding an input costs beyond an uncompressed one
    (``decode_seconds``, :mod:`.job_size`)."""
    seconds = inputs * SECONDS_PER_INPUT
    if pixels:
        by_bytes = (input_bytes or 0) * SECONDS_PER_PIXEL_BYTE
        seconds += max(inputs * SECONDS_PER_PIXEL_INPUT, by_bytes) + inputs * decode_seconds
    return seconds


def runs_in_process(
    inputs: int | None,
    input_bytes: int | None = None,
    *,
    pixels: bool = False,
    workers: int | None = None,
    decode_seconds: float = 0.0,
    early: bool = False,
) -> bool:
    """Whether a job is small enough to run in this process alone: its inputs are known,
    no more than one worker was asked for, and worker processes would not help.

    Where a growing cluster can be used (no worker count asked, several cores), that is
    a job done before a worker process could join it (:data:`PROCESS_JOIN_SECONDS`, or
    :data:`EARLY_JOIN_SECONDS` when the command's ``early`` worker is waiting).
    Otherwise: with ``n`` cores, processes take a job of ``w`` seconds on one core down
    to ``w / n`` at best, so they pay when ``w * (1 - 1/n)`` exceeds their start and
    stop. ``n`` is taken as at least 2: on one core they never pay, but they still keep
    a codec crash or a leak away from the command, which matters for a big job.
    """
    if inputs is None or (workers is not None and workers > 1):
        return False
    seconds = estimated_seconds(inputs, input_bytes, pixels=pixels, decode_seconds=decode_seconds)
    if workers is None and default_workers() >= 2:  # a growing cluster costs no wait
        return seconds <= (EARLY_JOIN_SECONDS if early else PROCESS_JOIN_SECONDS)
    cores = max(2, default_workers())
    saved = seconds * (1 - 1 / cores)
    return saved <= (PROCESS_CLUSTER_PIXEL_SECONDS if pixels else PROCESS_CLUSTER_SECONDS)


def connect_client(
    client: Client | None,
    scheduler: str | None,
    workers: int | None,
    *,
    inputs: int | None = None,
    input_bytes: int | None = None,
    pixels: bool = False,
    decode_seconds: float = 0.0,
) -> AbstractContextManager[Client]:
    """A context yielding the client a job runs on, closing only what it started.

    ``client`` if given; else an already-active client when no scheduler is named; else
    the scheduler named by ``scheduler`` or ``DASK_SCHEDULER_ADDRESS``; else a cluster in
    this process when the job is small (``inputs`` and ``input_bytes`` known, see
    :func:`runs_in_process`); else a growing cluster when it is of moderate size
    (:func:`grows`); else a local cluster of ``workers`` processes (one per core by
    default). ``pixels`` says whether the job decodes images, ``decode_seconds`` what
    decoding one of its inputs costs beyond an uncompressed one.
    """
    early = claim()  # the command's early worker: a growing cluster takes it, else it stops
    try:
        if client is not None:
            logger.info("Running on the client given")
            return nullcontext(client)
        if scheduler is None:
            active = _current_client()
            if active is not None:
                logger.info("Running on the active Dask client")
                return nullcontext(active)
        if scheduler or os.environ.get(SCHEDULER_ENV):
            return open_client(scheduler, workers, pixels=pixels)
        if runs_in_process(
            inputs,
            input_bytes,
            pixels=pixels,
            workers=workers,
            decode_seconds=decode_seconds,
            early=early is not None,
        ):
            # One task thread: pydicom's and our per-call warning filters
            # (warnings.catch_warnings) are process-wide, and tasks in two threads undo
            # each other's; worker processes give the parallelism when a job is larger.
            threads = 1
            logger.info(
                "Running in this process (%d input%s, %d worker thread%s)",
                inputs,
                "" if inputs == 1 else "s",
                threads,
                "" if threads == 1 else "s",
            )
            return in_process_client(threads)
        if grows(
            inputs, input_bytes, pixels=pixels, workers=workers, decode_seconds=decode_seconds
        ):
            growing = growing_client(default_workers(), pixels=pixels, early=early)
            early = None  # the growing cluster's now
            return growing
        return open_client(None, workers, pixels=pixels)
    finally:
        if early is not None:
            dismiss(early)


def grows(
    inputs: int | None,
    input_bytes: int | None = None,
    *,
    pixels: bool = False,
    workers: int | None = None,
    decode_seconds: float = 0.0,
) -> bool:
    """Whether a job too large for this process alone runs on a growing cluster: its size
    is known, no worker count was asked for, there are cores to grow onto, and its work
    is at most :data:`GROWING_MAX_SECONDS` on one core."""
    if inputs is None or workers is not None or default_workers() < 2:
        return False
    seconds = estimated_seconds(inputs, input_bytes, pixels=pixels, decode_seconds=decode_seconds)
    return seconds <= GROWING_MAX_SECONDS


def planned_workers(client: Client) -> int:
    """How many workers the client's cluster has or will have once every worker it is
    starting has joined (a growing cluster plans its processes from the start)."""
    joined = len(client.scheduler_info().get("workers", {}))
    spec = getattr(client.cluster, "worker_spec", None) or {}
    planned = getattr(client.cluster, PLANNED_WORKERS, 0)  # a growing cluster's, early worker too
    return max(1, joined, len(spec), planned)


PLANNED_WORKERS = "dicomflow_planned_workers"  # attribute of a growing cluster


def _current_client() -> Client | None:
    from distributed import get_client

    try:
        return get_client()
    except ValueError:
        return None


@contextmanager
def in_process_client(workers: int = 1) -> Iterator[Client]:
    """Yield a client of a cluster inside this process: a scheduler and ``workers``
    single-threaded workers, all threads, started and stopped in about 0.02 s.

    Workers' statistical profiler is off: it samples the stacks of every thread every
    10 ms, and here those are this process's threads (3 % of a 5,000-file scan). As the
    workers share this process, each one's memory limit is the machine's, not a share.
    """
    from distributed.system import MEMORY_LIMIT

    with (
        dask.config.set({"distributed.worker.profile.enabled": False}),
        LocalCluster(
            n_workers=workers,
            threads_per_worker=1,
            processes=False,
            dashboard_address=None,
            memory_limit=MEMORY_LIMIT,
            local_directory=tempfile.gettempdir(),
            silence_logs=logging.ERROR,
        ) as cluster,
        Client(cluster) as client,
    ):
        yield client


@contextmanager
def growing_client(
    workers: int, *, pixels: bool = True, early: EarlyWorker | None = None
) -> Iterator[Client]:
    """Yield a client of a cluster that works from the first moment: its scheduler and one
    single-threaded worker run in this process, as in :func:`in_process_client`, and
    ``workers - 1`` single-threaded worker processes join it and take their share of
    the tasks as they come (Dask's queued tasks go to whichever worker is free). The job
    does not wait about 1.2 s for processes to start; the thread's one core does the
    first part of it meanwhile.

    The command's ``early`` worker (:mod:`dicomflow.early_start`), started with the command and
    waiting at a loopback address, is one of those processes: the scheduler listens
    there. The others start now (Nanny processes). The scheduler listens on loopback
    TCP, which worker processes can reach. Closing it stops the processes; one that is
    still starting is waited for (at most the time it takes to start), so a job that
    ends before any process joined pays what a process cluster would have.
    """
    from distributed import Nanny
    from distributed.system import MEMORY_LIMIT

    preload, preload_argv = worker_preloads(pixels)
    logger.info(
        "Running in this process while %d worker process%s join%s",
        workers - 1,
        "" if workers == 2 else "es",
        "s" if workers == 2 else "",
    )
    settings = _local_worker_settings()
    options = {
        "n_workers": 1,
        "threads_per_worker": 1,
        "processes": False,
        "protocol": "tcp://",
        "host": "127.0.0.1",
        "dashboard_address": None,
        "memory_limit": MEMORY_LIMIT,
        "local_directory": tempfile.gettempdir(),
        "silence_logs": logging.ERROR,
    }
    with dask.config.set(settings):
        cluster = _listening_at(early, options)
        with cluster, Client(cluster) as client:
            setattr(cluster, PLANNED_WORKERS, workers)
            started = 1 + (early is not None and cluster.scheduler_address == early.address)
            if workers > started:
                cluster.new_spec = {
                    "cls": Nanny,
                    "options": {
                        "nthreads": 1,
                        "host": "127.0.0.1",
                        "preload": preload,
                        "preload_argv": preload_argv,
                        "local_directory": tempfile.gettempdir(),
                        "silence_logs": logging.ERROR,
                    },
                }
                # the thread plus the Nanny processes (the early worker is not in the spec)
                cluster.scale(1 + workers - started)  # returns at once: they start on its loop
            yield client


def _listening_at(early: EarlyWorker | None, options: dict[str, object]) -> LocalCluster:
    """The growing cluster's in-process part, its scheduler at the ``early`` worker's
    address when that port is still free (else anywhere, and the early worker leaves)."""
    if early is not None:
        try:
            return LocalCluster(scheduler_port=early.port, **options)
        except (OSError, RuntimeError):
            logger.debug("the early worker's port was taken: it is not used")
            dismiss(early)
    return LocalCluster(**options)


@contextmanager
def open_client(
    scheduler: str | None = None, workers: int | None = None, *, pixels: bool = True
) -> Iterator[Client]:
    """Yield a connected :class:`distributed.Client`, closing what this call started: the
    scheduler at ``scheduler`` (else ``DASK_SCHEDULER_ADDRESS``), else a local cluster of
    ``workers`` processes. Its workers import the pixel codecs as they start unless
    ``pixels`` is false. Their statistical profiler is off, as in the other local
    clusters: sampling the task's stack every 10 ms took the median 400-slice RLE run
    from 0.480 s to 0.512 s (12 runs a side)."""
    address = scheduler or os.environ.get(SCHEDULER_ENV)
    if address:
        if workers is not None:
            logger.warning("--workers is ignored when connecting to an existing scheduler")
        check_scheduler_address(address)
        try:
            client = Client(address, timeout="30s")
        except (OSError, TimeoutError) as exc:
            raise ConfigError(f"cannot reach the Dask scheduler at {address}") from exc
        with client:
            logger.info("Running on the Dask scheduler at %s", client.scheduler.address)
            logger.info("Dask dashboard: %s", client.dashboard_link)
            yield client
        return
    n_workers = workers or default_workers()
    if n_workers < 1:
        raise ConfigError("--workers must be at least 1")
    preload, preload_argv = worker_preloads(pixels)
    logger.info(
        "Starting a local cluster of %d worker process%s",
        n_workers,
        "" if n_workers == 1 else "es",
    )
    with (
        dask.config.set(_local_worker_settings()),
        LocalCluster(
            n_workers=n_workers,
            threads_per_worker=1,
            processes=True,
            dashboard_address=":0" if _has_dashboard() else None,
            local_directory=tempfile.gettempdir(),
            silence_logs=logging.ERROR,
            preload=preload,
            preload_argv=preload_argv,
        ) as cluster,
        Client(cluster) as client,
    ):
        if _has_dashboard():
            logger.info("Dask dashboard: %s", client.dashboard_link)
        yield client


def check_scheduler_address(address: str) -> None:
    """Raise :class:`ConfigError` unless ``address`` names a host and port under a protocol
    Dask knows. Checked before any client is built: Dask's own errors for these (a
    ValueError from inside ``Client``) are a traceback, and leave a half-started client."""
    try:
        get_address_host_port(address)
    except ValueError as exc:
        raise ConfigError(
            f"{address!r} is not a Dask scheduler address (say tcp://host:8786)"
        ) from exc


def _has_dashboard() -> bool:
    """The dashboard needs bokeh (the ``diagnostics`` extra of dask)."""
    try:
        import bokeh  # noqa: F401
    except ImportError:
        return False
    return True
