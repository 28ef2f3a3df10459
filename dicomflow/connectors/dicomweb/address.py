"""``dicomweb+http(s)://host[:port]/root`` addresses, their options, and the HTTP client.

Credentials never live in the URL: a password, a bearer token, an OAuth2 client
secret or refresh token is read from the environment variable named in the options
when the client is built, and never appears in a repr, a log line or an error
message. TLS uses the system trust store, or ``tls_ca`` (for the token endpoint too);
``tls_cert``/``tls_key`` present a client certificate.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass, fields
from typing import TYPE_CHECKING, Any
from urllib.parse import urlsplit

import requests

from dicomflow.connectors.dicomweb.oauth import (
    OAuth2Bearer,
    TokenError,
    TokenGrant,
    check_token_url,
)
from dicomflow.errors import ConfigError, SourceError
from dicomflow.schemas.spec import DicomwebPeerConfig

if TYPE_CHECKING:  # dicomweb-client is imported when a client is opened, not before
    from dicomweb_client.api import DICOMwebClient

SCHEMES = {"dicomweb+http": "http", "dicomweb+https": "https"}


class DicomwebError(SourceError):
    """A DICOMweb request failed (unreachable, refused, timed out, or a bad answer)."""

    def __init__(self, message: str, *, status: int | None = None) -> None:
        super().__init__(message)
        self.status = status

    @classmethod
    def wrap(cls, action: str, exc: BaseException) -> DicomwebError:
        """A PHI-free error for ``exc`` raised while doing ``action``."""
        if isinstance(exc, DicomwebError):
            return exc
        if isinstance(exc, TokenError):  # its message is PHI-free and says what failed
            return cls(f"{action}: {exc}")
        response = getattr(exc, "response", None)
        if response is not None:
            status = int(response.status_code)
            return cls(f"{action}: HTTP {status}", status=status)
        if isinstance(exc, json.JSONDecodeError):  # an HTML login page, a proxy's error
            return cls(f"{action}: the server's answer is not JSON (is the URL a DICOMweb root?)")
        return cls(f"{action}: {type(exc).__name__}")


@dataclass(frozen=True)
class DicomwebAddress:
    """Where a DICOMweb service lives: its base URL (scheme, host, port and root path)."""

    base_url: str

    @classmethod
    def parse(cls, url: str) -> DicomwebAddress:
        parts = urlsplit(url)
        if parts.scheme not in SCHEMES or not parts.hostname:
            raise ConfigError("a DICOMweb address looks like dicomweb+https://host[:port]/root")
        if parts.username is not None or parts.password is not None or parts.query:
            raise ConfigError(
                "put credentials in options (username/password_env or token_env), never in the URL"
            )
        try:
            port = parts.port
        except ValueError:
            raise ConfigError("the DICOMweb address has an invalid port") from None
        host = f"{parts.hostname}:{port}" if port else parts.hostname
        return cls(f"{SCHEMES[parts.scheme]}://{host}{parts.path.rstrip('/')}")

    def __str__(self) -> str:
        return f"dicomweb+{self.base_url}"


@dataclass(frozen=True)
class DicomwebOptions:
    """How to talk to the service: timeouts, retries, TLS and credentials (by env
    variable name).

    A request that fails to connect or gets 408/429/503/504 is tried ``attempts``
    times in all, with exponential backoff from ``backoff_seconds`` (dicomweb-client's
    own retry logic).
    """

    connect_timeout: float = 10.0
    read_timeout: float = 120.0
    attempts: int = 4
    backoff_seconds: float = 0.5
    tls_ca: str | None = None
    tls_cert: str | None = None
    tls_key: str | None = None
    username: str | None = None
    password_env: str | None = None
    token_env: str | None = None
    oauth_token_url: str | None = None
    oauth_client_id: str | None = None
    oauth_client_secret_env: str | None = None
    oauth_refresh_token_env: str | None = None
    oauth_scope: str | None = None

    def __post_init__(self) -> None:
        if self.attempts < 1 or self.backoff_seconds < 0:
            raise ConfigError("attempts must be at least 1 and backoff_seconds not negative")
        ways = [self.password_env, self.token_env, self.oauth_token_url]
        if sum(bool(way) for way in ways) > 1:
            raise ConfigError(
                "give one way to authenticate: a password (username + password_env), "
                "a token (token_env) or OAuth2 (oauth_token_url)"
            )
        self._check_oauth()
        if self.password_env and not self.username:
            raise ConfigError("password_env needs a username")
        if bool(self.tls_cert) != bool(self.tls_key):
            raise ConfigError("a client certificate needs both tls_cert and tls_key")

    @classmethod
    def from_peer(cls, peer: DicomwebPeerConfig) -> DicomwebOptions:
        """The options of a spec's DICOMweb entry (source or sink): its fields by name."""
        names = [f.name for f in fields(cls)]
        return cls(**{name: getattr(peer, name) for name in names})

    def _check_oauth(self) -> None:
        oauth = [
            self.oauth_client_id,
            self.oauth_client_secret_env,
            self.oauth_refresh_token_env,
            self.oauth_scope,
        ]
        if not self.oauth_token_url:
            if any(oauth):
                raise ConfigError("the OAuth2 settings need oauth_token_url")
            return
        check_token_url(self.oauth_token_url)
        if not self.oauth_client_id:
            raise ConfigError("OAuth2 needs oauth_client_id")
        if not self.oauth_client_secret_env and not self.oauth_refresh_token_env:
            raise ConfigError(
                "OAuth2 needs oauth_client_secret_env (client credentials) or "
                "oauth_refresh_token_env (a refresh token)"
            )

    def token_grant(self) -> TokenGrant | None:
        """The OAuth2 grant these options name, with its secrets read from the
        environment; None without OAuth2."""
        if not self.oauth_token_url or not self.oauth_client_id:
            return None
        secret = self.oauth_client_secret_env
        refresh = self.oauth_refresh_token_env
        return TokenGrant(
            token_url=self.oauth_token_url,
            client_id=self.oauth_client_id,
            client_secret=_secret(secret) if secret else None,
            refresh_token=_secret(refresh) if refresh else None,
            scope=self.oauth_scope,
        )


