"""Encode a parsed header as DICOM JSON (PS3.18 F.2), fast, straight from raw elements.

pydicom's ``Dataset.to_json_dict`` builds a full ``DataElement`` for every
element, with validation, which costs milliseconds per file. Here each raw
element's bytes are decoded once, by VR, and the result is used twice: for the
JSON model, and (for the top-level tags the caller asks for) as the components
from which typed columns are made. The input is the :class:`Element` tree that
both header readers produce, with VRs already resolved the way pydicom does.

Bulk data (Pixel Data, overlays, curves, waveforms, encapsulated documents, and
any binary value above a threshold) is not inlined: it becomes a
``BulkDataURI`` of the form ``<source>#offset=<byte offset>&length=<bytes>``
that points into the source file.
"""

from __future__ import annotations

import base64
import json
import math
import re
import struct
import warnings
from collections.abc import Callable
from dataclasses import dataclass, field
from itertools import pairwise
from typing import Any

from pydicom.charset import convert_encodings, decode_bytes
from pydicom.multival import MultiValue
from pydicom.valuerep import TEXT_VR_DELIMS, PersonName

from dicomflow.dicom.elements import Element, Elements
from dicomflow.errors import ErrorCode, MalformedDicomError

DEFAULT_ENCODING = "iso8859"
SPECIFIC_CHARACTER_SET = 0x00080005
ESCAPE = b"\x1b"
MAX_SEQUENCE_DEPTH = 64
INLINE_BINARY_LIMIT = 1024

BINARY_VRS = frozenset({"OB", "OW", "OF", "OD", "OL", "OV", "UN"})
NUMERIC_FORMATS = {
    "US": "H",
    "SS": "h",
    "UL": "L",
    "SL": "l",
    "FL": "f",
    "FD": "d",
    "UV": "Q",
    "SV": "q",
}
NUMBER_STRING_VRS = frozenset({"DS", "IS"})
_ALWAYS_BULK = frozenset({0x7FE00008, 0x7FE00009, 0x7FE00010, 0x54001010, 0x00420011})


def is_bulk_tag(tag: int) -> bool:
    """Pixel, waveform and document data, and repeating-group overlay/curve data."""
    if tag in _ALWAYS_BULK:
        return True
    group, element = tag >> 16, tag & 0xFFFF
    in_repeating_group = 0x6000 <= group <= 0x601E or 0x5000 <= group <= 0x501E
    return element == 0x3000 and in_repeating_group and group % 2 == 0


@dataclass
class Captured:
    """The decoded components of one requested top-level element."""

    vr: str
    components: list[Any]


@dataclass
class EncodeContext:
    """Per-file settings and outputs of one encoding pass."""

    source: str
    offsets_valid: bool = True
    inline_limit: int = INLINE_BINARY_LIMIT
    capture_tags: frozenset[int] = frozenset()
    captured: dict[int, Captured] = field(default_factory=dict)
    # Shared by every file of a batch: decoded values repeat across files.
    memo: dict[Any, Any] = field(default_factory=dict)


def encodings_of(elements: Elements, inherited: list[str] | None) -> list[str] | None:
    """The Python codecs for a data set: its own Specific Character Set, else the inherited one."""
    for element in elements:
        if element.tag == SPECIFIC_CHARACTER_SET:
            break
        if element.tag > SPECIFIC_CHARACTER_SET:
            return inherited
    else:
        return inherited
    value = element.value
    if element.converted:
        names = list(value) if isinstance(value, MultiValue | list) else [value or ""]
    elif not isinstance(value, bytes):  # not text (a sequence, say): the default applies
        return inherited
    elif not value:
        return inherited if inherited is not None else [DEFAULT_ENCODING]
    else:
        names = [v.strip(" \x00") for v in value.decode(DEFAULT_ENCODING).split("\\")]
    with warnings.catch_warnings():  # pydicom warns (quoting the value) on odd spellings
        warnings.simplefilter("ignore")
        return list(convert_encodings(names))


