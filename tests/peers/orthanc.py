"""A real Orthanc PACS for tests: generated configuration, free ports, loopback only."""

from __future__ import annotations

import base64
import json
import os
import shutil
import socket
import subprocess
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

ORTHANC_AET = "ORTHANC"
DICOMWEB_PLUGIN = Path("/usr/share/orthanc/plugins/libOrthancDicomWeb.so")


# Ports handed out in this process. The kernel may give the same free port to two
# binds in a row once the first socket is closed, and a test asking for two ports
# (Orthanc's DICOM and HTTP ports) would then start a server on one port twice.
_HANDED_OUT: set[int] = set()


def free_port() -> int:
    """A loopback port free now and not handed out before in this process."""
    while True:
        with socket.socket() as sock:
            sock.bind(("127.0.0.1", 0))
            port = int(sock.getsockname()[1])
        if port not in _HANDED_OUT:
            _HANDED_OUT.add(port)
            return port


def orthanc_binary() -> str | None:
    return shutil.which("Orthanc") or (
        "/usr/sbin/Orthanc" if Path("/usr/sbin/Orthanc").exists() else None
    )


@dataclass(frozen=True)
class Orthanc:
    """A running Orthanc: its DICOM port, AE title, REST root and process."""

    dicom_port: int
    http_port: int
    aet: str = ORTHANC_AET
    process: subprocess.Popen[bytes] | None = field(default=None, repr=False, compare=False)
    credentials: dict[str, str] | None = field(default=None, repr=False, compare=False)

    def kill(self) -> None:
        """SIGKILL Orthanc (a crash: no clean shutdown) and reap it."""
        if self.process is not None:
            self.process.kill()
            self.process.wait(timeout=20)

    @property
    def url(self) -> str:
        return f"dimse://{self.aet}@127.0.0.1:{self.dicom_port}"

    @property
    def dicomweb(self) -> str:
        """The DICOMweb root (served when Orthanc runs with its DICOMweb plugin)."""
        return f"dicomweb+http://127.0.0.1:{self.http_port}/dicom-web"

    @property
    def rest(self) -> str:
        return f"http://127.0.0.1:{self.http_port}"

    def _request(self, path: str, data: bytes | None = None) -> urllib.request.Request:
        request = urllib.request.Request(
            f"{self.rest}{path}", data=data, method="POST" if data is not None else "GET"
        )
        if self.credentials:
            user, password = next(iter(self.credentials.items()))
            token = base64.b64encode(f"{user}:{password}".encode()).decode()
            request.add_header("Authorization", f"Basic {token}")
        return request

    def get(self, path: str) -> object:
        with urllib.request.urlopen(self._request(path), timeout=30) as response:
            return json.loads(response.read())

    def get_bytes(self, path: str) -> bytes:
        with urllib.request.urlopen(self._request(path), timeout=30) as response:
            return bytes(response.read())

    def upload(self, path: Path) -> bool:
        """POST one file to /instances; False when Orthanc refuses it (not DICOM, say)."""
        request = self._request("/instances", path.read_bytes())
        try:
            with urllib.request.urlopen(request, timeout=60):
                return True
        except urllib.error.HTTPError:
            return False


@dataclass(frozen=True)
class OrthancTls:
    """DICOM TLS for Orthanc: its certificate and key, and the certificates it trusts."""

    certificate: Path
    private_key: Path
    trusted: Path
    require_client_certificate: bool = True


@contextmanager
def running_orthanc(
    workdir: Path,
    *,
    calling_aets: dict[str, int] | None = None,
    tls: OrthancTls | None = None,
    dicom_port: int | None = None,
    dicomweb: bool = False,
    http_port: int | None = None,
    credentials: dict[str, str] | None = None,
    env: dict[str, str] | None = None,
) -> Iterator[Orthanc]:
    """Start Orthanc in ``workdir`` and stop it afterwards.

    Starting again in the same ``workdir`` (with the same ``dicom_port``) reopens
    the same storage and index, as a restarted PACS would. With ``dicomweb`` the
    DICOMweb plugin serves ``/dicom-web``; ``credentials`` (user → password)
    turns HTTP basic authentication on. ``env`` is added to Orthanc's environment
    (``TCP_NODELAY=1`` makes its DCMTK network layer disable Nagle's algorithm, as
    on the C-STORE associations it opens for C-MOVE).
    """
    binary = orthanc_binary()
    if binary is None:
        raise FileNotFoundError("Orthanc is not installed")
    workdir.mkdir(parents=True, exist_ok=True)
    dicom_port, http_port = dicom_port or free_port(), http_port or free_port()
    modalities = {
        name.lower(): [name, "127.0.0.1", port]
        for name, port in (calling_aets or {"DICOMFLOW": 11112}).items()
    }
    config = {
        "Name": "dicomflow-tests",
        "StorageDirectory": str(workdir / "storage"),
        "IndexDirectory": str(workdir / "storage"),
        "HttpPort": http_port,
        "DicomPort": dicom_port,
        "DicomAet": ORTHANC_AET,
        "RemoteAccessAllowed": False,
        "AuthenticationEnabled": bool(credentials),
        "RegisteredUsers": credentials or {},
        "DicomCheckCalledAet": True,
        "DicomAlwaysAllowEcho": True,
        "DicomAlwaysAllowFind": True,
        "DicomAlwaysAllowGet": True,
        "DicomAlwaysAllowMove": True,
        "DicomAlwaysAllowStore": True,
        "DicomModalities": modalities,
        "Plugins": [str(DICOMWEB_PLUGIN)] if dicomweb else [],
        "DicomWeb": {"Enable": dicomweb, "Root": "/dicom-web/"},
        "StableAge": 1,
    }
    if tls is not None:
        config.update(
            {
                "DicomTlsEnabled": True,
                "DicomTlsCertificate": str(tls.certificate),
                "DicomTlsPrivateKey": str(tls.private_key),
                "DicomTlsTrustedCertificates": str(tls.trusted),
                "DicomTlsRemoteCertificateRequired": tls.require_client_certificate,
            }
        )
    config_path = workdir / "orthanc.json"
    config_path.write_text(json.dumps(config))
    log = (workdir / "orthanc.log").open("ab")  # a restart keeps the earlier log
    process = subprocess.Popen(
        [binary, str(config_path)],
        stdout=log,
        stderr=subprocess.STDOUT,
        cwd=workdir,
        env={**os.environ, **env} if env else None,
    )
    try:
        server = Orthanc(dicom_port, http_port, process=process, credentials=credentials)
        deadline = time.monotonic() + 60
        while True:
            if process.poll() is not None:
                tail = (workdir / "orthanc.log").read_text(errors="replace")[-2000:]
                raise RuntimeError(f"Orthanc exited at start-up; orthanc.log ends:\n{tail}")
            try:
                server.get("/system")
                break
            except (urllib.error.URLError, ConnectionError, TimeoutError):
                if time.monotonic() > deadline:
                    raise RuntimeError("Orthanc did not start within 60 s") from None
                time.sleep(0.2)
        yield server
    finally:
        process.terminate()
        try:
            process.wait(timeout=20)
        except subprocess.TimeoutExpired:
            process.kill()
        log.close()
