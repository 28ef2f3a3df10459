"""Parse DICOM string values into Python values for typed Arrow columns.

Each parser takes one already-decoded, stripped value string and returns the
Python value, or raises ``ValueError`` when the string is not valid for its VR.
They accept the same forms pydicom 3 does (including the legacy ACR-NEMA date
form ``YYYY.MM.DD``), so that typed columns equal pydicom's values.
"""

from __future__ import annotations

import math
import re
from datetime import date, datetime, time

_INT64_MIN = -(1 << 63)
_INT64_MAX = (1 << 63) - 1
_DT = re.compile(
    r"^(?P<y>\d{4})(?P<mo>\d{2})?(?P<d>\d{2})?(?P<h>\d{2})?(?P<mi>\d{2})?(?P<s>\d{2})?"
    r"(?:\.(?P<f>\d{1,6}))?(?P<tz>[+-]\d{4})?$"
)
_TM = re.compile(r"^(?P<h>\d{2})(?P<mi>\d{2})?(?P<s>\d{2})?(?:\.(?P<f>\d{1,6}))?$")
_DS = re.compile(r"^[+-]?(\d+\.?\d*|\.\d+)([eE][+-]?\d+)?$")


def parse_da(value: str) -> date:
    """DA: ``YYYYMMDD`` (or legacy ``YYYY.MM.DD``)."""
    if len(value) == 10 and value[4] == "." and value[7] == ".":
        value = value[:4] + value[5:7] + value[8:]
    if len(value) != 8 or not value.isdigit():
        raise ValueError("not a DA")
    return date(int(value[:4]), int(value[4:6]), int(value[6:8]))


def _fraction(text: str | None) -> int:
    return int(text.ljust(6, "0")) if text else 0


def parse_tm(value: str) -> time:
    """TM: ``HH[MM[SS[.FFFFFF]]]``. Like pydicom 3, the colon form is not accepted."""
    match = _TM.match(value)
    if match is None:
        raise ValueError("not a TM")
    second = int(match["s"] or 0)
    if second == 60:  # leap second, as pydicom does
        second = 59
    return time(int(match["h"]), int(match["mi"] or 0), second, _fraction(match["f"]))


def parse_dt(value: str) -> datetime:
    """DT: ``YYYY[MM[DD[HH[MM[SS[.F]]]]]][&ZZXX]``, returned as naive wall-clock time.

    The UTC offset, if any, is dropped from the typed column (the full string is
    kept in ``dicom_json``): mixing offsets in one column would be ambiguous.
    """
    match = _DT.match(value)
    if match is None:
        raise ValueError("not a DT")
    second = int(match["s"] or 0)
    if second == 60:
        second = 59
    return datetime(
        int(match["y"]),
        int(match["mo"] or 1),
        int(match["d"] or 1),
        int(match["h"] or 0),
        int(match["mi"] or 0),
        second,
        _fraction(match["f"]),
    )


def parse_ds(value: str) -> float:
    """DS: a decimal string; NaN and infinities are not valid DICOM."""
    if not _DS.match(value):
        raise ValueError("not a DS")
    number = float(value)
    if not math.isfinite(number):
        raise ValueError("not a finite DS")
    return number


def parse_is(value: str) -> int:
    """IS: an integer string (pydicom also accepts an integral float such as ``1.0``)."""
    try:
        number = int(value)
    except ValueError:
        as_float = parse_ds(value)
        if not as_float.is_integer():
            raise ValueError("not an IS") from None
        number = int(as_float)
    if not _INT64_MIN <= number <= _INT64_MAX:
        raise ValueError("IS out of int64 range")
    return number
