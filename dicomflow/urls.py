"""URL helpers shared by every layer: redaction of credentials before anything is shown."""

from __future__ import annotations

from urllib.parse import urlsplit, urlunsplit


def redact_url(url: str) -> str:
    """Drop user info, query string and fragment from a URL, for logs, rows and task keys.

    >>> redact_url("https://user:secret@host/x.dcm?sig=abc")
    'https://host/x.dcm'
    """
    if "://" not in url:
        return url
    parts = urlsplit(url)
    host = parts.hostname or ""
    if parts.port:
        host = f"{host}:{parts.port}"
    return urlunsplit((parts.scheme, host, parts.path, "", ""))
