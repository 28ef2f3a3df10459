"""dicomflow's Storage SCP under hostile and careless peers, on loopback.

Valid traffic comes from DCMTK (``storescu``, ``echoscu``); hostile peers are raw
sockets speaking just enough of PS3.8 to be dangerous. Each probe is followed by a
real send that must still succeed, and the SCP's memory is measured around the
probes that try to exhaust it.
"""

from __future__ import annotations

import shutil
import socket
import struct
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import ExitStack, contextmanager
from pathlib import Path

import psutil
import pydicom
import pytest
from pynetdicom import AE
from pynetdicom.sop_class import Verification  # type: ignore[attr-defined]

from dicomflow.connectors.dimse.scp import storage_scp
from dicomflow.connectors.dimse.scp_guard import ScpLimits
from tests.conftest import PYDICOM_TEST_FILES, require
from tests.peers.orthanc import free_port

CT = PYDICOM_TEST_FILES / "CT_small.dcm"
MIB = 2**20


@pytest.fixture(autouse=True)
def _dcmtk() -> None:
    require(shutil.which("storescu") is not None, "DCMTK's storescu (Debian package dcmtk)")


@contextmanager
def scp(
    tmp_path: Path, limits: ScpLimits | None = None, **kwargs: object
) -> Iterator[tuple[int, Path]]:
    port = free_port()
    folder = tmp_path / "received"
    with storage_scp("DICOMFLOW", port, folder, limits=limits, **kwargs):  # type: ignore[arg-type]
        yield port, folder


def storescu(
    port: int, *paths: Path, calling: str = "MODALITY"
) -> subprocess.CompletedProcess[str]:
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
        text=True,
        timeout=60,
    )


def stored(folder: Path) -> list[Path]:
    return sorted(p for p in folder.glob("*.dcm") if not p.name.startswith("."))


def idle_connections(port: int, count: int) -> ExitStack:
    """``count`` connections that never say a word."""
    stack = ExitStack()
    for _ in range(count):
        stack.enter_context(socket.create_connection(("127.0.0.1", port)))
    return stack


def closed_within(sock: socket.socket, seconds: float) -> bool:
    """Whether the peer (the SCP) closes ``sock`` within ``seconds``."""
    sock.settimeout(seconds)
    try:
        while sock.recv(65536):
            pass  # an A-ABORT or a reject may come first
    except TimeoutError:
        return False
    except OSError:
        return True
    return True


def rss() -> int:
    return psutil.Process().memory_info().rss


def test_c_echo_succeeds(tmp_path: Path) -> None:
    """Every PACS administrator tests a node with C-ECHO first (DCMTK's echoscu)."""
    require(shutil.which("echoscu") is not None, "DCMTK's echoscu (Debian package dcmtk)")
    with scp(tmp_path) as (port, _):
        result = subprocess.run(
            ["echoscu", "-aec", "DICOMFLOW", "127.0.0.1", str(port)],
            capture_output=True,
            text=True,
            timeout=60,
        )
    assert result.returncode == 0, result.stderr


@pytest.mark.parametrize("idle", [10, 200])
def test_idle_connections_do_not_lock_senders_out(tmp_path: Path, idle: int) -> None:
    with scp(tmp_path) as (port, folder), idle_connections(port, idle):
        result = storescu(port, CT)
        assert result.returncode == 0, result.stderr
        assert [pydicom.dcmread(p).SOPInstanceUID for p in stored(folder)] == [
            pydicom.dcmread(CT).SOPInstanceUID
        ]


def test_a_connection_that_never_associates_is_closed(tmp_path: Path) -> None:
    limits = ScpLimits(request_timeout=1.0)
    with scp(tmp_path, limits) as (port, _), socket.create_connection(("127.0.0.1", port)) as sock:
        start = time.monotonic()
        assert closed_within(sock, 10)
        assert time.monotonic() - start < 5


def test_a_claimed_4_gib_pdu_is_refused_before_its_body(tmp_path: Path) -> None:
    """A P-DATA-TF header claiming 4 GiB, then bytes as fast as the SCP takes them: the
    connection closes after the header, and the SCP's memory does not follow the claim."""
    with scp(tmp_path) as (port, folder):
        before = rss()
        with socket.create_connection(("127.0.0.1", port)) as sock:
            sock.sendall(struct.pack(">BBL", 0x04, 0, 0xFFFFFFFF))
            sent = 0
            with pytest.raises(OSError):  # reset or broken pipe once the SCP hangs up
                sock.settimeout(10)
                for _ in range(256):
                    sock.sendall(b"\0" * MIB)
                    sent += MIB
        grown = rss() - before
        assert sent < 256 * MIB
        assert grown < 64 * MIB, f"RSS grew {grown / MIB:.0f} MiB"
        result = storescu(port, CT)
        assert result.returncode == 0, result.stderr
        assert len(stored(folder)) == 1


