"""Faults: the PACS dies in the middle of a C-GET, and hostile peers that answer badly."""

from __future__ import annotations

import socket
import struct
import threading
import time
import tracemalloc
from collections import Counter
from collections.abc import Callable, Iterator
from contextlib import contextmanager, suppress
from pathlib import Path
from typing import Any

import pydicom
import pytest
from pydicom.uid import generate_uid

import dicomflow
from dicomflow.connectors.dimse import DimseAddress, DimseOptions, c_echo
from dicomflow.connectors.dimse.association import DimseError
from dicomflow.connectors.dimse.store import c_store
from dicomflow.pipelines.retrieve import RETRIEVED
from tests.conftest import PYDICOM_TEST_FILES, require
from tests.peers.orthanc import orthanc_binary, running_orthanc

INSTANCES = 150


def _synthetic_series(folder: Path, count: int) -> tuple[str, list[Path]]:
    """``count`` copies of MR_small in one new study and series, each with its own UIDs."""
    ds = pydicom.dcmread(PYDICOM_TEST_FILES / "MR_small.dcm")
    ds.StudyInstanceUID, ds.SeriesInstanceUID = generate_uid(), generate_uid()
    folder.mkdir(parents=True)
    paths = []
    for number in range(1, count + 1):
        ds.SOPInstanceUID = ds.file_meta.MediaStorageSOPInstanceUID = generate_uid()
        ds.InstanceNumber = number
        paths.append(folder / f"{number:04d}.dcm")
        ds.save_as(paths[-1])
    return str(ds.StudyInstanceUID), paths


def _retrieved(lake: Path) -> dict[str, tuple[int, int]]:
    """SOP Instance UID → (inode, mtime) of every retrieved file: a refetch changes both."""
    return {
        p.stem: (p.stat().st_ino, p.stat().st_mtime_ns) for p in (lake / RETRIEVED).rglob("*.dcm")
    }


def _lake_sop_uids(lake: Path) -> list[str]:
    table = dicomflow.read_lake(str(lake)).instances(columns=["SOPInstanceUID"])
    return [str(uid) for uid in table.column(0).to_pylist()]


def test_pacs_killed_mid_c_get_then_a_rerun_fetches_only_what_is_missing(
    tmp_path: Path, client: Any
) -> None:
    require(orthanc_binary() is not None, "Orthanc (Debian package orthanc)")
    study, paths = _synthetic_series(tmp_path / "series", INSTANCES)
    expected = {str(pydicom.dcmread(p, stop_before_pixels=True).SOPInstanceUID) for p in paths}
    lake, workdir = tmp_path / "lake", tmp_path / "pacs"
    outcome: dict[str, Any] = {}

    def first_run(url: str) -> None:
        try:
            outcome["summary"] = dicomflow.ingest(
                [url],
                out=str(lake),
                query={"StudyInstanceUID": study},
                client=client,
                progress=False,
                pixels=True,
            )
        except Exception as exc:  # reported below, never swallowed
            outcome["error"] = exc

    with running_orthanc(workdir) as server:
        assert all(o.ok for o in c_store(DimseAddress.parse(server.url), paths))
        port = server.dicom_port
        thread = threading.Thread(target=first_run, args=(server.url,), daemon=True)
        thread.start()
        deadline = time.monotonic() + 60
        while len(_retrieved(lake)) < 10 and time.monotonic() < deadline:
            time.sleep(0.005)
        server.kill()  # a crash, in the middle of the C-GET
        thread.join(timeout=90)
    assert not thread.is_alive(), "the interrupted ingest never returned"
    assert "error" not in outcome, outcome.get("error")
    before = _retrieved(lake)
    assert 10 <= len(before) < INSTANCES, "Orthanc was not killed in the middle of the C-GET"
    first = outcome["summary"]  # what arrived is ingested, the rest reported missing
    assert first.rows == len(before)
    assert first.error_codes.get("not_retrieved") == INSTANCES - len(before)
    assert sorted(_lake_sop_uids(lake)) == sorted(before)

    with running_orthanc(workdir, dicom_port=port) as server:
        assert len(server.get("/instances")) == INSTANCES  # type: ignore[arg-type]
        second = dicomflow.ingest(
            [server.url],
            out=str(lake),
            query={"StudyInstanceUID": study},
            client=client,
            progress=False,
            pixels=True,
        )
    assert second.errors == 0, second.error_codes
    after = _retrieved(lake)
    assert set(after) == expected
    refetched = {uid for uid, stamp in before.items() if after[uid] != stamp}
    assert not refetched, f"{len(refetched)} instances already there were fetched again"
    assert set(after) - set(before) == expected - set(before)  # exactly the missing ones
    counts = Counter(_lake_sop_uids(lake))
    assert set(counts) == expected
    assert {uid: n for uid, n in counts.items() if n > 1} == {}  # none duplicated
    # The first run's report of what was missing is replaced: nothing is missing now.
    codes = dicomflow.read_lake(str(lake)).errors().column("code").to_pylist()
    assert "not_retrieved" not in codes


