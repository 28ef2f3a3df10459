"""An OAuth2 issuer and a resource server that trusts it, both on loopback.

- :func:`running_issuer` starts panva's oidc-provider (npm, OpenID Certified; installed
  into ``.tools/`` by ``make test``) with a confidential client for the pipeline and one
  for the resource server. :meth:`Issuer.refresh_token_by_login` goes through the
  provider's own login and consent pages (the authorization code flow) and returns the
  refresh token a user would hand to a scheduled job.
- :func:`running_gate` is the resource server: an HTTP proxy in front of Orthanc's
  DICOMweb that lets a request through only when the issuer's introspection endpoint
  (RFC 7662) says its bearer token is active, and answers 401 otherwise, as an
  OAuth2-protected archive does.
"""

from __future__ import annotations

import re
import secrets
import shutil
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from urllib.parse import parse_qs, urljoin, urlsplit

import requests

from tests.peers.dcmtk import running_process
from tests.peers.orthanc import free_port

REPO = Path(__file__).resolve().parents[2]
PROVIDER_MODULE = REPO / ".tools" / "node_modules" / "oidc-provider" / "lib" / "index.js"
CLIENT_ID = "dicomflow"
REDIRECT_URI = "http://127.0.0.1/callback"


def oidc_provider_available() -> bool:
    return PROVIDER_MODULE.exists() and shutil.which("node") is not None


@dataclass(frozen=True)
class Issuer:
    """A running OpenID provider: its URL, the pipeline's client secret, and the
    resource server's."""

    url: str
    client_secret: str
    gate_secret: str

    @property
    def token_url(self) -> str:
        return f"{self.url}/token"

    def introspect(self, token: str) -> dict:
        """What the issuer says of ``token`` (RFC 7662), asked as the resource server."""
        answer = requests.post(
            f"{self.url}/token/introspection",
            data={"token": token},
            auth=("gate", self.gate_secret),
            timeout=10,
        )
        answer.raise_for_status()
        return dict(answer.json())

    def revoke(self, token: str) -> None:
        """Revoke ``token`` at the issuer (RFC 7009), as an administrator would."""
        answer = requests.post(
            f"{self.url}/token/revocation",
            data={"token": token, "token_type_hint": "access_token"},
            auth=(CLIENT_ID, self.client_secret),
            timeout=10,
        )
        answer.raise_for_status()

    def refresh_token_by_login(self, user: str = "alice") -> str:
        """Log in through the provider's pages, consent to offline access, and trade the
        authorization code for tokens; return the refresh token."""
        browser = requests.Session()
        answer = browser.get(
            f"{self.url}/auth",
            params={
                "client_id": CLIENT_ID,
                "response_type": "code",
                "scope": "openid offline_access dicomweb",
                "redirect_uri": REDIRECT_URI,
                "prompt": "consent",
                "state": secrets.token_hex(8),
            },
            allow_redirects=False,
            timeout=10,
        )
        for _ in range(10):
            location = urljoin(self.url, answer.headers["Location"])
            if location.startswith(REDIRECT_URI):
                break
            answer = browser.get(location, allow_redirects=False, timeout=10)
            if answer.status_code == 200:  # a login or consent page: submit its form
                action, body = re.findall(
                    r'<form[^>]*action="([^"]+)"[^>]*>(.*?)</form>', answer.text, re.S
                )[0]
                fields = dict(re.findall(r'name="([^"]+)" value="([^"]*)"', body))
                fields.update(login=user, password="any")
                answer = browser.post(
                    urljoin(self.url, action), data=fields, allow_redirects=False, timeout=10
                )
        else:
            raise AssertionError("the login never came back to the redirect URI")
        code = parse_qs(urlsplit(location).query)["code"][0]
        tokens = requests.post(
            self.token_url,
            data={"grant_type": "authorization_code", "code": code, "redirect_uri": REDIRECT_URI},
            auth=(CLIENT_ID, self.client_secret),
            timeout=10,
        )
        tokens.raise_for_status()
        return str(tokens.json()["refresh_token"])


@contextmanager
def running_issuer(workdir: Path, access_token_seconds: int = 3600) -> Iterator[Issuer]:
    """oidc-provider on a free loopback port; access tokens live ``access_token_seconds``."""
    if not oidc_provider_available():
        raise FileNotFoundError("oidc-provider (npm, into .tools/) or node is missing")
    port = free_port()
    issuer = Issuer(
        f"http://127.0.0.1:{port}", secrets.token_urlsafe(24), secrets.token_urlsafe(24)
    )
    env = {
        "PATH": "/usr/local/bin:/usr/bin:/bin",
        "OIDC_PROVIDER_MODULE": str(PROVIDER_MODULE),
        "CLIENT_SECRET": issuer.client_secret,
        "GATE_SECRET": issuer.gate_secret,
    }
    script = Path(__file__).with_name("oidc_provider.mjs")
    command = [shutil.which("node") or "node", str(script), str(port), str(access_token_seconds)]
    with running_process(command, port, workdir / "oidc-provider.log", "oidc-provider", env=env):
        yield issuer


@dataclass
class Gate:
    """The resource server's record: each bearer token it was shown, and each it refused."""

    url: str
    seen: list[str] = field(default_factory=list)
    refused: list[str] = field(default_factory=list)
    lock: threading.Lock = field(default_factory=threading.Lock)


@contextmanager
def running_gate(issuer: Issuer, upstream: str) -> Iterator[Gate]:
    """A proxy to ``upstream`` (Orthanc's ``http://host:port``) that admits only requests
    whose bearer token the issuer says is active; yields the gate's DICOMweb URL."""
    port = free_port()
    gate = Gate(f"dicomweb+http://127.0.0.1:{port}/dicom-web")

    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def log_message(self, *args: object) -> None:
            pass

        def _admitted(self) -> bool:
            header = self.headers.get("Authorization", "")
            token = header.removeprefix("Bearer ") if header.startswith("Bearer ") else ""
            active = bool(token) and issuer.introspect(token).get("active") is True
            with gate.lock:
                gate.seen.append(token)
                if not active:
                    gate.refused.append(token)
            return active

        def _forward(self) -> None:
            length = int(self.headers.get("Content-Length") or 0)
            body = self.rfile.read(length) if length else None
            if not self._admitted():
                self.send_response(401)
                self.send_header("WWW-Authenticate", 'Bearer error="invalid_token"')
                self.send_header("Content-Length", "0")
                self.end_headers()
                return
            headers = {
                k: v for k, v in self.headers.items() if k.lower() not in {"authorization", "host"}
            }
            answer = requests.request(
                self.command, upstream + self.path, data=body, headers=headers, timeout=120
            )
            content = answer.content
            self.send_response(answer.status_code)
            for key, value in answer.headers.items():
                if key.lower() not in {
                    "content-length",
                    "transfer-encoding",
                    "connection",
                    "content-encoding",
                }:
                    self.send_header(key, value)
            self.send_header("Content-Length", str(len(content)))
            self.end_headers()
            self.wfile.write(content)

        def do_GET(self) -> None:
            self._forward()

        def do_POST(self) -> None:
            self._forward()

    server = ThreadingHTTPServer(("127.0.0.1", port), Handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield gate
    finally:
        server.shutdown()
        server.server_close()
