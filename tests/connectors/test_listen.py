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


def _wait_for_port(
    port: int, process: subprocess.Popen[str] | None = None, timeout: float = 90
) -> None:
    """Until the listener accepts connections; a listener that exited says why."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        with socket.socket() as sock:
            if sock.connect_ex(("127.0.0.1", port)) == 0:
                return
        if process is not None and process.poll() is not None:
            _, stderr = process.communicate(timeout=30)
            raise AssertionError(f"the listener exited ({process.returncode}): {stderr[-2000:]}")
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
        _wait_for_port(port, process)
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


def test_a_listen_spec_serves_tls_and_refuses_plaintext(tmp_path: Path) -> None:
    """``dicomflow run`` on a spec whose source is ``listen`` with TLS: storescu over
    mutual TLS is ingested, a plaintext association is refused."""
    import trustme
    import yaml

    require(shutil.which("storescu") is not None, "DCMTK's storescu (Debian package dcmtk)")
    ca = trustme.CA()
    pem = {name: tmp_path / f"{name}.pem" for name in ("ca", "cert", "key", "ccert", "ckey")}
    ca.cert_pem.write_to_path(str(pem["ca"]))
    server, caller = ca.issue_cert("127.0.0.1"), ca.issue_cert("modality")
    server.cert_chain_pems[0].write_to_path(str(pem["cert"]))
    server.private_key_pem.write_to_path(str(pem["key"]))
    caller.cert_chain_pems[0].write_to_path(str(pem["ccert"]))
    caller.private_key_pem.write_to_path(str(pem["ckey"]))
    port, out = free_port(), tmp_path / "lake"
    spec = {
        "name": "listen-tls",
        "source": {
            "kind": "listen",
            "ae_title": "DICOMFLOW",
            "port": port,
            "batch_seconds": 1,
            "tls_ca": str(pem["ca"]),
            "tls_cert": str(pem["cert"]),
            "tls_key": str(pem["key"]),
        },
        "sinks": [{"kind": "lake", "path": str(out)}],
        "cluster": {"workers": 1},
    }
    (tmp_path / "spec.yaml").write_text(yaml.safe_dump(spec))
    process = subprocess.Popen(
        [sys.executable, "-m", "dicomflow", "run", str(tmp_path / "spec.yaml")],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    paths = [str(PYDICOM_TEST_FILES / n) for n in FILES]
    try:
        _wait_for_port(port, process)
        tls = ["+tls", str(pem["ckey"]), str(pem["ccert"]), "+cf", str(pem["ca"])]
        sent = subprocess.run(
            ["storescu", *tls, "-aec", "DICOMFLOW", "127.0.0.1", str(port), *paths],
            capture_output=True,
            timeout=60,
        )
        assert sent.returncode == 0, sent.stderr
        plain = _storescu(port, "MODALITY", [PYDICOM_TEST_FILES / "CT_small.dcm"])
        assert plain.returncode != 0
        time.sleep(3)
    finally:
        process.send_signal(signal.SIGTERM)
        _, stderr = process.communicate(timeout=120)
    assert process.returncode == 0, stderr
    assert dicomflow.read_lake(str(out)).instances().num_rows == len(FILES)


MARKER = "LEAKMARKER^ZQXJ"


def _values_holding(lake: Path, marker: str) -> list[str]:
    """Every place under ``lake`` where ``marker`` appears: in a table's values (Parquet is
    compressed, so its values are read back), or in any other file's bytes."""
    import pyarrow.parquet as pq

    found = []
    for path in lake.rglob("*"):
        if not path.is_file():
            continue
        if path.suffix == ".parquet":
            table = pq.read_table(path)
            if marker in str(table.to_pylist()):
                found.append(str(path))
        elif marker.encode() in path.read_bytes() or marker in path.name:
            found.append(str(path))
    return found


def test_a_listening_spec_that_anonymizes_never_lands_identified_data(
    tmp_path: Path,
) -> None:
    """A ``listen`` source with an ``anonymize`` operator: what arrives is de-identified
    before any output is made, and the received originals do not stay in the lake."""
    require(shutil.which("storescu") is not None, "DCMTK's storescu (Debian package dcmtk)")
    import pydicom

    marked = tmp_path / "marked.dcm"
    ds = pydicom.dcmread(PYDICOM_TEST_FILES / "CT_small.dcm")
    ds.PatientName = MARKER
    ds.PatientID = MARKER.replace("^", "")
    ds.save_as(marked)
    port = free_port()
    out = tmp_path / "lake"
    spec = tmp_path / "listen.yaml"
    spec.write_text(
        f"""
name: listen-deid
source: {{kind: listen, ae_title: DICOMFLOW, port: {port}, host: 127.0.0.1, batch_seconds: 1}}
operators:
  - {{name: anonymize, key_env: LISTEN_DEID_KEY}}
  - {{name: flatten}}
sinks: [{{kind: lake, path: "{out}"}}]
cluster: {{workers: 1}}
"""
    )
    env = {**__import__("os").environ, "LISTEN_DEID_KEY": "ab" * 32}
    process = subprocess.Popen(
        [sys.executable, "-m", "dicomflow", "run", str(spec)],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=env,
    )
    try:
        _wait_for_port(port, process)
        sent = _storescu(port, "MODALITY", [marked])
        assert sent.returncode == 0, sent.stderr
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline and not list(out.glob("instances/*.parquet")):
            time.sleep(0.5)
        time.sleep(2)
    finally:
        process.send_signal(signal.SIGTERM)
        _, stderr = process.communicate(timeout=120)
    assert process.returncode == 0, stderr
    instances = dicomflow.read_lake(str(out)).instances(columns=["PatientName", "PatientID"])
    assert instances.num_rows == 1
    assert instances.column("PatientName").to_pylist() != [MARKER]
    assert _values_holding(out, MARKER) == []
    assert _values_holding(out, MARKER.replace("^", "")) == []