def _associate_then_send(port: int, data: bytes) -> None:
    """Associate as a valid peer, then send ``data`` raw: the SCP must abort the
    association within 10 s."""
    ae = AE(ae_title="MODALITY")
    ae.add_requested_context(Verification)
    assoc = ae.associate("127.0.0.1", port, ae_title="DICOMFLOW")
    assert assoc.is_established
    assoc.dul.socket.socket.sendall(data)
    deadline = time.monotonic() + 10
    while assoc.is_established and time.monotonic() < deadline:
        time.sleep(0.05)
    assert not assoc.is_established
    assoc.abort()


def test_an_oversized_p_data_after_a_valid_association_aborts_it(tmp_path: Path) -> None:
    limits = ScpLimits(max_pdu=64 * 1024)
    with scp(tmp_path, limits) as (port, folder):
        _associate_then_send(port, struct.pack(">BBL", 0x04, 0, limits.pdu_body_limit + 1))
        result = storescu(port, CT)
        assert result.returncode == 0, result.stderr
        assert len(stored(folder)) == 1


def test_garbage_after_a_valid_association(tmp_path: Path) -> None:
    with scp(tmp_path) as (port, folder):
        _associate_then_send(port, b"\x99garbage that is no PDU at all" * 100)
        result = storescu(port, CT)
        assert result.returncode == 0, result.stderr
        assert len(stored(folder)) == 1


def test_a_trickling_peer_is_cut_off_by_the_read_timeout(tmp_path: Path) -> None:
    """A PDU header that claims 1,000 bytes, then one byte every 0.3 s: the whole PDU
    must arrive within the read timeout, so the slot comes free."""
    limits = ScpLimits(read_timeout=2.0)
    with (
        scp(tmp_path, limits) as (port, _),
        socket.create_connection(("127.0.0.1", port)) as sock,
    ):
        sock.sendall(struct.pack(">BBL", 0x01, 0, 1000))
        start = time.monotonic()
        closed = False
        while time.monotonic() - start < 15:
            try:
                sock.sendall(b"\0")
            except OSError:
                closed = True
                break
            if closed_within(sock, 0.3):
                closed = True
                break
        elapsed = time.monotonic() - start
        assert closed and elapsed < 8, f"still open after {elapsed:.1f} s"
        result = storescu(port, CT)
        assert result.returncode == 0, result.stderr


def test_the_association_cap_rejects_then_frees_an_idle_slot(tmp_path: Path) -> None:
    """One association allowed: while an idle peer holds it, storescu is rejected (local
    limit exceeded); the idle timeout aborts the holder and storescu gets through."""
    limits = ScpLimits(max_associations=1, idle_timeout=2.0)
    with scp(tmp_path, limits) as (port, folder):
        ae = AE(ae_title="HOLDER")
        ae.add_requested_context(Verification)
        holder = ae.associate("127.0.0.1", port, ae_title="DICOMFLOW")
        assert holder.is_established
        refused = storescu(port, CT)
        assert refused.returncode != 0
        assert "Local Limit Exceeded" in refused.stderr + refused.stdout
        deadline = time.monotonic() + 15
        while holder.is_established and time.monotonic() < deadline:
            time.sleep(0.1)
        assert not holder.is_established  # aborted by the SCP's idle timeout
        time.sleep(0.5)  # the SCP's thread for it ends
        result = storescu(port, CT)
        assert result.returncode == 0, result.stderr
        assert len(stored(folder)) == 1


def test_an_unknown_calling_ae_is_refused_when_callers_are_listed(tmp_path: Path) -> None:
    with scp(tmp_path, allowed_callers=frozenset({"MODALITY"})) as (port, folder):
        refused = storescu(port, CT, calling="STRANGER")
        assert refused.returncode != 0
        assert stored(folder) == []
        result = storescu(port, CT, calling="MODALITY")
        assert result.returncode == 0, result.stderr
        assert len(stored(folder)) == 1


