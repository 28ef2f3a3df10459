"""Encode a parsed header as DICOM JSON (PS3.18 F.2), fast, straight from raw elements.

pydicom's ``Dataset.to_json_dict`` builds a full ``DataElement`` for every
element, with validation, which costs milliseconds per file. Here each raw
element's bytes are decoded once, by VR, and the result is used twice: for the
JSON model, and (for the top-level tags the caller asks for) as the components
from which typed columns are made. VR lookup for implicit VR, ``UN`` and
ambiguous VRs, and sequence parsing, are delegated to pydicom so that the
result agrees with what pydicom reads.

Bulk data (Pixel Data, overlays, curves, waveforms, encapsulated documents, and
any binary value above a threshold) is not inlined: it becomes a
``BulkDataURI`` of the form ``<source>#offset=<byte offset>&length=<bytes>``
that points into the source file.
"""

from __future__ import annotations

import base64
import math
import struct
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from pydicom import hooks
from pydicom.charset import convert_encodings, decode_bytes
from pydicom.dataelem import DataElement, RawDataElement
from pydicom.dataset import Dataset
from pydicom.multival import MultiValue
from pydicom.valuerep import AMBIGUOUS_VR, TEXT_VR_DELIMS, PersonName

from dicomflow.errors import ErrorCode, MalformedDicomError

DEFAULT_ENCODING = "iso8859"
MAX_SEQUENCE_DEPTH = 64
INLINE_BINARY_LIMIT = 1024

BINARY_VRS = frozenset({"OB", "OW", "OF", "OD", "OL", "OV", "UN"})
NUMERIC_FORMATS = {
    "US": "H", "SS": "h", "UL": "L", "SL": "l", "FL": "f", "FD": "d", "UV": "Q", "SV": "q"
}
CHARSET_VRS = frozenset({"SH", "LO", "UC", "ST", "LT", "UT", "PN"})
SINGLE_VALUED_TEXT = frozenset({"ST", "LT", "UT", "UR"})
NUMBER_STRING_VRS = frozenset({"DS", "IS"})
_ALWAYS_BULK = frozenset({0x7FE00008, 0x7FE00009, 0x7FE00010, 0x54001010, 0x00420011})


def is_bulk_tag(tag: int) -> bool:
    """Pixel, waveform and document data, and repeating-group overlay/curve data."""
    if tag in _ALWAYS_BULK:
        return True
    group, element = tag >> 16, tag & 0xFFFF
    return element == 0x3000 and group & 0xFF00 in (0x6000, 0x5000) and group % 2 == 0


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


def encodings_of(ds: Dataset, inherited: list[str] | None) -> list[str] | None:
    """The Python codecs for ``ds``: its own Specific Character Set, else the inherited one."""
    raw = ds.get_item(0x00080005, keep_deferred=True)
    if raw is None:
        return inherited
    value = raw.value
    if isinstance(raw, RawDataElement):
        if not value:
            return inherited if inherited is not None else [DEFAULT_ENCODING]
        names = [v.strip(" \x00") for v in value.decode(DEFAULT_ENCODING).split("\\")]
    else:
        names = list(value) if isinstance(value, MultiValue | list) else [value or ""]
    return list(convert_encodings(names))


def encode_dataset(
    ds: Dataset,
    ctx: EncodeContext,
    *,
    encodings: list[str] | None = None,
    depth: int = 0,
    path: str = "",
) -> dict[str, Any]:
    """Return the DICOM JSON object for ``ds`` (keys in tag order)."""
    if depth > MAX_SEQUENCE_DEPTH:
        raise MalformedDicomError(
            f"sequences nested deeper than {MAX_SEQUENCE_DEPTH} levels", code=ErrorCode.TOO_DEEP
        )
    encodings = encodings_of(ds, encodings)
    out: dict[str, Any] = {}
    capture = ctx.capture_tags if depth == 0 else frozenset()
    for tag in sorted(ds.keys()):
        key = f"{tag:08X}"
        out[key] = _encode_element(ds, int(tag), ctx, encodings, depth, path, capture)
    return out


