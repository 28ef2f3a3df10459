"""The error of the DIMSE connector, apart from pynetdicom: naming it imports no
networking code."""

from __future__ import annotations

from dicomflow.errors import DicomflowError, ErrorCode


class DimseError(DicomflowError, ConnectionError):
    """A DICOM peer could not be reached, refused us, or failed an operation."""

    code = ErrorCode.UNREADABLE

    def __init__(self, message: str, *, status: int | None = None) -> None:
        super().__init__(message if status is None else f"{message} (status 0x{status:04X})")
        self.status = status