def encode_elements(
    elements: Elements,
    ctx: EncodeContext,
    *,
    encodings: list[str] | None = None,
) -> dict[str, Any]:
    """The DICOM JSON object for one data set, as Python objects (see :func:`encode_json`)."""
    result: dict[str, Any] = json.loads(encode_json(elements, ctx, encodings=encodings))
    return result


def encode_json(
    elements: Elements,
    ctx: EncodeContext,
    *,
    encodings: list[str] | None = None,
    depth: int = 0,
    path: str = "",
) -> str:
    """The DICOM JSON text of one data set (keys in tag order, compact separators).

    This loop runs for every element of every file. Most values repeat across
    the files of a batch (patient, study, equipment, protocol), so each decoded
    value's JSON text and components are memoised in ``ctx.memo`` by
    (VR, bytes, character set, byte order); bulk data, which names its source,
    is never memoised.
    """
    if depth > MAX_SEQUENCE_DEPTH:
        raise MalformedDicomError(
            f"sequences nested deeper than {MAX_SEQUENCE_DEPTH} levels", code=ErrorCode.TOO_DEEP
        )
    encodings = encodings_of(elements, encodings)
    encodings_key = tuple(encodings) if encodings else None
    capture = ctx.capture_tags if depth == 0 else _NOTHING
    captured = ctx.captured
    memo = ctx.memo
    parts: list[str] = []
    if any(a.tag >= b.tag for a, b in pairwise(elements)):
        elements = tuple(sorted(elements, key=_tag_of))
    for element in elements:
        tag, vr, value = element.tag, element.vr, element.value
        if vr == "SQ":
            sequence_path = f"{path}{tag:08X}/"
            items = ",".join(
                encode_json(
                    item, ctx, encodings=encodings, depth=depth + 1, path=f"{sequence_path}{i}/"
                )
                for i, item in enumerate(value or ())
            )
            parts.append(
                f'"{tag:08X}":{{"vr":"SQ","Value":[{items}]}}'
                if items
                else f'"{tag:08X}":{{"vr":"SQ"}}'
            )
            continue
        if element.converted:
            fragment = _dumps(_encode_converted(element, ctx, path, capture))
        elif value is None or vr not in _HANDLERS:
            fragment = _dumps(_binary(vr, tag, value, element.offset, element.length, ctx, path))
        elif not value:
            fragment = f'{{"vr":"{vr}"}}'
            if tag in capture:
                captured[tag] = Captured(vr, [])
        else:
            key = (vr, value, encodings_key, element.little_endian)
            hit = memo.get(key)
            if hit is None:
                hit = memo[key] = _encode_value(vr, value, encodings, element.little_endian)
            fragment, components = hit
            if tag in capture:
                captured[tag] = Captured(vr, components)
        parts.append(f'"{tag:08X}":{fragment}')
    return "{" + ",".join(parts) + "}"


def _encode_value(
    vr: str, value: bytes, encodings: list[str] | None, little: bool
) -> tuple[str, list[Any]]:
    try:
        element, components = _HANDLERS[vr](vr, value, encodings, little)
    except (ValueError, struct.error, LookupError):
        # undecodable: keep it losslessly as binary; the typed column gets a null
        element = {"vr": vr, "InlineBinary": base64.b64encode(value).decode("ascii")}
        components = [None]
    return _dumps(element), components


def _dumps(element: dict[str, Any]) -> str:
    return json.dumps(element, ensure_ascii=False, separators=(",", ":"), allow_nan=False)


_NOTHING: frozenset[int] = frozenset()


def _tag_of(element: Element) -> int:
    return element.tag


def _binary(
    vr: str,
    tag: int,
    value: bytes | None,
    offset: int | None,
    length: int,
    ctx: EncodeContext,
    path: str,
) -> dict[str, Any]:
    if value is not None and len(value) <= ctx.inline_limit and not is_bulk_tag(tag):
        if not value:
            return {"vr": vr}
        return {"vr": vr, "InlineBinary": base64.b64encode(value).decode("ascii")}
    return {"vr": vr, "BulkDataURI": bulk_data_uri(ctx, tag, offset, length, path)}


