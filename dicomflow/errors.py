"""The dicomflow exception tree and the codes carried by error rows.

::

    DicomflowError
    ├── ConfigError (ValueError)          bad options, bad URLs, bad specs
    ├── SourceError (OSError)             a source could not be listed or read
    ├── DicomReadError (ValueError)       one input is not usable DICOM
    │   ├── NotDicomError                 content is not DICOM at all
    │   └── MalformedDicomError           DICOM, but truncated or broken
    └── SinkError (OSError)               an output could not be committed

Every error that ends up in an error row carries an :class:`ErrorCode`. Messages
describe *what* went wrong, never the attribute values involved, so that no
patient data reaches logs or the ``errors`` table.
"""

from __future__ import annotations

import logging
from enum import StrEnum


class ErrorCode(StrEnum):
    """Stable, machine-readable codes for the ``code`` column of the errors table."""

    NOT_DICOM = "not_dicom"
    EMPTY_FILE = "empty_file"
    UNREADABLE = "unreadable"
    TRUNCATED = "truncated"
    MALFORMED = "malformed"
    TOO_DEEP = "too_deep"
    UNSUPPORTED_TRANSFER_SYNTAX = "unsupported_transfer_syntax"
    UNSUPPORTED_PIXELS = "unsupported_pixels"
    DECODE_FAILED = "decode_failed"
    DECODER_CRASHED = "decoder_crashed"
    TOO_LARGE = "too_large"
    NOT_RETRIEVED = "not_retrieved"
    NOT_STORED = "not_stored"
    NOT_COMMITTED = "not_committed"
    NOT_PLACED = "not_placed"
    NOT_RENDERED = "not_rendered"
    BURNED_IN_ANNOTATION = "burned_in_annotation"
    DEIDENTIFICATION_FAILED = "deidentification_failed"
    INTERNAL = "internal"


class DicomflowError(Exception):
    """Root of every error raised by dicomflow."""

    code: ErrorCode = ErrorCode.INTERNAL


class ConfigError(DicomflowError, ValueError):
    """A configuration, option or URL is invalid."""


class SourceError(DicomflowError, OSError):
    """A source could not be listed or read."""

    code = ErrorCode.UNREADABLE


class SinkError(DicomflowError, OSError):
    """An output could not be written or committed."""


class DicomReadError(DicomflowError, ValueError):
    """One input could not be read as DICOM; becomes an error row."""

    def __init__(self, message: str, *, code: ErrorCode | None = None) -> None:
        super().__init__(message)
        if code is not None:
            self.code = code


class NotDicomError(DicomReadError):
    """The content is not DICOM (no ``DICM`` marker and no parseable header)."""

    code = ErrorCode.NOT_DICOM


class MalformedDicomError(DicomReadError):
    """The content is DICOM but cannot be parsed (truncated, bad lengths, too deep)."""

    code = ErrorCode.MALFORMED


class DeidentificationError(DicomflowError, ValueError):
    """One instance could not be de-identified; it becomes an error row, never an output."""

    code = ErrorCode.DEIDENTIFICATION_FAILED

    def __init__(self, message: str, *, code: ErrorCode | None = None) -> None:
        super().__init__(message)
        if code is not None:
            self.code = code


def is_panic(exc: BaseException) -> bool:
    """Whether ``exc`` is a Rust extension's panic (pyo3's ``PanicException``), which
    derives from ``BaseException`` so that ``except Exception`` misses it."""
    return type(exc).__name__ == "PanicException"


def is_instance_fault(exc: BaseException) -> bool:
    """Whether ``exc`` is one instance's fault, to become its error row: any
    ``Exception``, or a codec's panic; never Ctrl-C or an exit."""
    return isinstance(exc, Exception) or is_panic(exc)


def describe_failure(exc: BaseException) -> tuple[ErrorCode, str]:
    """The error code and PHI-free message for a fault in one instance (only the
    exception's type is logged: its text may quote values)."""
    if isinstance(exc, DicomflowError):
        return exc.code, str(exc)
    if is_panic(exc):
        return ErrorCode.DECODER_CRASHED, "a decoder crashed (PanicException)"
    if isinstance(exc, RecursionError):
        return ErrorCode.TOO_DEEP, "data nested too deeply"
    logging.getLogger(__name__).warning("one instance failed (%s)", type(exc).__name__)
    return ErrorCode.INTERNAL, f"unexpected {type(exc).__name__}"


REFUSED_STATUSES = frozenset({401, 403})


def refused_access(exc: BaseException) -> bool:
    """True when ``exc`` says a store refused the credentials: fsspec filesystems raise
    PermissionError, or their SDK's own error carrying an HTTP 401 or 403 (azure-core's
    ``status_code``, aiohttp's ``status``)."""
    if isinstance(exc, PermissionError):
        return True
    status = getattr(exc, "status_code", None) or getattr(exc, "status", None)
    return status in REFUSED_STATUSES
