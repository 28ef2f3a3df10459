"""``dimse://CALLED_AE@host:port`` addresses and the options that go with them.

Credentials never live in the URL: a password is read from the environment
variable named by ``password_env``, at the moment an association is opened.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Literal
from urllib.parse import urlsplit

from dicomflow.errors import ConfigError

_AE = re.compile(r"^[\x20-\x5b\x5d-\x7e]{1,16}$")  # default repertoire, no backslash


def valid_ae_title(title: str) -> str:
    """An AE title (1-16 characters of the default repertoire, not all spaces)."""
    if not _AE.match(title) or not title.strip():
        raise ConfigError("an AE title must be 1-16 printable characters without backslash")
    return title


@dataclass(frozen=True)
class DimseAddress:
    """Where a DICOM peer listens."""

    called_ae: str
    host: str
    port: int

    @classmethod
    def parse(cls, url: str) -> DimseAddress:
        parts = urlsplit(url)
        if parts.scheme != "dimse" or not parts.hostname or parts.port is None:
            raise ConfigError("a DIMSE address looks like dimse://CALLED_AE@host:port")
        if parts.password is not None or parts.query:
            raise ConfigError(
                "put credentials in options (--username, --password-env), never in the URL"
            )
        return cls(valid_ae_title(parts.username or "ANY-SCP"), parts.hostname, parts.port)

    def __str__(self) -> str:
        return f"dimse://{self.called_ae}@{self.host}:{self.port}"


@dataclass(frozen=True)
class TlsOptions:
    """TLS for the association (TLS 1.2 or later, per BCP 195)."""

    ca_file: str | None = None
    cert_file: str | None = None
    key_file: str | None = None

    @classmethod
    def from_files(
        cls, ca_file: str | None, cert_file: str | None, key_file: str | None
    ) -> TlsOptions | None:
        """TLS when a CA or a certificate is named, else None: the one rule shared by the
        CLI and pipeline specs."""
        if not (ca_file or cert_file):
            return None
        return cls(ca_file, cert_file, key_file)


@dataclass(frozen=True)
class DimseOptions:
    """How to associate: who we are, how long to wait, TLS and user identity."""

    calling_ae: str = "DICOMFLOW"
    connect_timeout: float = 10.0
    acse_timeout: float = 30.0
    dimse_timeout: float = 60.0
    network_timeout: float = 60.0
    max_pdu: int = 0  # 0: unlimited, the fastest for large transfers
    tls: TlsOptions | None = None
    username: str | None = None
    password_env: str | None = None
    extra: dict[str, str] = field(default_factory=dict)

    def __post_init__(self) -> None:
        valid_ae_title(self.calling_ae)


# Where a query is made, and the information model it is made in (PS3.4 C.3).
Level = Literal["patient", "study", "series", "image"]
Model = Literal["patient", "study"]


@dataclass(frozen=True)
class MoveDestination:
    """Where a C-MOVE sends to: our AE title as the peer knows it, and the port (and
    interface) our Storage SCP listens on for the run."""

    ae_title: str
    port: int
    host: str = "0.0.0.0"  # noqa: S104 - the peer connects back to us

    def __post_init__(self) -> None:
        valid_ae_title(self.ae_title)
        if not 0 < self.port < 65536:
            raise ConfigError("the C-MOVE destination port must be between 1 and 65535")
