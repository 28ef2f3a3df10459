"""Recognise DICOM by content, never by file extension."""

from __future__ import annotations

import struct

from pydicom.valuerep import VR

PREAMBLE_LENGTH = 128
MAGIC = b"DICM"
SNIFF_BYTES = PREAMBLE_LENGTH + len(MAGIC)

_VALID_VRS = frozenset(vr.value.encode("ascii") for vr in VR if len(vr.value) == 2)
# Groups a data set written without preamble plausibly starts with: file meta,
# directory, identifying, patient. (Zero bytes would look like group 0000.)
_FIRST_GROUPS = frozenset({0x0002, 0x0004, 0x0008, 0x0010})


def has_dicm_prefix(head: bytes) -> bool:
    """True when ``head`` holds the 128-byte preamble followed by ``DICM``."""
    return head[PREAMBLE_LENGTH:SNIFF_BYTES] == MAGIC


def looks_like_raw_dataset(head: bytes, size: int | None) -> bool:
    """True when ``head`` plausibly starts a DICOM data set written without a preamble.

    Checks the first element: a plausible group in either byte order, followed by
    either a valid explicit VR or an implicit-VR length that fits in the file.
    """
    if len(head) < 8:
        return False
    for order in ("<", ">"):
        group, element = struct.unpack(order + "HH", head[:4])
        if group not in _FIRST_GROUPS or element > 0x1000:
            continue
        if head[4:6] in _VALID_VRS:
            return True
        (length,) = struct.unpack(order + "L", head[4:8])
        if length != 0xFFFFFFFF and (size is None or length <= size) and length < 1 << 24:
            return True
    return False
