"""The files connector: local paths, directories, globs and any fsspec URL.

*Query* lists the inputs (on the client) as :class:`SourceRef` values; *fetch*
reads each input's header (on a worker) into an :class:`InstanceRecord`. The
connector holds only its URLs and storage options, so it pickles to workers;
filesystems are opened inside the task. Reading stops before Pixel Data, and
remote files are opened with a small block size so only header bytes travel.
A file damaged in or after its Pixel Data still gives its header (flagged, see
:class:`~dicomflow.dicom.header.DamagedHeader`), so it keeps its row. A file
whose name is not valid UTF-8 is read under its real name and shown (in rows,
logs and the ledger's digests) under its escaped name, its ``label``.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

import fsspec
from fsspec.core import url_to_fs
from fsspec.implementations.local import LocalFileSystem

from dicomflow.dicom.header import read_header
from dicomflow.errors import (
    ConfigError,
    DicomReadError,
    ErrorCode,
    SourceError,
    refused_access,
)
from dicomflow.records import InstanceRecord, SourceRef
from dicomflow.urls import escaped_name, in_scheme_of, is_encodable, redact_url

logger = logging.getLogger(__name__)

STAGE = "read"
REMOTE_BLOCK_SIZE = 256 * 1024
_GLOB_CHARS = frozenset("*?[")


@dataclass(frozen=True)
class Listing:
    """What a query found: readable inputs, and inputs that failed to list."""

    refs: list[SourceRef]
    failures: list[tuple[SourceRef, str]]


@dataclass(frozen=True)
class FilesConnector:
    """Inputs given as paths, directories (recursive), globs or fsspec URLs."""

    urls: tuple[str, ...]
    storage_options: dict[str, Any] = field(default_factory=dict)

    scheme = "file"

    def query(self) -> Listing:
        """Expand every URL into files, sorted, each with its size and modification time.

        A path or URL that does not exist is a mistake in the configuration: it raises
        :class:`ConfigError` naming every such input (credentials and query strings
        removed). A glob pattern that matches nothing, or an input that cannot be
        listed for another reason, is a failure of that input (an error row).
        """
        refs: dict[str, SourceRef] = {}
        failures: list[tuple[SourceRef, str]] = []
        missing: list[str] = []
        for url in self.urls:
            try:
                for ref in _expand(url, self.storage_options):
                    refs.setdefault(ref.url, ref)
            except _NoMatch as exc:
                logger.warning("a pattern matches no input")
                failures.append((SourceRef(url, label=_label(url)), _describe(exc)))
            except FileNotFoundError:
                missing.append(redact_url(url))
            except Exception as exc:  # OSError, or a store SDK's own (azure-core's)
                logger.warning("cannot list an input (%s)", type(exc).__name__)
                failures.append((SourceRef(url, label=_label(url)), _describe(exc)))
        if missing:
            raise ConfigError(f"input does not exist: {', '.join(missing)}")
        return Listing(sorted(refs.values(), key=lambda r: r.url), failures)

    def fetch(self, refs: Iterable[SourceRef]) -> Iterator[InstanceRecord]:
        """Read the header of each input; failures become records with an error."""
        fs_cache: dict[str, fsspec.AbstractFileSystem] = {}
        for ref in refs:
            yield _read_one(ref, self.storage_options, fs_cache)

    def read_bytes(
        self, ref: SourceRef, fs_cache: dict[str, fsspec.AbstractFileSystem] | None = None
    ) -> bytes:
        """The whole content of one input (for operators that rewrite instances)."""
        fs, path = _filesystem(ref.url, self.storage_options, {} if fs_cache is None else fs_cache)
        with fs.open(path, "rb") as fp:
            data: bytes = fp.read()
        return data


class _NoMatch(FileNotFoundError):
    """A glob pattern matched nothing."""


def _describe(exc: BaseException) -> str:
    if isinstance(exc, _NoMatch):
        return "pattern matches no input"
    if isinstance(exc, FileNotFoundError):
        return "path does not exist"
    if refused_access(exc):
        return f"permission denied ({type(exc).__name__})"
    if isinstance(exc, IsADirectoryError):
        return "path is a directory"
    return f"cannot read ({type(exc).__name__})"


def _expand(url: str, storage_options: dict[str, Any]) -> Iterator[SourceRef]:
    fs, path = url_to_fs(url, **storage_options)
    local = isinstance(fs, LocalFileSystem)
    if any(ch in path for ch in _GLOB_CHARS) and not fs.exists(path):
        found = fs.glob(path, detail=True)
        if not found:
            raise _NoMatch(path)  # a pattern that matches nothing is reported
        entries = {p: info for p, info in found.items() if info.get("type") != "directory"}
        for sub, info in list(found.items()):
            if info.get("type") == "directory":
                entries.update(fs.find(sub, detail=True))
    elif fs.isdir(path):
        entries = fs.find(path, detail=True)
    else:
        entries = {path: fs.info(path)}
    for entry_path, info in entries.items():
        found = entry_path if local else in_scheme_of(url, fs, entry_path)
        yield SourceRef(found, info.get("size"), _modified(info), label=_label(found))


def _label(url: str) -> str | None:
    """What shows ``url``, when its name is not valid UTF-8: its escaped form."""
    return None if is_encodable(url) else escaped_name(url)


def _modified(info: dict[str, Any]) -> datetime | None:
    for key in ("mtime", "LastModified", "last_modified", "updated", "modified"):
        value = info.get(key)
        if value is None:
            continue
        if isinstance(value, int | float):
            return datetime.fromtimestamp(value, tz=UTC)
        if isinstance(value, datetime):
            return value if value.tzinfo else value.replace(tzinfo=UTC)
        if isinstance(value, str):
            try:
                parsed = datetime.fromisoformat(value.replace("Z", "+00:00"))
            except ValueError:
                continue
            return parsed if parsed.tzinfo else parsed.replace(tzinfo=UTC)
    return None


def _read_one(
    ref: SourceRef,
    storage_options: dict[str, Any],
    fs_cache: dict[str, fsspec.AbstractFileSystem],
) -> InstanceRecord:
    record = InstanceRecord(ref)
    try:
        fs, path = _filesystem(ref.url, storage_options, fs_cache)
        options = {} if isinstance(fs, LocalFileSystem) else {"block_size": REMOTE_BLOCK_SIZE}
        with fs.open(path, "rb", **options) as fp:
            header = read_header(fp, size=ref.size, salvage=True)
    except DicomReadError as exc:
        return record.with_error(STAGE, exc.code, str(exc))
    except (OSError, SourceError) as exc:
        return record.with_error(STAGE, ErrorCode.UNREADABLE, _describe(exc))
    except Exception as exc:  # a reader fault on one file must not sink the partition
        if refused_access(exc):  # a store SDK's own error (azure-core's) for 401/403
            return record.with_error(STAGE, ErrorCode.UNREADABLE, _describe(exc))
        logger.warning("reading one input failed (%s)", type(exc).__name__)
        return record.with_error(
            STAGE, ErrorCode.MALFORMED, f"header cannot be parsed ({type(exc).__name__})"
        )
    return InstanceRecord(ref, header=header)


def _filesystem(
    url: str, storage_options: dict[str, Any], cache: dict[str, fsspec.AbstractFileSystem]
) -> tuple[fsspec.AbstractFileSystem, str]:
    protocol = url.split("://", 1)[0] if "://" in url else "file"
    fs = cache.get(protocol)
    if fs is None:
        fs, path = url_to_fs(url, **storage_options)
        cache[protocol] = fs
        return fs, path
    return fs, fs._strip_protocol(url)