def bulk_data_uri(
    ctx: EncodeContext, tag: int, offset: int | None, length: int | None, path: str = ""
) -> str:
    """Point into the source: by byte range where offsets are real, else by tag path."""
    if ctx.offsets_valid and offset is not None:
        if length is None or length == 0xFFFFFFFF:
            return f"{ctx.source}#offset={offset}"
        return f"{ctx.source}#offset={offset}&length={length}"
    return f"{ctx.source}#tag={path}{tag:08X}"


_INVALID = object()


_NUMBER_TEXT = re.compile(r"^[+-]?(\d+\.?\d*|\.\d+)([eE][+-]?\d+)?$")


def _number(vr: str, text: str) -> Any:
    if not text:
        return None
    if not _NUMBER_TEXT.match(text):  # int()/float() would accept "1_5", "nan", "inf"
        return _INVALID
    try:
        number = int(text) if vr == "IS" else float(text)
    except ValueError:
        try:
            as_float = float(text)
        except ValueError:
            return _INVALID
        if vr == "IS" and as_float.is_integer():
            return int(as_float)
        return _INVALID
    if isinstance(number, float) and not math.isfinite(number):
        return _INVALID
    return number


def _pn_json(name: str) -> dict[str, str] | None:
    if not name:
        return None
    groups = name.split("=")
    result = {
        key: group
        for key, group in zip(("Alphabetic", "Ideographic", "Phonetic"), groups, strict=False)
        if group
    }
    return result or None


def _encode_converted(
    element: Element, ctx: EncodeContext, path: str, capture: frozenset[int]
) -> dict[str, Any]:
    """Encode an element pydicom already decoded (ambiguous VR resolved by pydicom)."""
    tag, vr, value = element.tag, element.vr, element.value
    if value is None or value == "" or value == b"":
        if tag in capture:
            ctx.captured[tag] = Captured(vr, [])
        return {"vr": vr}
    if isinstance(value, bytes):
        return _binary(vr, tag, value, element.offset, len(value), ctx, path)
    components = list(value) if isinstance(value, MultiValue | list | tuple) else [value]
    components = [str(c) if isinstance(c, PersonName) else c for c in components]
    if tag in capture:
        ctx.captured[tag] = Captured(vr, components)
    if vr in NUMBER_STRING_VRS:
        return {"vr": vr, "Value": [_number(vr, str(c)) for c in components]}
    if vr == "PN":
        return {"vr": vr, "Value": [_pn_json(c) for c in components]}
    if all(isinstance(c, str) for c in components):
        return _strings(vr, components)[0]
    return {"vr": vr, "Value": components}


# --- handlers: (vr, bytes, encodings, little endian) -> (JSON element, components) ---------
#
# Components are what typed columns are made from; they follow pydicom's value
# conversion (which strips what, how multi-values split, how text decodes).

Handler = Callable[[str, bytes, "list[str] | None", bool], "tuple[dict[str, Any], list[Any]]"]


def _strings(vr: str, components: list[str]) -> tuple[dict[str, Any], list[Any]]:
    if len(components) == 1:
        if not components[0]:
            return {"vr": vr}, components
        return {"vr": vr, "Value": components}, components
    return {"vr": vr, "Value": [c if c else None for c in components]}, components


def _ascii(vr: str, value: bytes, _enc: list[str] | None, _le: bool) -> tuple[dict, list]:
    return _strings(vr, value.decode(DEFAULT_ENCODING).rstrip(" \x00").split("\\"))


def _application_entity(
    vr: str, value: bytes, _enc: list[str] | None, _le: bool
) -> tuple[dict, list]:
    return _strings(vr, [v.strip(" \x00") for v in value.decode(DEFAULT_ENCODING).split("\\")])