def _encode_element(
    ds: Dataset,
    tag: int,
    ctx: EncodeContext,
    encodings: list[str] | None,
    depth: int,
    path: str,
    capture: frozenset[int],
) -> dict[str, Any]:
    elem = ds.get_item(tag, keep_deferred=True)
    if isinstance(elem, RawDataElement):
        vr = elem.VR
        if vr is None or vr == "UN" or vr in AMBIGUOUS_VR:
            vr = _resolve_vr(elem, ds, encodings)
        else:
            vr = vr_name(vr)
        if vr != "SQ" and vr not in AMBIGUOUS_VR:
            return _encode_raw(elem, str(vr), tag, ctx, encodings, path, capture)
    converted = ds[tag]
    if converted.VR == "SQ":
        return _encode_sequence(converted, ctx, encodings, depth, f"{path}{tag:08X}/")
    return _encode_converted(converted, tag, ctx, path, capture)


def _resolve_vr(raw: RawDataElement, ds: Dataset, encodings: list[str] | None) -> str:
    data: dict[str, Any] = {}
    hooks.raw_element_vr(raw, data, encoding=encodings, ds=ds)
    return vr_name(data["VR"])


def vr_name(vr: object) -> str:
    """The two-letter VR; pydicom's ``VR`` enum members ``str()`` as ``"VR.SL"`` on 3.11."""
    return str(getattr(vr, "value", vr))


def _encode_sequence(
    elem: DataElement, ctx: EncodeContext, encodings: list[str] | None, depth: int, path: str
) -> dict[str, Any]:
    items = [
        encode_dataset(item, ctx, encodings=encodings, depth=depth + 1, path=f"{path}{i}/")
        for i, item in enumerate(elem.value)
    ]
    return {"vr": "SQ", "Value": items} if items else {"vr": "SQ"}


def _encode_raw(
    raw: RawDataElement,
    vr: str,
    tag: int,
    ctx: EncodeContext,
    encodings: list[str] | None,
    path: str,
    capture: frozenset[int],
) -> dict[str, Any]:
    value: bytes | None = raw.value
    if vr in BINARY_VRS or value is None:
        return _binary(vr, tag, value, raw.value_tell, raw.length, ctx, path)
    if not value:
        if tag in capture:
            ctx.captured[tag] = Captured(vr, [])
        return {"vr": vr}
    decoder = _DECODERS.get(vr)
    if decoder is None:
        return _binary(vr, tag, value, raw.value_tell, raw.length, ctx, path)
    try:
        components = decoder(value, encodings, raw.is_little_endian)
    except (ValueError, struct.error, LookupError):
        components = None
    if components is None:  # undecodable: keep it losslessly as binary
        if tag in capture:
            ctx.captured[tag] = Captured(vr, [None])
        return {"vr": vr, "InlineBinary": base64.b64encode(value).decode("ascii")}
    if tag in capture:
        ctx.captured[tag] = Captured(vr, components)
    return _json_value(vr, components, value)


def _binary(
    vr: str,
    tag: int,
    value: bytes | None,
    offset: int,
    length: int,
    ctx: EncodeContext,
    path: str,
) -> dict[str, Any]:
    if value is not None and len(value) <= ctx.inline_limit and not is_bulk_tag(tag):
        if not value:
            return {"vr": vr}
        return {"vr": vr, "InlineBinary": base64.b64encode(value).decode("ascii")}
    return {"vr": vr, "BulkDataURI": bulk_data_uri(ctx, tag, offset, length, path)}


def bulk_data_uri(ctx: EncodeContext, tag: int, offset: int | None, length: int | None,
                  path: str = "") -> str:
    """Point into the source: by byte range where offsets are real, else by tag path."""
    if ctx.offsets_valid and offset is not None:
        if length is None or length == 0xFFFFFFFF:
            return f"{ctx.source}#offset={offset}"
        return f"{ctx.source}#offset={offset}&length={length}"
    return f"{ctx.source}#tag={path}{tag:08X}"


def _json_value(vr: str, components: list[Any], value: bytes) -> dict[str, Any]:
    if components == [""]:
        return {"vr": vr}
    if vr == "PN":
        return {"vr": vr, "Value": [_pn_json(c) for c in components]}
    if vr in NUMBER_STRING_VRS:
        numbers = [_number(vr, c) for c in components]
        if any(n is _INVALID for n in numbers):
            return {"vr": vr, "Value": [c if c else None for c in components]}
        return {"vr": vr, "Value": numbers}
    if vr in ("FL", "FD") and not all(math.isfinite(c) for c in components):
        return {"vr": vr, "InlineBinary": base64.b64encode(value).decode("ascii")}
    if len(components) > 1 and vr not in NUMERIC_FORMATS:
        return {"vr": vr, "Value": [c if c != "" else None for c in components]}
    return {"vr": vr, "Value": components}


