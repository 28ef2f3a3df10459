"""The one error rendering raises: :class:`RenderError`, a :class:`DicomReadError`."""

from __future__ import annotations

from dicomflow.errors import DicomReadError, ErrorCode


class RenderError(DicomReadError):
    """An instance cannot be rendered (bad window, bad LUT, bad profile, empty image).

    Messages name the problem, never the values involved (no patient data).
    """

    code = ErrorCode.DECODE_FAILED


def malformed(message: str) -> RenderError:
    """A RenderError for attributes that are present but unusable."""
    return RenderError(message, code=ErrorCode.MALFORMED)
