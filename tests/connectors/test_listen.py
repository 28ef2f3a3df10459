"""``dicomflow listen``: DCMTK's storescu pushes, the lake fills, allow-lists hold."""

from __future__ import annotations

import shutil
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import dicomflow
from tests.conftest import PYDICOM_TEST_FILES, require
from tests.peers.orthanc import free_port

FILES = ["CT_small.dcm", "MR_small.dcm", "rtplan.dcm"]


def _wait_for_port(port: int, timeout: float = 60) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        with socket.socket() as sock:
            if sock.connect_ex(("127.0.0.1", port)) == 0:
                return
        time.sleep(0.2)
    raise TimeoutError("the listener did not open its port")


def _storescu(port: int, calling: str, paths: list[Path]) -> subprocess.CompletedProcess[bytes]:
    return subprocess.run(
        [
            "storescu",
            "-aet",
            calling,
            "-aec",
            "DICOMFLOW",
            "127.0.0.1",
            str(port),
            *map(str, paths),
        ],
        capture_output=True,
        timeout=60,
    )


def test_listen_ingests_pushed_instances_and_refuses_strangers(tmp_path: Path) -> None:
    require(shutil.which("storescu") is not None, "DCMTK's storescu (Debian package dcmtk)")
    port = free_port()
    out = tmp_path / "lake"
    process = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "dicomflow",
            "listen",
            "--ae",
            "DICOMFLOW",
            "--port",
            str(port),
            "--host",
            "127.0.0.1",
            "--out",
            str(out),
            "--allow",
            "MODALITY",
            "--batch-seconds",
            "1",
            "--workers",
            "1",
        ],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        _wait_for_port(port)
        sent = _storescu(port, "MODALITY", [PYDICOM_TEST_FILES / n for n in FILES])
        assert sent.returncode == 0, sent.stderr
        refused = _storescu(port, "STRANGER", [PYDICOM_TEST_FILES / "CT_small.dcm"])
        assert refused.returncode != 0
        time.sleep(3)
    finally:
        process.send_signal(signal.SIGTERM)
        stdout, stderr = process.communicate(timeout=120)
    assert process.returncode == 0, stderr
    assert "rows: 3" in stdout
    lake = dicomflow.read_lake(str(out))
    assert lake.instances().num_rows == 3
    assert not list((out / "_received" / "incoming").glob("*.dcm"))
