"""DICOMweb faults: hostile HTTP peers (silent, garbage, refusing), credentials and TLS.

The hostile peers are stdlib HTTP servers on loopback ports, run in threads of the
test process; the credential tests use a real Orthanc with basic authentication.
Nothing of dicomflow is mocked: every request goes through dicomweb-client and
requests to a real socket.
"""

from __future__ import annotations

import base64
import io
import json
import logging
import os
import socket
import ssl
import subprocess
import threading
import time
import traceback
import urllib.error
import urllib.request
from collections.abc import Iterator
from contextlib import contextmanager, suppress
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlsplit

import certifi
import pydicom
import pytest
import trustme
from distributed import Client
from pydicom.dataset import Dataset
from pydicom.uid import UID, generate_uid

import dicomflow
from dicomflow.connectors.dicomweb import DicomwebAddress, DicomwebError, DicomwebOptions
from dicomflow.connectors.dicomweb.qido import search_instances
from dicomflow.connectors.dicomweb.stow import stow
from dicomflow.errors import ConfigError
from dicomflow.pipelines.pipeline import RunSummary
from dicomflow.pipelines.retrieve import RETRIEVED
from tests.conftest import PYDICOM_TEST_FILES, require
from tests.peers.orthanc import (
    DICOMWEB_PLUGIN,
    Orthanc,
    free_port,
    orthanc_binary,
    running_orthanc,
)

ROOT = "/dicom-web"
CT_IMAGE = "1.2.840.10008.5.1.4.1.1.2"
BOUNDARY = "dicomflow-hostile-boundary"
REFUSED = 0xA700  # STOW-RS Failure Reason: out of resources
PASSWORD = "pw-Zq81-hostile-secret"  # a test secret, searched for in every output
PASSWORD_ENV = "DICOMFLOW_TEST_DICOMWEB_PASSWORD"
UPLOADS = ("CT_small.dcm", "MR_small.dcm")


def _uid(path: Path, keyword: str = "SOPInstanceUID") -> str:
    return str(pydicom.dcmread(path, stop_before_pixels=True).get(keyword))


def _ingest_without_pixels(
    url: str, claimed: list[Claimed], lake: Path, client: Client
) -> RunSummary:
    """Ingest (metadata only) the study of ``claimed`` from the server at ``url``."""
    return dicomflow.ingest(
        [url],
        out=str(lake),
        pixels=False,
        query={"StudyInstanceUID": claimed[0].study},
        dicomweb=DicomwebOptions(connect_timeout=2, read_timeout=2, attempts=1),
        client=client,
        progress=False,
    )


def _workers(client: Client) -> int:
    return len(client.scheduler_info()["workers"])


def _lake_bytes(lake: Path) -> Iterator[tuple[Path, bytes]]:
    for path in sorted(lake.rglob("*")):
        if path.is_file():
            yield path, path.read_bytes()


# --- the instances a hostile server claims to hold -------------------------------------------


@dataclass(frozen=True)
class Claimed:
    """One instance a fake QIDO-RS answer lists."""

    study: str
    series: str
    sop: str
    sop_class: str = CT_IMAGE

    def as_json(self) -> dict[str, Any]:
        """The instance as QIDO-RS returns it (DICOM JSON)."""
        return {
            "0020000D": {"vr": "UI", "Value": [self.study]},
            "0020000E": {"vr": "UI", "Value": [self.series]},
            "00080018": {"vr": "UI", "Value": [self.sop]},
            "00080016": {"vr": "UI", "Value": [self.sop_class]},
        }

    def as_dicom(self) -> bytes:
        """CT_small under this instance's UIDs, as a Part 10 file."""
        ds = pydicom.dcmread(PYDICOM_TEST_FILES / "CT_small.dcm")
        ds.StudyInstanceUID, ds.SeriesInstanceUID = self.study, self.series
        ds.SOPInstanceUID = ds.file_meta.MediaStorageSOPInstanceUID = UID(self.sop)
        buffer = io.BytesIO()
        ds.save_as(buffer, enforce_file_format=True)
        return buffer.getvalue()


def _claimed() -> list[Claimed]:
    """Three instances in two series of one study."""
    study, first, second = generate_uid(), generate_uid(), generate_uid()
    return [
        Claimed(study, first, generate_uid()),
        Claimed(study, first, generate_uid()),
        Claimed(study, second, generate_uid()),
    ]


def _multipart(parts: list[bytes]) -> tuple[bytes, str]:
    """A multipart/related body of application/dicom parts, and its Content-Type."""
    body = b"".join(
        b"--" + BOUNDARY.encode() + b"\r\nContent-Type: application/dicom\r\n\r\n" + part + b"\r\n"
        for part in parts
    )
    body += b"--" + BOUNDARY.encode() + b"--\r\n"
    return body, f'multipart/related; type="application/dicom"; boundary={BOUNDARY}'


