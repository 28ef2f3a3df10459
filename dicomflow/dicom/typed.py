"""Turn decoded element components into the values of typed Arrow columns.

Invalid values never raise: they become ``None`` and the caller records a
warning naming the attribute and the problem (never the value itself).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from dicomflow.dicom.dicomjson import Captured
from dicomflow.dicom.values import parse_da, parse_ds, parse_dt, parse_is, parse_tm
from dicomflow.schemas.instances import ColumnSpec

_INT_RANGES = {
    "US": (0, 0xFFFF),
    "SS": (-0x8000, 0x7FFF),
    "UL": (0, 0xFFFFFFFF),
    "SL": (-0x80000000, 0x7FFFFFFF),
    "UV": (0, 0xFFFFFFFFFFFFFFFF),
    "SV": (-(1 << 63), (1 << 63) - 1),
    "US or SS": (-0x8000, 0xFFFF),
}
_STRING_PARSERS: dict[str, Callable[[str], Any]] = {
    "DA": parse_da,
    "TM": parse_tm,
    "DT": parse_dt,
    "DS": parse_ds,
    "IS": parse_is,
}


class InvalidValue(ValueError):
    """A component cannot be represented in its column's type."""


def _to_int(component: Any, vr: str) -> int:
    if isinstance(component, str):
        number = parse_is(component.strip())
    elif isinstance(component, float):
        if not component.is_integer():
            raise InvalidValue
        number = int(component)
    elif isinstance(component, int):
        number = component
    else:
        raise InvalidValue
    low, high = _INT_RANGES[vr]
    if not low <= number <= high:
        raise InvalidValue
    return number


def _to_float(component: Any) -> float:
    if isinstance(component, str):
        return parse_ds(component.strip())
    if isinstance(component, int | float):
        return float(component)
    raise InvalidValue


def convert_component(component: Any, spec: ColumnSpec) -> Any:
    """Convert one component for ``spec``'s column; raise ``ValueError`` if invalid."""
    if component is None or component == "":
        return None
    vr = spec.vr
    parser = _STRING_PARSERS.get(vr)
    if parser is not None:
        if not isinstance(component, str):
            if vr in ("DS", "IS"):
                return _to_float(component) if vr == "DS" else _to_int(component, "SV")
            raise InvalidValue
        return parser(component.strip())
    if vr in _INT_RANGES:
        return _to_int(component, vr)
    if vr in ("FL", "FD"):
        return _to_float(component)
    text = component if isinstance(component, str) else str(component)
    # pydicom's PersonName drops empty trailing component groups ("A=I=" -> "A=I").
    return text.rstrip("=") if vr == "PN" else text


def typed_value(captured: Captured | None, spec: ColumnSpec, warnings: list[str]) -> Any:
    """The column value for one attribute, appending a warning when a value is invalid."""
    if captured is None or not captured.components:
        return None
    converted = []
    for component in captured.components:
        try:
            converted.append(convert_component(component, spec))
        except (ValueError, OverflowError):
            warnings.append(f"{spec.keyword}: invalid {spec.vr} value")
            converted.append(None)
    if spec.multi:
        return None if all(v is None for v in converted) and len(converted) == 1 else converted
    if len(converted) > 1:
        warnings.append(f"{spec.keyword}: {len(converted)} values where VM is 1")
        return None
    return converted[0]
