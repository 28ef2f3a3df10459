"""Run by each worker process of a local cluster as it starts and stops (Dask's
``preload``).

As it starts, a worker imports what the tasks will need. Without it a fresh worker
imports the task modules, pydicom's pixel backends and pandas (which pyarrow loads on
its first ``pa.array`` call) inside the first tasks of the first run, on the run's
critical path: the series commit alone waited 0.3 s for pandas. Workers import in
parallel while the cluster starts. ``--headers-only`` leaves out the pixel codecs, for
a job that reads no pixels: its workers start 0.1 s sooner. The retrieval tasks'
modules are left to the first retrieval task, which waits on its peer anyway: the
worker of a job over files joins 0.1 s sooner.

In the worker processes dicomflow starts (told so by ``--freeze-imports``), what the
worker holds once imported is frozen out of the cyclic garbage collector's sight
(:func:`gc.freeze`): a full collection walked its 130,000 objects,
60 ms a time, on every worker at once, in every other 400-slice run. Frozen, it takes
3 ms, and the median 400-slice RLE run on a running cluster went from 0.612 s to 0.550 s
(20 runs a side, interleaved).

As it stops, a worker that was closed cleanly leaves without Python's own shutdown
(freeing every module and object it holds): the local cluster's ``close`` waits for its
processes to end, and that shutdown took 0.2 s of the command's 2.5 s for one file.
"""

from __future__ import annotations

import atexit
import gc
import importlib
import logging
import multiprocessing
import threading

import click

from dicomflow.logs import exit_flushed, route_library_logs

logger = logging.getLogger(__name__)

HEADER_MODULES = (
    "pandas",  # pyarrow imports it on first use when installed
    "pyarrow.parquet",
    "dicomflow.pipelines.pipeline",
    "dicomflow.pipelines.anonymize",
)  # not the retrieval tasks' (pynetdicom, 0.1 s): a retrieval waits on its peer anyway
PIXEL_MODULES = (
    "dicomflow.pipelines.ingest",
    "dicomflow.pixels.imagecodecs_plugin",
    "pydicom.pixels.decoders.pylibjpeg",
    "pydicom.pixels.decoders.gdcm",
    "pydicom.pixels.decoders.rle",
    "imagecodecs",
)
MODULES = HEADER_MODULES + PIXEL_MODULES

_closed = threading.Event()  # the worker was closed (not killed, nor failing to start)


@click.command()
@click.option("--headers-only", is_flag=True, help="Leave out the pixel codecs.")
@click.option(
    "--freeze-imports", is_flag=True, help="Leave what was imported out of garbage collections."
)
def dask_setup(worker: object, headers_only: bool, freeze_imports: bool) -> None:
    """Import :data:`MODULES` (:data:`HEADER_MODULES` with ``--headers-only``); one that
    is missing or fails to import is skipped (the task that needs it reports the
    problem), never the worker's start. In a worker process, arrange the quick exit.
    With ``--freeze-imports`` (only in the worker processes dicomflow starts), freeze
    what the worker holds."""
    for name in HEADER_MODULES if headers_only else MODULES:
        try:
            importlib.import_module(name)
        except Exception as exc:  # a preload must never stop the worker
            logger.debug("worker preload: %s not imported (%s)", name, type(exc).__name__)
    if multiprocessing.parent_process() is not None:  # never in the user's own process
        route_library_logs()  # codecs' messages at DEBUG, as in the client's process
        atexit.register(_exit_closed_worker)
    if freeze_imports:  # they live as long as the process; a frozen cycle is never freed
        gc.freeze()


def dask_teardown(worker: object) -> None:
    """Called as the worker begins to close: its process may then exit quickly."""
    _closed.set()


def _exit_closed_worker() -> None:
    """At exit of a worker process that was closed cleanly: flush the logs and the
    standard streams, and end the process without Python's shutdown. Registered after
    Dask's and multiprocessing's own exit handlers, so it runs before them; by then the
    worker has told the scheduler and the nanny that it left, its tasks' outputs are
    committed and its queues to the nanny are flushed."""
    if _closed.is_set():
        exit_flushed(0)
