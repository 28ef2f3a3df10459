"""What happened to one sent instance, the same for every protocol (C-STORE, STOW-RS)."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class StoreOutcome:
    """What happened to one file: the DICOM status, or a PHI-free reason it was not sent.

    ``status`` is the DIMSE status for C-STORE, and the Failure or Warning Reason
    (0 when stored cleanly) for STOW-RS; ``None`` when the file was never sent.
    """

    path: str
    status: int | None
    message: str = ""
    sop_class_uid: str = ""
    sop_instance_uid: str = ""

    @property
    def ok(self) -> bool:
        return self.status is not None and (self.status == 0 or self.status >> 12 == 0xB)
