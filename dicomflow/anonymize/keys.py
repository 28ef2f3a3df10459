"""The pseudonymisation key: read from a file or an environment variable, never from argv.

The key never appears in a repr, a log line, a task key or an output. A missing
or short key is a configuration error raised before any work starts.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path

from dicomflow.errors import ConfigError

MIN_KEY_BYTES = 32


@dataclass(frozen=True)
class SecretKey:
    """Key bytes that do not print themselves."""

    value: bytes = field(repr=False)

    def __post_init__(self) -> None:
        if len(self.value) < MIN_KEY_BYTES:
            raise ConfigError(
                f"the de-identification key is too short: at least {MIN_KEY_BYTES} bytes "
                "are needed (for example `openssl rand -hex 32`)"
            )

    def __repr__(self) -> str:
        return "SecretKey(<hidden>)"

    __str__ = __repr__


def load_key(*, key_file: str | None = None, key_env: str | None = None) -> SecretKey:
    """The key from ``key_file`` (surrounding whitespace stripped) or the variable ``key_env``."""
    if key_file and key_env:
        raise ConfigError("give the key either as a file or as an environment variable, not both")
    if key_file:
        try:
            data = Path(key_file).read_bytes().strip()
        except OSError as exc:
            raise ConfigError(f"cannot read the key file ({type(exc).__name__})") from None
        return SecretKey(data)
    if key_env:
        value = os.environ.get(key_env)
        if not value:
            raise ConfigError(f"the environment variable {key_env} holding the key is not set")
        return SecretKey(value.strip().encode())
    raise ConfigError("de-identification needs a key: --key-file FILE or --key-env VARIABLE")