def _split_multipart(body: bytes, content_type: str) -> list[bytes]:
    """The parts of a multipart/related request body (what STOW-RS posts)."""
    boundary = next(
        item.split("=", 1)[1].strip('"')
        for item in (p.strip() for p in content_type.split(";"))
        if item.lower().startswith("boundary=")
    )
    parts = []
    for chunk in body.split(b"--" + boundary.encode()):
        if chunk in (b"", b"--\r\n", b"--") or b"\r\n\r\n" not in chunk:
            continue
        parts.append(chunk.split(b"\r\n\r\n", 1)[1].removesuffix(b"\r\n"))
    return parts


# --- hostile servers -----------------------------------------------------------------------


class HostileServer(ThreadingHTTPServer):
    """A loopback HTTP(S) server whose handler reads its behaviour from ``state``."""

    daemon_threads = True

    def __init__(self, handler: type[BaseHTTPRequestHandler], state: dict[str, Any]) -> None:
        super().__init__(("127.0.0.1", 0), handler)
        self.state = state
        self.seen: list[str] = []
        self.release = threading.Event()  # lets stalled handlers go when the test ends
        self.scheme = "http"

    @property
    def url(self) -> str:
        return f"dicomweb+{self.scheme}://127.0.0.1:{self.server_address[1]}{ROOT}"


@contextmanager
def serving(
    handler: type[BaseHTTPRequestHandler], *, tls: ssl.SSLContext | None = None, **state: Any
) -> Iterator[HostileServer]:
    """Run ``handler`` on a free loopback port until the block ends."""
    server = HostileServer(handler, state)
    if tls is not None:
        server.socket = tls.wrap_socket(server.socket, server_side=True)
        server.scheme = "https"
    thread = threading.Thread(target=server.serve_forever, args=(0.05,), daemon=True)
    thread.start()
    try:
        yield server
    finally:
        server.release.set()
        server.shutdown()
        server.server_close()
        thread.join(timeout=10)


