"""DCMTK peers for tests: dcmqrscp (a query/retrieve archive), storescp and storescu.

Every DCMTK process runs with ``TCP_NODELAY=1`` (DCMTK otherwise stalls on
loopback) and listens on 127.0.0.1 ports from :func:`free_port`.
"""

from __future__ import annotations

import shutil
import socket
import subprocess
import time
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

from tests.peers.orthanc import free_port

DCMTK_ENV = {"TCP_NODELAY": "1", "PATH": "/usr/bin:/bin"}


def dcmtk_binary(name: str) -> str | None:
    return shutil.which(name)


def loopback_name() -> str:
    """How DCMTK names a 127.0.0.1 peer: it matches peers by host name, never by address."""
    return socket.gethostbyaddr("127.0.0.1")[0]


def wait_for_port(
    port: int, process: subprocess.Popen[bytes], what: str, *, timeout: float = 10
) -> None:
    """Wait until ``process`` accepts connections on ``port`` (``timeout`` seconds at most)."""
    deadline = time.monotonic() + timeout
    while True:
        if process.poll() is not None:
            raise RuntimeError(f"{what} exited at start-up")
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=1):
                return
        except OSError:
            if time.monotonic() > deadline:
                raise RuntimeError(f"{what} did not listen within {timeout:g} s") from None
            time.sleep(0.05)


@contextmanager
def running_process(
    command: Sequence[str],
    port: int,
    log: Path,
    what: str,
    *,
    env: Mapping[str, str] | None = DCMTK_ENV,
    timeout: float = 10,
) -> Iterator[subprocess.Popen[bytes]]:
    """Start ``command`` (output appended to ``log``), return once it listens on
    ``port``, and stop it afterwards; ``env=None`` inherits this process's."""
    log.parent.mkdir(parents=True, exist_ok=True)
    with log.open("ab") as out:
        process = subprocess.Popen(command, stdout=out, stderr=subprocess.STDOUT, env=env)
        try:
            wait_for_port(port, process, what, timeout=timeout)
            yield process
        finally:
            process.terminate()
            try:
                process.wait(timeout=10)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait(timeout=10)


@dataclass(frozen=True)
class Dcmqrscp:
    """A running dcmqrscp: its AE title, port and storage area."""

    aet: str
    port: int
    storage: Path

    @property
    def url(self) -> str:
        return f"dimse://{self.aet}@127.0.0.1:{self.port}"


def dcmqrscp_config(aet: str, port: int, storage: Path, peers: Mapping[str, int]) -> str:
    """A dcmqrscp.cfg: one read/write storage area for ``aet``, open only to ``peers``
    (AE title → the port it listens on, which is where C-MOVE sends to it)."""
    host = loopback_name()
    hosts = [f"peer{n} = ({title}, {host}, {p})" for n, (title, p) in enumerate(peers.items())]
    group = ", ".join(f"peer{n}" for n in range(len(peers)))
    return "\n".join(
        [
            f"NetworkTCPPort = {port}",
            "MaxPDUSize = 16384",
            "MaxAssociations = 16",
            "HostTable BEGIN",
            *hosts,
            f"peers = {group}",
            "HostTable END",
            "VendorTable BEGIN",
            "VendorTable END",
            "AETable BEGIN",
            f"{aet} {storage} RW (100, 1024mb) peers",
            "AETable END",
            "",
        ]
    )


@contextmanager
def running_dcmqrscp(
    workdir: Path, *, peers: Mapping[str, int], aet: str = "QRSCP"
) -> Iterator[Dcmqrscp]:
    """Start dcmqrscp (one process per association, its default) with a fresh storage area."""
    storage = workdir / "storage"
    storage.mkdir(parents=True, exist_ok=True)
    port = free_port()
    config = workdir / "dcmqrscp.cfg"
    config.write_text(dcmqrscp_config(aet, port, storage, peers))
    command = ["dcmqrscp", "-c", str(config), str(port)]
    with running_process(command, port, workdir / "dcmqrscp.log", "dcmqrscp"):
        yield Dcmqrscp(aet, port, storage)


@contextmanager
def running_storescp(
    out: Path, *, aet: str = "STORESCP", accept_all: bool = False
) -> Iterator[int]:
    """Start storescp writing what it receives to ``out``; yield its port.

    By default it accepts only uncompressed syntaxes; ``accept_all`` adds every
    syntax DCMTK knows, so a sender never needs to transcode.
    """
    out.mkdir(parents=True, exist_ok=True)
    port = free_port()
    command = ["storescp", "-aet", aet, "-od", str(out), *(["+xa"] if accept_all else [])]
    with running_process([*command, str(port)], port, out.parent / "storescp.log", "storescp"):
        yield port


def storescu(
    port: int, paths: Sequence[Path], *, called_aet: str, calling_aet: str = "LOADER"
) -> None:
    """Send ``paths`` with DCMTK's storescu (only the contexts they need); raise on failure."""
    result = subprocess.run(
        ["storescu", "-R", "-aet", calling_aet, "-aec", called_aet, "127.0.0.1", str(port)]
        + [str(p) for p in paths],
        capture_output=True,
        text=True,
        env=DCMTK_ENV,
        timeout=60,
    )
    if result.returncode != 0:
        raise RuntimeError(f"storescu failed: {result.stderr[-500:]}")