_INVALID = object()


def _number(vr: str, text: str) -> Any:
    if not text:
        return None
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
    elem: DataElement, tag: int, ctx: EncodeContext, path: str, capture: frozenset[int]
) -> dict[str, Any]:
    """Encode an element pydicom already converted (ambiguous VR, UN sequences)."""
    vr = vr_name(elem.VR)
    value = elem.value
    if value is None or value == "" or value == b"":
        return {"vr": vr}
    if isinstance(value, bytes):
        return _binary(vr, tag, value, None, len(value), ctx, path)  # type: ignore[arg-type]
    components = list(value) if isinstance(value, MultiValue | list | tuple) else [value]
    components = [str(c) if isinstance(c, PersonName) else c for c in components]
    if tag in capture:
        ctx.captured[tag] = Captured(vr, components)
    if vr in NUMBER_STRING_VRS:
        return {"vr": vr, "Value": [_number(vr, str(c)) for c in components]}
    if vr == "PN":
        return {"vr": vr, "Value": [_pn_json(c) for c in components]}
    return {"vr": vr, "Value": components}


# --- decoders: bytes -> list of components ---------------------------------------------------

Decoder = Callable[[bytes, "list[str] | None", bool], "list[Any] | None"]


def _ascii_multi(value: bytes, _enc: list[str] | None, _le: bool) -> list[Any]:
    return value.decode(DEFAULT_ENCODING).rstrip(" \x00").split("\\")


def _stripped_multi(value: bytes, _enc: list[str] | None, _le: bool) -> list[Any]:
    return [v.strip(" \x00") for v in value.decode(DEFAULT_ENCODING).split("\\")]


def _ur(value: bytes, _enc: list[str] | None, _le: bool) -> list[Any]:
    return [value.decode(DEFAULT_ENCODING).rstrip()]


def _text_multi(value: bytes, enc: list[str] | None, _le: bool) -> list[Any]:
    enc = enc or [DEFAULT_ENCODING]
    return [decode_bytes(v, enc, TEXT_VR_DELIMS).rstrip("\x00 ") for v in value.split(b"\\")]


def _text_single(value: bytes, enc: list[str] | None, _le: bool) -> list[Any]:
    return [decode_bytes(value, enc or [DEFAULT_ENCODING], TEXT_VR_DELIMS).rstrip("\x00 ")]


def _person_names(value: bytes, enc: list[str] | None, _le: bool) -> list[Any]:
    decoded = decode_bytes(value.rstrip(b"\x00 "), enc or [DEFAULT_ENCODING], TEXT_VR_DELIMS)
    return decoded.split("\\")


def _numeric(fmt: str) -> Decoder:
    size = struct.calcsize("<" + fmt)  # standard sizes, not native ("L" is 8 bytes natively)

    def decode(value: bytes, _enc: list[str] | None, little: bool) -> list[Any] | None:
        if len(value) % size:
            return None
        order = "<" if little else ">"
        return list(struct.unpack(f"{order}{len(value) // size}{fmt}", value))

    return decode


def _attribute_tags(value: bytes, _enc: list[str] | None, little: bool) -> list[Any] | None:
    if len(value) % 4:
        return None
    order = "<" if little else ">"
    pairs = struct.unpack(f"{order}{len(value) // 2}H", value)
    return [f"{pairs[i]:04X}{pairs[i + 1]:04X}" for i in range(0, len(pairs), 2)]


_DECODERS: dict[str, Decoder] = {
    "AE": _stripped_multi,
    "AS": _ascii_multi,
    "CS": _ascii_multi,
    "DA": _ascii_multi,
    "DT": _ascii_multi,
    "TM": _ascii_multi,
    "UI": _ascii_multi,
    "DS": _stripped_multi,
    "IS": _stripped_multi,
    "UR": _ur,
    "SH": _text_multi,
    "LO": _text_multi,
    "UC": _text_multi,
    "ST": _text_single,
    "LT": _text_single,
    "UT": _text_single,
    "PN": _person_names,
    "AT": _attribute_tags,
    **{vr: _numeric(fmt) for vr, fmt in NUMERIC_FORMATS.items()},
}
