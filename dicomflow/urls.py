"""URL helpers shared by every layer: redaction of credentials before anything is shown."""

from __future__ import annotations

from typing import Any
from urllib.parse import urlsplit, urlunsplit


def redact_url(url: str) -> str:
    """Drop user info and query string (where credentials and signatures live) from a URL,
    for logs and rows. Used for display only: fetching always uses the real URL.

    >>> redact_url("https://user:secret@host/x.dcm?sig=abc")
    'https://host/x.dcm'
    """
    url = escaped_name(url)
    if "://" not in url:
        return url
    parts = urlsplit(url)
    if parts.scheme == "dimse" and not parts.password and not parts.query:
        return url  # the user part of a dimse:// URL is the called AE title, not a secret
    if not parts.username and not parts.password and not parts.query:
        return url
    host = parts.hostname or ""
    if parts.port:
        host = f"{host}:{parts.port}"
    return urlunsplit((parts.scheme, host, parts.path, "", parts.fragment))


def in_scheme_of(url: str, fs: Any, path: str) -> str:
    """``path`` of the fsspec filesystem ``fs`` as a URL in the scheme ``url`` was written
    in: adlfs names ``az://`` paths ``abfs://``, and rows and messages should say where
    the user pointed. Other schemes get the filesystem's own."""
    scheme = url.split("://", 1)[0] if "://" in url else ""
    protocols = (fs.protocol,) if isinstance(fs.protocol, str) else tuple(fs.protocol)
    return f"{scheme}://{path}" if scheme in protocols else str(fs.unstrip_protocol(path))


def escaped_name(name: str) -> str:
    """``name`` as printable text that UTF-8 can encode.

    A file name that is not valid UTF-8 comes from the OS with each undecodable byte
    as a lone surrogate (``surrogateescape``), which no UTF-8 writer (Parquet, JSON, a
    log) accepts. Each such byte becomes a backslash, ``x`` and two hex digits, as
    ``ls -b`` and Python's ``repr`` show it; other text is returned as it is.
    """
    if is_encodable(name):
        return name
    return "".join(_escaped_char(ch) for ch in name)


def is_encodable(name: str) -> bool:
    """Whether UTF-8 can encode ``name`` (it holds no lone surrogates)."""
    return not any(_SURROGATES[0] <= ord(ch) <= _SURROGATES[1] for ch in name)


_SURROGATES = (0xD800, 0xDFFF)
_ESCAPED_BYTES = (0xDC80, 0xDCFF)  # the surrogates surrogateescape maps bytes 0x80-0xFF to


def _escaped_char(ch: str) -> str:
    code = ord(ch)
    if _ESCAPED_BYTES[0] <= code <= _ESCAPED_BYTES[1]:
        return f"\\x{code - 0xDC00:02x}"
    if _SURROGATES[0] <= code <= _SURROGATES[1]:
        return f"\\u{code:04x}"
    return ch