def _secret(variable: str) -> str:
    value = os.environ.get(variable)
    if not value:
        raise ConfigError(
            f"the environment variable {variable} is not set (every Dask worker needs it too)"
        )
    return value


class _Session(requests.Session):
    """A session whose own ``verify`` (``tls_ca``) wins over REQUESTS_CA_BUNDLE and
    CURL_CA_BUNDLE, which requests otherwise prefers (psf/requests#3829)."""

    def merge_environment_settings(
        self, url: Any, proxies: Any, stream: Any, verify: Any, cert: Any
    ) -> dict[str, Any]:
        settings = super().merge_environment_settings(url, proxies, stream, verify, cert)
        if verify is None and self.verify is not True:
            settings["verify"] = self.verify
        return settings


def open_client(address: DicomwebAddress, options: DicomwebOptions) -> DICOMwebClient:
    """A dicomweb-client for ``address``, with the session configured from ``options``."""
    from dicomweb_client.api import DICOMwebClient

    session = _Session()
    if options.tls_ca:
        session.verify = options.tls_ca
    if options.tls_cert and options.tls_key:
        session.cert = (options.tls_cert, options.tls_key)
    if options.username and options.password_env:
        session.auth = (options.username, _secret(options.password_env))
    if options.token_env:
        session.headers["Authorization"] = f"Bearer {_secret(options.token_env)}"
    grant = options.token_grant()
    if grant is not None:
        session.auth = OAuth2Bearer(
            grant, verify=session.verify, timeout=options.connect_timeout + options.read_timeout
        )
    client = DICOMwebClient(
        address.base_url,
        session=session,
        timeout=(options.connect_timeout, options.read_timeout),
    )
    client.set_http_retry_params(
        retry=True,
        max_attempts=options.attempts,
        wait_exponential_multiplier=int(options.backoff_seconds * 500),  # waits 2**n times this
    )
    return client
