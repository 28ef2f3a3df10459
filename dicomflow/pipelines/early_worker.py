"""The command's early worker, in its own process (see :mod:`dicomflow.early_start`).

``python -m dicomflow.pipelines.early_worker ADDRESS pixels|headers``: import what tasks
need (the preloads of every local worker: the user's, then :mod:`.worker_imports`),
then serve the scheduler at ``ADDRESS`` once it is up, until the cluster closes it. It leaves
when no scheduler came within :data:`WAIT_SECONDS`, when it is dismissed (SIGTERM),
and when the command's process ends (its standard input closes).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import signal
import sys
import tempfile
import threading

WAIT_SECONDS = 60  # an early worker that found no scheduler by then leaves


def _leave_when_the_command_ends() -> None:
    """Read standard input until it closes (the command ended), then exit."""
    try:
        while sys.stdin.buffer.read(1):
            pass
    finally:
        os._exit(0)


def _run(address: str, pixels: bool) -> None:
    import dask
    from distributed import Worker
    from distributed.system import MEMORY_LIMIT

    from dicomflow.logs import exit_flushed, route_library_logs
    from dicomflow.pipelines.cluster import worker_preloads

    route_library_logs()
    logging.getLogger("distributed").setLevel(logging.ERROR)
    preload, preload_argv = worker_preloads(pixels)  # the user's preloads, then ours

    async def serve() -> None:
        worker = Worker(
            address,
            nthreads=1,
            host="127.0.0.1",
            death_timeout=WAIT_SECONDS,
            memory_limit=MEMORY_LIMIT,
            local_directory=tempfile.gettempdir(),
            preload=preload,
            preload_argv=preload_argv,
        )
        async with worker:
            await worker.finished()

    with (
        dask.config.set({"distributed.worker.profile.enabled": False}),
        contextlib.suppress(OSError, TimeoutError),  # no scheduler came: not needed
    ):
        asyncio.run(serve())
    exit_flushed(0)


def main(argv: list[str]) -> None:
    """Serve as the command's early worker (arguments: ADDRESS pixels|headers)."""
    signal.signal(signal.SIGTERM, lambda *_: os._exit(0))  # dismissed: nothing to keep
    threading.Thread(target=_leave_when_the_command_ends, daemon=True).start()
    address, kind = argv
    _run(address, pixels=kind == "pixels")


if __name__ == "__main__":
    main(sys.argv[1:])