# --- hostile peers ------------------------------------------------------------------

QUICK = DimseOptions(connect_timeout=1, acse_timeout=1.5, dimse_timeout=1.5, network_timeout=1.5)
MARGIN = 1.5  # seconds: thread start-up, the abort, a busy machine
FLOOD = 256 * 1024 * 1024


def _silent(conn: socket.socket) -> None:
    """Read the A-ASSOCIATE-RQ and never answer."""
    conn.recv(65536)
    conn.recv(65536)  # until the caller gives up and closes


def _absurd_length(conn: socket.socket) -> None:
    """An A-ASSOCIATE-AC header claiming ~4 GiB, then garbage for as long as it is read."""
    conn.recv(65536)
    conn.sendall(struct.pack(">BBL", 0x02, 0, 0xFFFFFFF0))
    chunk, sent = b"\xa5" * 65536, 0
    while sent < FLOOD:
        conn.sendall(chunk)
        sent += len(chunk)
    conn.recv(65536)  # then hold the connection open


def _garbage(conn: socket.socket) -> None:
    """Bytes that are no PDU at all, and the connection held open."""
    conn.recv(65536)
    conn.sendall(b"HTTP/1.1 400 Bad Request\r\n\r\n" + bytes(range(256)) * 16)
    conn.recv(65536)


def _bad_accept(conn: socket.socket) -> None:
    """A well-framed A-ASSOCIATE-AC whose body is garbage."""
    conn.recv(65536)
    conn.sendall(struct.pack(">BBL", 0x02, 0, 64) + bytes(range(64)))
    conn.recv(65536)


@contextmanager
def hostile_peer(behave: Callable[[socket.socket], None]) -> Iterator[DimseAddress]:
    """A plain TCP server on loopback treating every connection with ``behave``."""
    server = socket.create_server(("127.0.0.1", 0))
    connections: list[socket.socket] = []

    def handle(conn: socket.socket) -> None:
        with suppress(OSError):  # the caller hung up: that is the point
            behave(conn)

    def accept() -> None:
        while True:
            try:
                conn, _ = server.accept()
            except OSError:
                return
            connections.append(conn)
            threading.Thread(target=handle, args=(conn,), daemon=True).start()

    threading.Thread(target=accept, daemon=True).start()
    try:
        yield DimseAddress("HOSTILE", "127.0.0.1", server.getsockname()[1])
    finally:
        server.close()
        for conn in connections:
            conn.close()


BEHAVIOURS = {
    "never-answers": _silent,
    "absurd-pdu-length": _absurd_length,
    "garbage": _garbage,
    "garbage-accept": _bad_accept,
}


@pytest.mark.parametrize("behaviour", sorted(BEHAVIOURS))
def test_hostile_peer_is_a_clear_error_without_hang_or_memory_growth(behaviour: str) -> None:
    with hostile_peer(BEHAVIOURS[behaviour]) as address:
        tracemalloc.start()
        started = time.perf_counter()
        try:
            with pytest.raises(DimseError, match="gave no valid answer to the association"):
                c_echo(address, QUICK)
            elapsed = time.perf_counter() - started
            _, peak = tracemalloc.get_traced_memory()
        finally:
            tracemalloc.stop()
    assert elapsed < QUICK.acse_timeout + MARGIN
    assert peak < 32 * 1024 * 1024  # the flood of the absurd PDU is never buffered


@pytest.mark.parametrize("behaviour", sorted(BEHAVIOURS))
def test_a_worker_survives_a_hostile_peer(behaviour: str, client: Any) -> None:
    workers = set(client.scheduler_info()["workers"])
    assert len(workers) == 2
    with hostile_peer(BEHAVIOURS[behaviour]) as address:
        started = time.perf_counter()
        future = client.submit(c_echo, address, QUICK, pure=False)
        with pytest.raises(DimseError, match="gave no valid answer to the association"):
            future.result(timeout=QUICK.acse_timeout + 30)
        assert time.perf_counter() - started < QUICK.acse_timeout + MARGIN + 2
    assert set(client.scheduler_info()["workers"]) == workers  # same two, none restarted
    assert client.submit(sum, [1, 2], pure=False).result(timeout=30) == 3
