"""URL helpers shared by every layer: redaction of credentials before anything is shown."""

from __future__ import annotations

from urllib.parse import urlsplit, urlunsplit


def redact_url(url: str) -> str:
    """Drop user info and query string (where credentials and signatures live) from a URL,
    for logs and rows. Used for display only: fetching always uses the real URL.

    >>> redact_url("https://user:secret@host/x.dcm?sig=abc")
    'https://host/x.dcm'
    """
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
