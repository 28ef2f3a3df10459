"""Where a pipeline runs: a given scheduler, or a local cluster of processes.

Order of precedence: an explicit ``scheduler`` address, then the
``DASK_SCHEDULER_ADDRESS`` environment variable, then a fresh ``LocalCluster``
with one single-threaded worker process per core (pydicom is pure Python, so
processes, not threads, give parallelism).
"""

from __future__ import annotations

import logging
import os
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager

import dask
from distributed import Client, LocalCluster

from dicomflow.errors import ConfigError

logger = logging.getLogger(__name__)

SCHEDULER_ENV = "DASK_SCHEDULER_ADDRESS"

# Dask starts workers with MALLOC_TRIM_THRESHOLD_ at 64 KiB, and glibc then also fixes its
# mmap threshold at 128 KiB: every decoded frame becomes a fresh mmap whose pages fault in
# on first touch. Measured on a 512² CT slice, decode-and-write cost 2.4 to 2.8 ms instead
# of 1.6 to 2.0. Buffers up to 16 MiB come from the heap again; larger ones are still
# mapped and returned to the system when freed. The 64 KiB trim threshold alone still
# handed the heap's top back after every slice (1.58 ms a slice in one process, against
# 1.33 with it at 4 MiB or more), so it goes to 16 MiB as well: a worker keeps at most
# 16 MiB of freed heap. A value the user configured is kept.
WORKER_MALLOC_ENV = {
    "MALLOC_MMAP_THRESHOLD_": str(16 * 2**20),
    "MALLOC_TRIM_THRESHOLD_": str(16 * 2**20),
}


# Imported by each worker as it starts, so the first run's tasks do not pay for imports.
WORKER_IMPORTS = "dicomflow.pipelines.worker_imports"


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


def default_workers() -> int:
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1


@contextmanager
def open_client(scheduler: str | None = None, workers: int | None = None) -> Iterator[Client]:
    """Yield a connected :class:`distributed.Client`, closing what this call started."""
    address = scheduler or os.environ.get(SCHEDULER_ENV)
    if address:
        if workers is not None:
            logger.warning("--workers is ignored when connecting to an existing scheduler")
        try:
            client = Client(address, timeout="30s")
        except (OSError, TimeoutError) as exc:
            raise ConfigError(f"cannot reach the Dask scheduler at {address}") from exc
        with client:
            logger.info("Dask dashboard: %s", client.dashboard_link)
            yield client
        return
    n_workers = workers or default_workers()
    if n_workers < 1:
        raise ConfigError("--workers must be at least 1")
    with (
        dask.config.set({"distributed.nanny.pre-spawn-environ": _pre_spawn_environ()}),
        LocalCluster(
            n_workers=n_workers,
            threads_per_worker=1,
            processes=True,
            dashboard_address=":0" if _has_dashboard() else None,
            local_directory=tempfile.gettempdir(),
            silence_logs=logging.ERROR,
            preload=[*dask.config.get("distributed.worker.preload", []), WORKER_IMPORTS],
        ) as cluster,
        Client(cluster) as client,
    ):
        if _has_dashboard():
            logger.info("Dask dashboard: %s", client.dashboard_link)
        yield client


def _has_dashboard() -> bool:
    """The dashboard needs bokeh (the ``diagnostics`` extra of dask)."""
    try:
        import bokeh  # noqa: F401
    except ImportError:
        return False
    return True