def test_a_second_instance_with_the_same_uid_never_overwrites_the_first(tmp_path: Path) -> None:
    """Two different instances sharing one SOP Instance UID in one association: both are
    acknowledged, and both are kept (the first byte for byte)."""
    first = pydicom.dcmread(CT)
    second = pydicom.dcmread(CT)
    second.PatientID = "ANOTHER-PATIENT"
    a, b = tmp_path / "a.dcm", tmp_path / "b.dcm"
    first.save_as(a)
    second.save_as(b)
    with scp(tmp_path) as (port, folder):
        result = storescu(port, a, b)
        assert result.returncode == 0, result.stderr
        kept = stored(folder)
        assert len(kept) == 2
        ids = sorted(pydicom.dcmread(p).PatientID for p in kept)
        assert ids == sorted([first.PatientID, "ANOTHER-PATIENT"])
        # the same instance sent again is acknowledged and not stored a third time
        again = storescu(port, a)
        assert again.returncode == 0, again.stderr
        assert len(stored(folder)) == 2


def test_rss_before_and_after_each_probe(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """The SCP's memory across all probes in a row (printed for the record): it stays
    within 64 MiB of where it started."""
    with scp(tmp_path) as (port, folder):
        start = rss()
        figures = []
        with idle_connections(port, 200):
            figures.append(("200 idle connections", rss()))
        for claimed in (0xFFFFFFFF, 512 * MIB):
            with socket.create_connection(("127.0.0.1", port)) as sock:
                sock.sendall(struct.pack(">BBL", 0x04, 0, claimed))
                try:
                    sock.settimeout(5)
                    for _ in range(64):
                        sock.sendall(b"\0" * MIB)
                except OSError:
                    pass
            figures.append((f"PDU claiming {claimed / MIB:.0f} MiB", rss()))
        assert storescu(port, CT).returncode == 0
        end = rss()
    with capsys.disabled():
        print(
            f"\nSCP RSS at start {start / MIB:.0f} MiB; "
            + "; ".join(f"after {name} {value / MIB:.0f} MiB" for name, value in figures)
        )
    assert end - start < 64 * MIB
    assert len(stored(folder)) == 1


def _listen_spec(tmp_path: Path, cap: str) -> subprocess.CompletedProcess[str]:
    """``dicomflow listen --max-associations CAP --print-spec``."""
    command = ["listen", "--ae", "DICOMFLOW", "--port", "11112", "--out", str(tmp_path / "lake")]
    return subprocess.run(
        [sys.executable, "-m", "dicomflow", *command, "--max-associations", cap, "--print-spec"],
        capture_output=True,
        text=True,
        timeout=120,
    )


def test_the_listen_command_carries_its_association_cap_into_the_spec(tmp_path: Path) -> None:
    """``dicomflow listen --max-associations N`` is a spec field the SCP is built with."""
    from dicomflow.lake.layout import LakeLayout
    from dicomflow.operators.base import RunSettings
    from dicomflow.pipelines.endpoints import ListenSourceUnit
    from dicomflow.schemas.spec import PipelineSpec

    printed = _listen_spec(tmp_path, "3")
    assert printed.returncode == 0, printed.stderr
    spec = PipelineSpec.from_yaml(printed.stdout)
    listener = ListenSourceUnit.build(spec.source, RunSettings(LakeLayout(str(tmp_path / "lake"))))
    assert listener.limits.max_associations == 3
    refused = _listen_spec(tmp_path, "0")
    assert refused.returncode == 2 and "--max-associations" in refused.stderr


@pytest.mark.parametrize("durable", [True, False])
def test_pushed_instances_are_fsynced_retrieved_ones_are_not(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, durable: bool
) -> None:
    """A pushed instance is fsynced before its acknowledgement (its sender may delete it);
    a C-MOVE destination (``durable=False``) writes the same bytes without the fsync."""
    import os

    from dicomflow.connectors.dimse import get

    synced: list[int] = []
    real = os.fsync
    monkeypatch.setattr(get.os, "fsync", lambda fd: (synced.append(fd), real(fd))[1])
    with scp(tmp_path, durable=durable) as (port, folder):
        result = storescu(port, CT)
    assert result.returncode == 0, result.stderr
    (kept,) = stored(folder)
    assert kept.read_bytes()[128:132] == b"DICM"
    assert len(synced) == (1 if durable else 0)