class Handler(BaseHTTPRequestHandler):
    """QIDO-RS from ``state["claimed"]``; WADO-RS and STOW-RS as ``state`` says."""

    server: HostileServer
    protocol_version = "HTTP/1.1"

    def log_message(self, format: str, *args: Any) -> None:
        """Quiet: the test reads ``server.seen`` instead."""

    def reply(self, status: int, body: bytes, content_type: str = "text/plain") -> None:
        self.send_response(status)
        self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def do_GET(self) -> None:
        self.server.seen.append(self.path)
        parts = urlsplit(self.path)
        if parts.path == f"{ROOT}/instances":
            self.qido(parse_qs(parts.query))
        else:
            self.wado(parts.path.removeprefix(ROOT).strip("/").split("/"))

    def qido(self, params: dict[str, list[str]]) -> None:
        state = self.server.state
        offset = int(params.get("offset", ["0"])[0])
        if "qido_body" in state:  # a malformed first page, as is; then the end
            self.reply(200, state["qido_body"] if offset == 0 else b"[]", "application/dicom+json")
            return
        pages = sum(1 for p in self.server.seen if p.startswith(f"{ROOT}/instances"))
        ignore_offset = state.get("ignore_offset", False) and pages <= state.get("pages", 0)
        found = [c.as_json() for c in state["claimed"]]
        page = found if ignore_offset else found[offset:]
        self.reply(200, json.dumps(page).encode(), "application/dicom+json")

    def wado(self, path: list[str]) -> None:
        """``path``: studies/<study>/series/<series>[/instances/<sop>]."""
        state = self.server.state
        wanted = [
            c
            for c in state["claimed"]
            if c.series == path[3] and (len(path) < 6 or c.sop == path[5])
        ]
        mode = state["wado"]
        if mode == "series-500" and len(path) >= 6:
            mode = "valid"
        if mode in ("http-500", "series-500"):
            self.reply(500, b"internal error")
        elif mode == "garbage":
            body, content_type = _multipart([os.urandom(2048), b"not DICOM at all" * 64])
            self.reply(200, body, content_type)
        elif mode == "truncated":
            parts = [c.as_dicom() for c in wanted]
            body, content_type = _multipart([p[: len(p) // 2] for p in parts])
            self.reply(200, body, content_type)
        elif mode == "valid":
            body, content_type = _multipart([c.as_dicom() for c in wanted])
            self.reply(200, body, content_type)
        elif mode == "stall":  # headers and the start of a part, then nothing
            body, content_type = _multipart([c.as_dicom() for c in wanted])
            self.send_response(200)
            self.send_header("Content-Type", content_type)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body[:200])
            self.wfile.flush()
            self.server.release.wait(60)
            self.close_connection = True
        else:
            raise AssertionError(f"unknown WADO mode {mode}")

    def do_POST(self) -> None:
        self.server.seen.append(self.path)
        if self.headers.get("Transfer-Encoding", "").lower() == "chunked":
            body = self.read_chunked()
        else:
            body = self.rfile.read(int(self.headers["Content-Length"]))
        datasets = [
            pydicom.dcmread(io.BytesIO(part), force=True)
            for part in _split_multipart(body, self.headers["Content-Type"])
        ]
        state = self.server.state
        state.setdefault("posted", []).extend(str(ds.SOPInstanceUID) for ds in datasets)
        if state["stow"] == "http-500":
            self.reply(500, b"internal error")
            return
        answer = Dataset()
        answer.ReferencedSOPSequence = []
        answer.FailedSOPSequence = []
        for ds in datasets:
            item = Dataset()
            item.ReferencedSOPClassUID = ds.SOPClassUID
            item.ReferencedSOPInstanceUID = ds.SOPInstanceUID
            if str(ds.SOPInstanceUID) in state["refuse"]:
                item.FailureReason = REFUSED
                answer.FailedSOPSequence.append(item)
            else:
                answer.ReferencedSOPSequence.append(item)
        status = int(state["stow"]) if answer.FailedSOPSequence else 200
        self.reply(status, json.dumps(answer.to_json_dict()).encode(), "application/dicom+json")

    def read_chunked(self) -> bytes:
        body = b""
        while True:
            size = int(self.rfile.readline().strip(), 16)
            if size == 0:
                self.rfile.readline()
                return body
            body += self.rfile.read(size)
            self.rfile.readline()


@contextmanager
def silent_server() -> Iterator[tuple[str, list[socket.socket]]]:
    """A server that accepts every connection and never answers (nor closes)."""
    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen(16)
    listener.settimeout(0.1)
    held: list[socket.socket] = []
    done = threading.Event()

    def accept() -> None:
        while not done.is_set():
            with suppress(TimeoutError):
                held.append(listener.accept()[0])

    thread = threading.Thread(target=accept, daemon=True)
    thread.start()
    try:
        yield f"dicomweb+http://127.0.0.1:{listener.getsockname()[1]}{ROOT}", held
    finally:
        done.set()
        thread.join(timeout=10)
        listener.close()
        for connection in held:
            connection.close()


# --- 1a. a server that never answers ---------------------------------------------------------


def test_silent_server_fails_the_plan_in_bounded_time_without_credentials_in_the_error(
    tmp_path: Path, client: Client, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A peer that accepts and never answers fails the QIDO plan with a DicomwebError after
    ``attempts`` read timeouts (about 11.5 s: 4 x 2 s plus backoff), and the error names
    neither the password nor the basic-auth token."""
    monkeypatch.setenv(PASSWORD_ENV, PASSWORD)
    options = DicomwebOptions(
        connect_timeout=2, read_timeout=2, username="alice", password_env=PASSWORD_ENV
    )
    with silent_server() as (url, held):
        started = time.monotonic()
        with pytest.raises(DicomwebError) as raised:
            dicomflow.ingest(
                [url],
                out=str(tmp_path / "lake"),
                query={"Modality": "CT"},
                dicomweb=options,
                client=client,
                progress=False,
                pixels=True,
            )
        elapsed = time.monotonic() - started
        connections = len(held)
    assert elapsed < 30, f"the plan took {elapsed:.1f} s"
    assert connections == options.attempts  # dicomweb-client retried, then gave up
    error = raised.value
    assert str(error) == "QIDO-RS search: ReadTimeout" and error.status is None
    shown = "".join(traceback.format_exception(error)) + repr(error)
    token = base64.b64encode(f"alice:{PASSWORD}".encode()).decode()
    assert PASSWORD not in shown and token not in shown
    assert not (tmp_path / "lake" / RETRIEVED).exists()


# --- 1b. QIDO answers, WADO does not deliver --------------------------------------------------


@pytest.mark.parametrize("mode", ["garbage", "http-500", "stall"])
def test_wado_garbage_gives_one_not_retrieved_row_per_instance(
    mode: str, tmp_path: Path, client: Client
) -> None:
    """QIDO lists three instances in two series, WADO-RS answers non-DICOM parts, HTTP 500,
    or stalls mid-body: ingest finishes with one ``not_retrieved`` row per instance, nothing
    under ``_retrieved``, and both Dask workers alive."""
    claimed = _claimed()
    lake = tmp_path / "lake"
    options = DicomwebOptions(connect_timeout=2, read_timeout=1, attempts=1)
    with serving(Handler, claimed=claimed, wado=mode) as server:
        summary = dicomflow.ingest(
            [server.url],
            out=str(lake),
            query={"StudyInstanceUID": claimed[0].study},
            dicomweb=options,
            client=client,
            progress=False,
            pixels=True,
        )
        url, seen = server.url, list(server.seen)
    assert any("/series/" in path for path in seen)  # WADO-RS was really asked
    assert summary.rows == 0 and summary.error_codes == {"not_retrieved": len(claimed)}
    errors = dicomflow.read_lake(str(lake)).errors().to_pylist()
    assert sorted(e["source"] for e in errors) == sorted(f"{url}#sop={c.sop}" for c in claimed)
    assert {(e["stage"], e["code"]) for e in errors} == {("retrieve", "not_retrieved")}
    assert not [p for p in (lake / RETRIEVED).rglob("*") if p.is_file()]  # no partial file
    assert _workers(client) == 2


def test_truncated_wado_part_never_lands_as_a_complete_instance(
    tmp_path: Path, client: Client
) -> None:
    """A WADO-RS part cut in the middle of its Pixel Data must not become a clean instance."""
    claimed = _claimed()
    lake = tmp_path / "lake"
    with serving(Handler, claimed=claimed, wado="truncated") as server:
        summary = _ingest_without_pixels(server.url, claimed, lake, client)
    assert _workers(client) == 2
    assert summary.rows == 0 and summary.errors == len(claimed)


def test_series_level_failure_falls_back_to_instance_level(tmp_path: Path, client: Client) -> None:
    """A server that refuses series-level WADO-RS but serves each instance still delivers."""
    claimed = _claimed()
    lake = tmp_path / "lake"
    with serving(Handler, claimed=claimed, wado="series-500") as server:
        summary = _ingest_without_pixels(server.url, claimed, lake, client)
    assert _workers(client) == 2
    assert summary.errors == 0 and summary.rows == len(claimed)


# --- hostile QIDO answers -------------------------------------------------------------------

# an instance whose SOP Instance UID "Value" is a string, not a list of strings
STRING_VALUE = {
    **Claimed("1.2.3", "1.2.4", "1.2.5").as_json(),
    "00080018": {"vr": "UI", "Value": "1.2.840.5"},
}


@pytest.mark.parametrize(
    "body",
    [
        pytest.param(b"<html>Service Unavailable</html>", id="not-json"),
        pytest.param(
            b"[1, 2, 3]",
            id="array-of-numbers",
        ),
        pytest.param(
            b'[{"0020000D": "1.2.3", "0020000E": "1.2.4", "00080018": "1.2.5"}]',
            id="element-not-an-object",
        ),
        pytest.param(
            json.dumps([STRING_VALUE]).encode(),
            id="value-not-a-list",
        ),
    ],
)
def test_malformed_qido_answer_is_a_dicomweb_error(body: bytes) -> None:
    """A QIDO-RS answer that is not a JSON array of DICOM JSON objects is a DicomwebError,
    never another exception nor a made-up UID."""
    with (
        serving(Handler, claimed=[], qido_body=body) as server,
        pytest.raises(DicomwebError, match="QIDO-RS search"),
    ):
        search_instances(DicomwebAddress.parse(server.url), {}, DicomwebOptions(attempts=1))


def test_qido_server_ignoring_offset_does_not_loop() -> None:
    """A QIDO server that ignores ``offset`` must not make the search page forever."""
    claimed = _claimed()
    with serving(Handler, claimed=claimed, ignore_offset=True, pages=20) as server:
        found = search_instances(DicomwebAddress.parse(server.url), {}, DicomwebOptions(attempts=1))
        asked = len(server.seen)
    assert asked < 5, f"{asked} QIDO pages asked for"
    assert sorted(f.sop_uid for f in found) == sorted(c.sop for c in claimed)


# --- 1c. a STOW-RS target that refuses ------------------------------------------------------

STOWED = ("CT_small.dcm", "MR_small.dcm", "JPEG2000.dcm")


def _stowed() -> list[Path]:
    return [PYDICOM_TEST_FILES / name for name in STOWED]


@pytest.mark.parametrize("status", ["409", "202"])
def test_stow_answer_marks_exactly_the_refused_instance(status: str) -> None:
    """A 409 (or 202) answer whose FailedSOPSequence names one instance (reason 0xA700) and
    whose ReferencedSOPSequence names the others: that one fails, the others are stored."""
    paths = _stowed()
    uids = {_uid(p) for p in paths}
    refused = _uid(paths[1])
    with serving(Handler, claimed=[], stow=status, refuse={refused}) as server:
        outcomes = stow(DicomwebAddress.parse(server.url), paths, DicomwebOptions(attempts=1))
        posted = server.state["posted"]
    assert sorted(posted) == sorted(uids)  # one request, every file in it
    assert sorted(o.path for o in outcomes) == sorted(str(p) for p in paths)
    by_uid = {o.sop_instance_uid: o for o in outcomes}
    assert set(by_uid) == uids
    assert (by_uid[refused].status, by_uid[refused].ok) == (REFUSED, False)
    assert "0xA700" in by_uid[refused].message
    assert all((o.status, o.ok) == (0, True) for u, o in by_uid.items() if u != refused)


def test_stow_http_500_fails_every_file() -> None:
    """A STOW-RS request answered with HTTP 500 marks every file of it as not stored."""
    paths = _stowed()
    with serving(Handler, claimed=[], stow="http-500", refuse=set()) as server:
        outcomes = stow(DicomwebAddress.parse(server.url), paths, DicomwebOptions(attempts=1))
    assert sorted(o.path for o in outcomes) == sorted(str(p) for p in paths)
    assert all(o.status is None and not o.ok for o in outcomes)
    assert {o.message for o in outcomes} == {"not stored (STOW-RS: HTTP 500)"}


@pytest.mark.parametrize("status", ["409", "http-500"])
def test_ingest_send_to_a_refusing_server_gives_not_stored_rows(
    status: str, tmp_path: Path, client: Client
) -> None:
    """``ingest(send_to=...)`` to a server that refuses one instance (409) or everything
    (HTTP 500): exactly the refused instances get ``not_stored`` error rows, and keep
    their ``instances`` rows (a failed send costs only the send), the fault in
    ``warnings``."""
    paths = _stowed()
    refused = {str(paths[1])} if status == "409" else {str(p) for p in paths}
    lake = tmp_path / "lake"
    with serving(Handler, claimed=[], stow=status, refuse={_uid(paths[1])}) as server:
        summary = dicomflow.ingest(
            [str(p) for p in paths],
            out=str(lake),
            pixels=False,
            send_to=server.url,
            send_options=DicomwebOptions(attempts=1),
            client=client,
            progress=False,
        )
        posted = list(server.state.get("posted", []))
    assert sorted(set(posted)) == sorted(_uid(p) for p in paths)  # each was offered
    assert summary.error_codes == {"not_stored": len(refused)}
    assert summary.accounted and summary.rows == len(paths)
    instances = dicomflow.read_lake(str(lake)).instances(columns=["source", "warnings"])
    warned = {r["source"] for r in instances.to_pylist() if "store: not_stored" in r["warnings"]}
    assert warned == refused
    errors = dicomflow.read_lake(str(lake)).errors().to_pylist()
    assert sorted(e["source"] for e in errors) == sorted(refused)
    assert {(e["stage"], e["code"]) for e in errors} == {("store", "not_stored")}
    assert _workers(client) == 2


# --- 2. credentials, against a real Orthanc with basic authentication ------------------------

CAPTURE = "dicomflow-test-capture"


def _set_env(name: str, value: str) -> None:
    os.environ[name] = value


def _unset_env(name: str) -> None:
    os.environ.pop(name, None)


@contextmanager
def worker_env(client: Client, name: str, value: str) -> Iterator[None]:
    """``name=value`` in every worker's environment (as a deployment would set it)."""
    client.run(_set_env, name, value)
    try:
        yield
    finally:
        client.run(_unset_env, name)


def _capture_logs(folder: str) -> int:
    handler = logging.FileHandler(f"{folder}/worker-{os.getpid()}.log")
    handler.set_name(CAPTURE)
    handler.setLevel(logging.DEBUG)
    handler.setFormatter(logging.Formatter("%(name)s %(levelname)s %(message)s"))
    root = logging.getLogger()
    previous = root.level
    root.addHandler(handler)
    root.setLevel(logging.DEBUG)
    return previous


def _release_logs(level: int) -> None:
    root = logging.getLogger()
    for handler in [h for h in root.handlers if h.get_name() == CAPTURE]:
        root.removeHandler(handler)
        handler.close()
    root.setLevel(level)


@contextmanager
def worker_logs(client: Client, folder: Path) -> Iterator[Path]:
    """Every worker's log records, DEBUG and up, written to files in ``folder``."""
    folder.mkdir(parents=True)
    levels = client.run(_capture_logs, str(folder))
    try:
        yield folder
    finally:
        for worker, level in levels.items():
            client.run(_release_logs, level, workers=[worker])


@pytest.fixture(scope="module")
def secured(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Orthanc]:
    """Orthanc with DICOMweb behind basic authentication (alice), holding CT and MR."""
    require(orthanc_binary() is not None, "Orthanc (Debian package orthanc)")
    workdir = tmp_path_factory.mktemp("secured-orthanc")
    with running_orthanc(workdir, dicomweb=True, credentials={"alice": PASSWORD}) as server:
        for name in UPLOADS:
            assert server.upload(PYDICOM_TEST_FILES / name)
        yield server


def _studies() -> dict[str, str]:
    return {
        "StudyInstanceUID": "\\".join(
            _uid(PYDICOM_TEST_FILES / n, "StudyInstanceUID") for n in UPLOADS
        )
    }


def _secrets() -> list[str]:
    return [PASSWORD, base64.b64encode(f"alice:{PASSWORD}".encode()).decode()]


def test_basic_auth_works_and_a_wrong_password_is_a_401_that_hides_it(
    secured: Orthanc, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The right password (from the environment) lets QIDO-RS through; a wrong one, or none,
    is a DicomwebError naming HTTP 401 and never the password; an unset variable is a
    ConfigError naming the variable."""
    address = DicomwebAddress.parse(secured.dicomweb)
    options = DicomwebOptions(username="alice", password_env=PASSWORD_ENV, attempts=1)
    monkeypatch.setenv(PASSWORD_ENV, PASSWORD)
    found = search_instances(address, {}, options)
    assert {f.sop_uid for f in found} == {_uid(PYDICOM_TEST_FILES / n) for n in UPLOADS}
    wrong = f"pw-wrong-{PASSWORD[::-1]}"
    monkeypatch.setenv(PASSWORD_ENV, wrong)
    with pytest.raises(DicomwebError) as raised:
        search_instances(address, {}, options)
    assert raised.value.status == 401 and str(raised.value) == "QIDO-RS search: HTTP 401"
    shown = "".join(traceback.format_exception(raised.value)) + repr(raised.value)
    assert wrong not in shown and PASSWORD not in shown
    with pytest.raises(DicomwebError, match="HTTP 401"):
        search_instances(address, {}, DicomwebOptions(attempts=1))
    monkeypatch.delenv(PASSWORD_ENV)
    with pytest.raises(ConfigError, match=PASSWORD_ENV):
        search_instances(address, {}, options)


def test_ingest_with_credentials_leaks_the_password_nowhere(
    secured: Orthanc,
    tmp_path: Path,
    client: Client,
    monkeypatch: pytest.MonkeyPatch,
    caplog: pytest.LogCaptureFixture,
) -> None:
    """An ingest from, and a STOW back to, the secured Orthanc: every instance arrives and is
    stored, and neither the password nor its basic-auth token is in any log record (client
    and workers, DEBUG and up) or in any byte of any file of the lake."""
    lake = tmp_path / "lake"
    options = DicomwebOptions(username="alice", password_env=PASSWORD_ENV, attempts=1)
    monkeypatch.setenv(PASSWORD_ENV, PASSWORD)
    with (
        worker_env(client, PASSWORD_ENV, PASSWORD),
        worker_logs(client, tmp_path / "worker-logs") as logs,
        caplog.at_level(logging.DEBUG),
    ):
        summary = dicomflow.ingest(
            [secured.dicomweb],
            out=str(lake),
            pixels=False,
            query=_studies(),
            dicomweb=options,
            send_to=secured.dicomweb,
            client=client,
            progress=False,
        )
    assert (summary.rows, summary.errors) == (len(UPLOADS), 0)
    assert caplog.records  # the capture saw the client's requests
    worker_text = "".join(p.read_text(errors="replace") for p in sorted(logs.glob("*.log")))
    assert "GET /dicom-web/studies/" in worker_text  # ... and the workers': WADO-RS
    assert "POST /dicom-web/studies" in worker_text  # ... and STOW-RS
    for secret in _secrets():
        for record in caplog.records:
            assert secret not in record.getMessage(), record.name
            assert secret not in (record.exc_text or ""), record.name
        assert secret not in caplog.text
        assert secret not in worker_text
        for path, data in _lake_bytes(lake):
            assert secret.encode() not in data, path


def test_password_only_in_the_client_process_is_a_clear_error(
    secured: Orthanc, tmp_path: Path, client: Client, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Workers without the password variable: the ingest must fail naming the variable, not
    report the server's instances as not delivered."""
    client.run(_unset_env, PASSWORD_ENV)
    monkeypatch.setenv(PASSWORD_ENV, PASSWORD)
    with pytest.raises(ConfigError, match=PASSWORD_ENV):
        dicomflow.ingest(
            [secured.dicomweb],
            out=str(tmp_path / "lake"),
            pixels=False,
            query=_studies(),
            dicomweb=DicomwebOptions(username="alice", password_env=PASSWORD_ENV, attempts=1),
            client=client,
            progress=False,
        )


def test_send_password_missing_on_workers_names_the_variable_in_not_stored_rows(
    secured: Orthanc, tmp_path: Path, client: Client, monkeypatch: pytest.MonkeyPatch
) -> None:
    """STOW-RS from workers without the password variable: every instance becomes a
    ``not_stored`` row whose message names the variable (never its value), and the
    ingest itself completes."""
    client.run(_unset_env, PASSWORD_ENV)
    monkeypatch.setenv(PASSWORD_ENV, PASSWORD)
    paths = _stowed()
    lake = tmp_path / "lake"
    summary = dicomflow.ingest(
        [str(p) for p in paths],
        out=str(lake),
        pixels=False,
        send_to=secured.dicomweb,
        send_options=DicomwebOptions(username="alice", password_env=PASSWORD_ENV, attempts=1),
        client=client,
        progress=False,
    )
    assert summary.error_codes == {"not_stored": len(paths)}
    errors = dicomflow.read_lake(str(lake)).errors().to_pylist()
    assert sorted(e["source"] for e in errors) == sorted(str(p) for p in paths)
    assert all(PASSWORD_ENV in e["message"] for e in errors), errors[0]["message"]
    assert not any(PASSWORD in e["message"] for e in errors)


# --- 3. TLS ----------------------------------------------------------------------------------


@dataclass(frozen=True)
class Pki:
    """A test CA, and files for a server certificate (127.0.0.1) and a client certificate."""

    ca: trustme.CA
    ca_pem: Path
    server: trustme.LeafCert
    orthanc_pem: Path  # the server certificate followed by its private key
    client_cert: Path
    client_key: Path


@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> Pki:
    folder = tmp_path_factory.mktemp("dicomweb-pki")
    ca = trustme.CA()
    server = ca.issue_cert("127.0.0.1")
    client = ca.issue_cert("dicomflow-client")
    pki = Pki(
        ca,
        folder / "ca.pem",
        server,
        folder / "orthanc.pem",
        folder / "client.pem",
        folder / "client.key",
    )
    ca.cert_pem.write_to_path(str(pki.ca_pem))
    chain = b"".join(blob.bytes() for blob in server.cert_chain_pems)
    pki.orthanc_pem.write_bytes(chain + server.private_key_pem.bytes())
    client.cert_chain_pems[0].write_to_path(str(pki.client_cert))
    client.private_key_pem.write_to_path(str(pki.client_key))
    return pki


def _https_get(url: str, ca: Path, data: bytes | None = None) -> bytes:
    context = ssl.create_default_context(cafile=str(ca))
    request = urllib.request.Request(url, data=data, method="POST" if data else "GET")
    with urllib.request.urlopen(request, timeout=10, context=context) as response:
        return bytes(response.read())


def _orthanc_https_ready(process: subprocess.Popen[bytes], log: Path, rest: str, ca: Path) -> str:
    """ "" once Orthanc answers HTTPS; else why it does not (from its log and exit status)."""
    reason = "Orthanc did not start within 30 s"
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        text = log.read_text(errors="replace")
        if process.poll() is not None:
            return f"Orthanc exited ({process.returncode}); its log ends {text[-300:]!r}"
        if "Orthanc has started" in text:
            if "HTTPS encryption is enabled" not in text:
                return "Orthanc started without HTTPS (no SSL support in this build)"
            try:
                _https_get(f"{rest}/system", ca)
                return ""
            except OSError as exc:  # URLError, SSLError, ConnectionError
                with suppress(subprocess.TimeoutExpired):
                    process.wait(timeout=1)
                if process.poll() is not None:  # Debian 12's build: SIGSEGV in civetweb
                    return f"Orthanc died on its first HTTPS request ({process.returncode})"
                reason = f"Orthanc does not answer HTTPS ({type(exc).__name__})"
        time.sleep(0.1)
    return reason


@contextmanager
def https_orthanc(workdir: Path, pki: Pki) -> Iterator[tuple[str, str]]:
    """Orthanc with its DICOMweb plugin over HTTPS (``SslEnabled``): (REST root, "") when
    it works, else ("", why not)."""
    binary = orthanc_binary()
    assert binary is not None
    workdir.mkdir(parents=True, exist_ok=True)
    http_port = free_port()
    config = {
        "Name": "dicomflow-tests-https",
        "StorageDirectory": str(workdir / "storage"),
        "IndexDirectory": str(workdir / "storage"),
        "HttpPort": http_port,
        "DicomPort": free_port(),
        "RemoteAccessAllowed": False,
        "AuthenticationEnabled": False,
        "SslEnabled": True,
        "SslCertificate": str(pki.orthanc_pem),
        "Plugins": [str(DICOMWEB_PLUGIN)],
        "DicomWeb": {"Enable": True, "Root": f"{ROOT}/"},
    }
    (workdir / "orthanc.json").write_text(json.dumps(config))
    log_path = workdir / "orthanc.log"
    with log_path.open("ab") as log:
        process = subprocess.Popen(
            [binary, str(workdir / "orthanc.json")],
            stdout=log,
            stderr=subprocess.STDOUT,
            cwd=workdir,
        )
        try:
            rest = f"https://127.0.0.1:{http_port}"
            broken = _orthanc_https_ready(process, log_path, rest, pki.ca_pem)
            yield ("", broken) if broken else (rest, "")
        finally:
            process.terminate()
            try:
                process.wait(timeout=20)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait(timeout=20)


@dataclass(frozen=True)
class HttpsPeer:
    """A DICOMweb server over HTTPS, what its QIDO-RS should list, and which server it is."""

    url: str
    sop_uids: set[str]
    kind: str


@pytest.fixture(scope="module")
def https_peer(tmp_path_factory: pytest.TempPathFactory, pki: Pki) -> Iterator[HttpsPeer]:
    """Orthanc over HTTPS when its build can serve it; else a stdlib HTTPS server answering
    QIDO-RS (the Debian 12 build, Orthanc 1.10.1 with libcivetweb1 1.15, starts, logs
    "HTTPS encryption is enabled", then dies with SIGSEGV on the first HTTPS request)."""
    if orthanc_binary() is not None:
        with https_orthanc(tmp_path_factory.mktemp("https-orthanc"), pki) as (rest, broken):
            if not broken:
                path = PYDICOM_TEST_FILES / "CT_small.dcm"
                _https_get(f"{rest}/instances", pki.ca_pem, path.read_bytes())
                url = f"dicomweb+https://127.0.0.1:{rest.rsplit(':', 1)[1]}{ROOT}"
                yield HttpsPeer(url, {_uid(path)}, "orthanc")
                return
        kind = f"stdlib ({broken})"
    else:
        kind = "stdlib (Orthanc is not installed)"
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    pki.server.configure_cert(context)
    claimed = _claimed()
    with serving(Handler, tls=context, claimed=claimed) as server:
        yield HttpsPeer(server.url, {c.sop for c in claimed}, kind)


@pytest.fixture
def no_ca_bundle_env(monkeypatch: pytest.MonkeyPatch) -> None:
    """requests lets REQUESTS_CA_BUNDLE / CURL_CA_BUNDLE override ``tls_ca`` (see
    test_tls_ca_wins_over_requests_ca_bundle): without them, ``tls_ca`` is what decides."""
    for variable in ("REQUESTS_CA_BUNDLE", "CURL_CA_BUNDLE"):
        monkeypatch.delenv(variable, raising=False)


@pytest.mark.usefixtures("no_ca_bundle_env")
def test_https_search_trusts_tls_ca_and_nothing_else(https_peer: HttpsPeer, pki: Pki) -> None:
    """QIDO-RS over dicomweb+https works with ``tls_ca`` = the test CA, and fails with a
    DicomwebError (certificate verify failed) with the system trust store. The server is
    Orthanc when its build serves HTTPS, else a stdlib HTTPS server (``https_peer.kind``)."""
    address = DicomwebAddress.parse(https_peer.url)
    found = search_instances(address, {}, DicomwebOptions(tls_ca=str(pki.ca_pem), attempts=1))
    assert {f.sop_uid for f in found} == https_peer.sop_uids, https_peer.kind
    with pytest.raises(DicomwebError, match=r"^QIDO-RS search: SSLError$") as raised:
        search_instances(address, {}, DicomwebOptions(attempts=1))
    assert "CERTIFICATE_VERIFY_FAILED" in str(raised.value.__context__)


def test_tls_ca_wins_over_requests_ca_bundle(
    https_peer: HttpsPeer, pki: Pki, monkeypatch: pytest.MonkeyPatch
) -> None:
    """``tls_ca`` must be trusted even when REQUESTS_CA_BUNDLE names the system bundle (as it
    does in many containers and corporate machines)."""
    monkeypatch.setenv("REQUESTS_CA_BUNDLE", certifi.where())
    address = DicomwebAddress.parse(https_peer.url)
    found = search_instances(address, {}, DicomwebOptions(tls_ca=str(pki.ca_pem), attempts=1))
    assert {f.sop_uid for f in found} == https_peer.sop_uids


@pytest.mark.usefixtures("no_ca_bundle_env")
def test_client_certificate_is_presented(pki: Pki) -> None:
    """A server that requires a client certificate from the test CA answers QIDO-RS with
    ``tls_cert``/``tls_key``, and refuses the same search without them."""
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    pki.server.configure_cert(context)
    pki.ca.configure_trust(context)
    context.verify_mode = ssl.CERT_REQUIRED
    claimed = _claimed()
    with serving(Handler, tls=context, claimed=claimed) as server:
        address = DicomwebAddress.parse(server.url)
        mutual = DicomwebOptions(
            tls_ca=str(pki.ca_pem),
            tls_cert=str(pki.client_cert),
            tls_key=str(pki.client_key),
            attempts=1,
        )
        found = search_instances(address, {}, mutual)
        assert sorted(f.sop_uid for f in found) == sorted(c.sop for c in claimed)
        with pytest.raises(DicomwebError, match="QIDO-RS search"):
            search_instances(address, {}, DicomwebOptions(tls_ca=str(pki.ca_pem), attempts=1))
