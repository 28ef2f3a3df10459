"""The typed value of one content item, as the ``sr_content`` columns hold it.

One function per value type, each returning the columns it fills (absent keys are
null). A value that is present but cannot be read (a date that is not a date, a
number that is not a number) becomes null and names ``invalid_value`` in
``problem``; a value type that requires a value without one names ``missing_value``.
Neither stops the document: they are noted on the item's row only.

Choices: a NUM item's value is its Floating Point Value when present (the exact
binary value), else its Numeric Value; dates and times are parsed as pydicom parses
them (:mod:`dicomflow.dicom.values`), and DATETIME values keep the wall-clock time as
written (a time-zone offset is dropped, as in ``instances``); a Referenced Frame
Number and a Referenced Segment Number are lists (an item may name several).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from pydicom.multival import MultiValue

from dicomflow.dicom.values import parse_da, parse_dt, parse_tm
from dicomflow.sr.items import Item
from dicomflow.sr.tree import first_code

Columns = dict[str, Any]


class InvalidValue(ValueError):
    """A value is present but cannot be read as its type (never carries the value)."""


def typed_value(value_type: str | None, item: Item) -> tuple[Columns, str | None]:
    """The columns of ``item``'s value and the problem found, if any."""
    reader = READERS.get(value_type or "")
    if reader is None:
        known = value_type in NO_VALUE
        return {}, None if known else "unknown_value_type"
    try:
        columns = reader(item)
    except (InvalidValue, ValueError, TypeError, OverflowError):
        return {}, "invalid_value"
    missing = not columns and value_type in REQUIRES_VALUE
    return columns, "missing_value" if missing else None


def code_columns(prefix: str, code: tuple[str, str, str] | None) -> Columns:
    """``<prefix>_code_value``, ``<prefix>_scheme``, ``<prefix>_meaning`` of a code."""
    if code is None:
        return {}
    return {
        f"{prefix}_code_value": code[0],
        f"{prefix}_scheme": code[1],
        f"{prefix}_meaning": code[2],
    }


def _text(item: Item) -> Columns:
    value = item.get("TextValue")
    return {} if value in (None, "") else {"text_value": str(value)}


def _code(item: Item) -> Columns:
    return code_columns("value", first_code(item, "ConceptCodeSequence"))


def _num(item: Item) -> Columns:
    columns = code_columns("qualifier", first_code(item, "NumericValueQualifierCodeSequence"))
    measured = item.get("MeasuredValueSequence")
    if not measured:
        return columns
    value = measured[0]
    number = numeric_value(value)
    if number is not None:
        columns["numeric_value"] = number
    unit = first_code(value, "MeasurementUnitsCodeSequence")
    if unit is not None:
        columns.update({"unit": unit[0], "unit_scheme": unit[1], "unit_meaning": unit[2]})
    return columns


def numeric_value(measured: Item) -> float | None:
    """A Measured Value Sequence item's number: its Floating Point Value when present,
    else its Numeric Value (a decimal string); None when neither holds one."""
    for keyword in ("FloatingPointValue", "NumericValue"):
        value = measured.get(keyword)
        if isinstance(value, list | MultiValue):
            value = value[0] if len(value) else None
        if value not in (None, ""):
            return float(value)
    return None


def _date(item: Item) -> Columns:
    return _parsed(item, "Date", parse_da, "date_value")


def _time(item: Item) -> Columns:
    return _parsed(item, "Time", parse_tm, "time_value")


def _datetime(item: Item) -> Columns:
    return _parsed(item, "DateTime", parse_dt, "datetime_value")


def _parsed(item: Item, keyword: str, parse: Callable[[str], Any], column: str) -> Columns:
    raw = item.get(keyword)
    if raw in (None, ""):
        return {}
    if isinstance(raw, list):
        raise InvalidValue(keyword)
    return {column: parse(str(raw).strip())}


def _uid(item: Item) -> Columns:
    value = item.get("UID")
    return {} if value in (None, "") else {"uid_value": str(value).strip()}


