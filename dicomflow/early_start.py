"""The command's early worker, from the command's side: started before any heavy import.

A command spends its first 0.7 s importing (Dask, pyarrow, pydicom, the spec models)
and listing its inputs before it knows how large its job is; a worker process then
takes another 1.2-1.9 s to start and join a growing cluster
(:func:`dicomflow.pipelines.cluster.growing_client`). For a job of a few seconds that is
most of the job. So ``dicomflow scan`` and ``ingest`` start one worker process
(:mod:`dicomflow.pipelines.early_worker`) before their own imports (:func:`start`): it
imports what tasks need on another core while the command imports, and waits for a
scheduler at a loopback address chosen here. If the job grows a cluster, its
scheduler listens there (:func:`claim`) and the worker joins as soon as both are
ready; otherwise the worker is stopped (:func:`dismiss`). It also leaves when no
scheduler comes, and when the command's process ends, however it ends (its standard
input, a pipe from the command, closes).

Only the standard library is imported here: the point is to start before the rest.
"""

from __future__ import annotations

import atexit
import contextlib
import os
import signal
import socket
import subprocess
import sys
from dataclasses import dataclass

ENV = "DICOMFLOW_EARLY_WORKER"  # "<address> <pid>" of the command's early worker
WORKER_MODULE = "dicomflow.pipelines.early_worker"

# Dask starts workers with MALLOC_TRIM_THRESHOLD_ at 64 KiB (see
# dicomflow.pipelines.cluster, where the reasons are measured): every worker process of
# ours gets these instead.
WORKER_MALLOC_ENV = {
    "MALLOC_MMAP_THRESHOLD_": str(16 * 2**20),
    "MALLOC_TRIM_THRESHOLD_": str(16 * 2**20),
}


@dataclass(frozen=True)
class EarlyWorker:
    """The command's early worker: where it waits for a scheduler, and its process id."""

    address: str
    pid: int

    @property
    def port(self) -> int:
        return int(self.address.rsplit(":", 1)[1])


def start(*, pixels: bool) -> EarlyWorker:
    """Start the early worker (importing the pixel codecs too when ``pixels``) and note it
    in this process's environment (:data:`ENV`) for the job to find."""
    address = f"tcp://127.0.0.1:{_free_port()}"
    quiet = {"DASK_LOGGING__DISTRIBUTED": "error"}  # as Nanny workers' silence_logs
    environment = {**WORKER_MALLOC_ENV, **quiet, **os.environ}  # the user's settings win
    command = [sys.executable, "-m", WORKER_MODULE, address, "pixels" if pixels else "headers"]
    # our own interpreter and module, and an address we made: no untrusted input
    process = subprocess.Popen(command, stdin=subprocess.PIPE, env=environment)  # noqa: S603
    atexit.register(_stop, process)
    worker = EarlyWorker(address, process.pid)
    os.environ[ENV] = f"{worker.address} {worker.pid}"
    return worker


def claim() -> EarlyWorker | None:
    """The command's early worker, for the cluster that will take it; None if there is
    none (a Python API call, or a command that started none). Claimed once."""
    noted = os.environ.pop(ENV, "")
    address, _, pid = noted.partition(" ")
    if not address or not pid.isdigit():
        return None
    return EarlyWorker(address, int(pid))


def dismiss(worker: EarlyWorker | None = None) -> None:
    """Stop the early worker (``worker``, else the one noted for this process): the job
    runs without it."""
    worker = worker or claim()
    if worker is None:
        return
    with contextlib.suppress(OSError):  # gone already
        os.kill(worker.pid, signal.SIGTERM)


def _free_port() -> int:
    """A loopback port free now (the scheduler binds it about a second later)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
        probe.bind(("127.0.0.1", 0))
        port: int = probe.getsockname()[1]
        return port


def _stop(process: subprocess.Popen[bytes]) -> None:
    """At the command's exit: close the worker's standard input (it leaves on its own)
    and, if it is still there, ask it to stop; never wait for it."""
    with contextlib.suppress(OSError):
        if process.stdin is not None:
            process.stdin.close()
        if process.poll() is None:
            process.terminate()