def _uri(vr: str, value: bytes, _enc: list[str] | None, _le: bool) -> tuple[dict, list]:
    return _strings(vr, [value.decode(DEFAULT_ENCODING).rstrip()])


def _number_strings(vr: str, value: bytes, _enc: list[str] | None, _le: bool) -> tuple[dict, list]:
    components = [v.strip(" \x00") for v in value.decode(DEFAULT_ENCODING).split("\\")]
    if components == [""]:
        return {"vr": vr}, components
    numbers = [_number(vr, c) for c in components]
    if any(n is _INVALID for n in numbers):  # JSON numbers cannot hold it: keep the bytes
        return {"vr": vr, "InlineBinary": base64.b64encode(value).decode("ascii")}, components
    return {"vr": vr, "Value": numbers}, components


def _decode_text(value: bytes, encodings: list[str] | None) -> str:
    if encodings and len(encodings) == 1 and ESCAPE not in value:
        try:
            return value.decode(encodings[0])
        except (UnicodeError, LookupError):
            pass  # pydicom's decode_bytes replaces undecodable bytes (and warns)
    return decode_bytes(value, encodings or [DEFAULT_ENCODING], TEXT_VR_DELIMS)


def _text(vr: str, value: bytes, enc: list[str] | None, _le: bool) -> tuple[dict, list]:
    return _strings(vr, [_decode_text(v, enc).rstrip("\x00 ") for v in value.split(b"\\")])


def _long_text(vr: str, value: bytes, enc: list[str] | None, _le: bool) -> tuple[dict, list]:
    return _strings(vr, [_decode_text(value, enc).rstrip("\x00 ")])


def _person_names(vr: str, value: bytes, enc: list[str] | None, _le: bool) -> tuple[dict, list]:
    components = _decode_text(value.rstrip(b"\x00 "), enc).split("\\")
    if components == [""]:
        return {"vr": vr}, components
    return {"vr": vr, "Value": [_pn_json(c) for c in components]}, components


def _numbers(fmt: str) -> Handler:
    size = struct.calcsize("<" + fmt)  # standard sizes, not native ("L" is 8 bytes natively)
    floats = fmt in "fd"

    def handle(vr: str, value: bytes, _enc: list[str] | None, little: bool) -> tuple[dict, list]:
        if len(value) % size:
            raise ValueError("length is not a multiple of the value size")
        components = list(
            struct.unpack(f"{'<' if little else '>'}{len(value) // size}{fmt}", value)
        )
        if floats and not all(math.isfinite(c) for c in components):
            # JSON has no NaN/Infinity: keep the exact bytes instead
            return {"vr": vr, "InlineBinary": base64.b64encode(value).decode("ascii")}, components
        return {"vr": vr, "Value": components}, components

    return handle


def _attribute_tags(
    vr: str, value: bytes, _enc: list[str] | None, little: bool
) -> tuple[dict, list]:
    if len(value) % 4:
        raise ValueError("AT length is not a multiple of 4")
    pairs = struct.unpack(f"{'<' if little else '>'}{len(value) // 2}H", value)
    components = [f"{pairs[i]:04X}{pairs[i + 1]:04X}" for i in range(0, len(pairs), 2)]
    return {"vr": vr, "Value": components}, components


_HANDLERS: dict[str, Handler] = {
    "AE": _application_entity,
    "AS": _ascii,
    "CS": _ascii,
    "DA": _ascii,
    "DT": _ascii,
    "TM": _ascii,
    "UI": _ascii,
    "DS": _number_strings,
    "IS": _number_strings,
    "UR": _uri,
    "SH": _text,
    "LO": _text,
    "UC": _text,
    "ST": _long_text,
    "LT": _long_text,
    "UT": _long_text,
    "PN": _person_names,
    "AT": _attribute_tags,
    **{vr: _numbers(fmt) for vr, fmt in NUMERIC_FORMATS.items()},
}
