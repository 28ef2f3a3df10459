"""Turn a pydicom ``Dataset`` into the :class:`Element` tree, resolving VRs as pydicom does.

This is the careful path: pydicom decides the VR of implicit, ``UN`` and
ambiguous elements (with its private dictionary and Pixel Representation
rules) and parses sequences, so every file pydicom can read is covered.
"""

from __future__ import annotations

from typing import Any

from pydicom import hooks
from pydicom.dataelem import DataElement, RawDataElement
from pydicom.dataset import Dataset
from pydicom.valuerep import AMBIGUOUS_VR

from dicomflow.dicom.dicomjson import MAX_SEQUENCE_DEPTH
from dicomflow.dicom.elements import Element, Elements
from dicomflow.errors import ErrorCode, MalformedDicomError


def vr_name(vr: object) -> str:
    """The two-letter VR; pydicom's ``VR`` enum members ``str()`` as ``"VR.SL"`` on 3.11."""
    return str(getattr(vr, "value", vr))


def resolved_vr(raw: RawDataElement, ds: Dataset) -> str:
    """pydicom's VR for a raw element: explicit, dictionary, private dictionary or ``UN``."""
    data: dict[str, Any] = {}
    hooks.raw_element_vr(raw, data, ds=ds)
    return vr_name(data["VR"])


def tree_from_dataset(ds: Dataset, depth: int = 0, base: int = 0) -> Elements:
    """The element tree of ``ds``; deferred values stay ``None`` with their offsets.

    pydicom parses a defined-length sequence from its value bytes, so offsets
    inside it are relative to that value; ``base`` makes them absolute again.
    """
    if depth > MAX_SEQUENCE_DEPTH:
        raise MalformedDicomError(
            f"sequences nested deeper than {MAX_SEQUENCE_DEPTH} levels", code=ErrorCode.TOO_DEEP
        )
    out = []
    for tag in sorted(ds.keys()):
        raw = ds.get_item(tag, keep_deferred=True)
        if isinstance(raw, RawDataElement):
            vr = vr_name(raw.VR) if raw.VR is not None else None
            if vr is None or vr == "UN" or vr in AMBIGUOUS_VR:
                vr = resolved_vr(raw, ds)
            if vr != "SQ" and vr not in AMBIGUOUS_VR:
                # pydicom gives empty values as None; None here means "not read" (bulk)
                value = b"" if raw.value is None and raw.length == 0 else raw.value
                out.append(
                    Element(
                        int(tag),
                        vr,
                        value,
                        base + raw.value_tell,
                        raw.length,
                        bool(raw.is_little_endian),
                    )
                )
                continue
            if vr == "SQ" and isinstance(raw.value, bytes):
                # parsed now from its own bytes: nested offsets start at this value
                out.append(_from_converted(ds[tag], depth, base + raw.value_tell))
                continue
            settled = ds[tag]  # pydicom settles the ambiguous VR
            if isinstance(settled.value, bytes):  # binary: keep it raw, with its offset
                out.append(
                    Element(
                        int(tag),
                        vr_name(settled.VR),
                        settled.value,
                        base + raw.value_tell,
                        raw.length,
                        bool(raw.is_little_endian),
                    )
                )
                continue
        out.append(_from_converted(ds[tag], depth, base))
    return tuple(out)


def _from_converted(elem: DataElement, depth: int, base: int) -> Element:
    vr = vr_name(elem.VR)
    if vr == "SQ":
        items = tuple(tree_from_dataset(item, depth + 1, base) for item in elem.value)
        return Element(int(elem.tag), "SQ", items, None, 0xFFFFFFFF)
    return Element(int(elem.tag), vr, elem.value, None, 0, True, converted=True)