def _person(item: Item) -> Columns:
    value = item.get("PersonName")
    return {} if value in (None, "") else {"person_name": str(value)}


def _composite(item: Item) -> Columns:
    sequence = item.get("ReferencedSOPSequence")
    if not sequence:
        return {}
    return referenced_sop(sequence[0])


def referenced_sop(reference: Item) -> Columns:
    """A Referenced SOP Sequence item: class, instance, frames and segments."""
    columns: Columns = {}
    if reference.get("ReferencedSOPClassUID"):
        columns["referenced_sop_class_uid"] = str(reference.get("ReferencedSOPClassUID"))
    if reference.get("ReferencedSOPInstanceUID"):
        columns["referenced_sop_instance_uid"] = str(reference.get("ReferencedSOPInstanceUID"))
    frames = _integers(reference.get("ReferencedFrameNumber"))
    if frames:
        columns["referenced_frame_numbers"] = frames
    segments = _integers(reference.get("ReferencedSegmentNumber"))
    if segments:
        columns["referenced_segment_numbers"] = segments
    return columns


def _scoord(item: Item) -> Columns:
    columns: Columns = {}
    if item.get("GraphicType"):
        columns["graphic_type"] = str(item.get("GraphicType")).strip()
    data = floats(item.get("GraphicData"))
    if data:
        columns["graphic_data"] = data
    return columns


def _scoord3d(item: Item) -> Columns:
    columns = _scoord(item)
    if item.get("ReferencedFrameOfReferenceUID"):
        columns["frame_of_reference_uid"] = str(item.get("ReferencedFrameOfReferenceUID"))
    return columns


def _tcoord(item: Item) -> Columns:
    columns: Columns = {}
    if item.get("TemporalRangeType"):
        columns["temporal_range_type"] = str(item.get("TemporalRangeType")).strip()
    positions = _integers(item.get("ReferencedSamplePositions"))
    if positions:
        columns["referenced_sample_positions"] = positions
    offsets = floats(item.get("ReferencedTimeOffsets"))
    if offsets:
        columns["referenced_time_offsets"] = offsets
    raw = item.get("ReferencedDateTime")
    if raw not in (None, ""):
        values = raw if isinstance(raw, list | MultiValue) else [raw]
        columns["referenced_datetimes"] = [
            parse_dt(str(value).strip()) for value in values if str(value).strip()
        ]
    return columns


def _container(item: Item) -> Columns:
    columns: Columns = {}
    if item.get("ContinuityOfContent"):
        columns["continuity_of_content"] = str(item.get("ContinuityOfContent")).strip()
    templates = item.get("ContentTemplateSequence")
    if templates and templates[0].get("TemplateIdentifier"):
        columns["template_id"] = str(templates[0].get("TemplateIdentifier")).strip()
    return columns


def _integers(value: Any) -> list[int]:
    if value in (None, ""):
        return []
    values = value if isinstance(value, list | tuple | MultiValue) else [value]
    return [int(v) for v in values if str(v).strip() != ""]


def floats(value: Any) -> list[float]:
    if value in (None, ""):
        return []
    values = value if isinstance(value, list | tuple | MultiValue) else [value]
    return [float(v) for v in values if str(v).strip() != ""]


READERS: dict[str, Callable[[Item], Columns]] = {
    "TEXT": _text,
    "CODE": _code,
    "NUM": _num,
    "DATE": _date,
    "TIME": _time,
    "DATETIME": _datetime,
    "UIDREF": _uid,
    "PNAME": _person,
    "COMPOSITE": _composite,
    "IMAGE": _composite,
    "WAVEFORM": _composite,
    "SCOORD": _scoord,
    "SCOORD3D": _scoord3d,
    "TCOORD": _tcoord,
    "CONTAINER": _container,
}
NO_VALUE = frozenset({"TABLE", "INCLUDE"})  # types with no value columns of their own
REQUIRES_VALUE = frozenset({"CODE", "UIDREF", "COMPOSITE", "IMAGE", "SCOORD", "SCOORD3D"})
