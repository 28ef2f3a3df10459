"""A fast reader for the common case: Part 10 files in little-endian transfer syntaxes.

Profiling showed pydicom's general-purpose reader (plus building pydicom
objects) costs more than everything else in a scan. This reader walks the
bytes once with ``struct.unpack_from`` and produces the :class:`Element` tree
directly. It handles explicit and implicit VR little endian (which covers every
compressed transfer syntax), sequences of defined and undefined length,
private elements and the ``UN``/ambiguous-VR rules pydicom applies.

It never guesses: anything outside that envelope (big endian, deflate, no
preamble, VRs that disagree with the transfer syntax, truncation, ambiguous VRs
it cannot settle) raises :class:`FastPathUnsupported`, and the caller falls back
to the pydicom-backed reader. Tests check that both readers give identical
results on every file of the corpus.
"""

from __future__ import annotations

from functools import cache
from struct import unpack_from
from typing import BinaryIO

from pydicom.datadict import dictionary_VR, private_dictionary_VR

from dicomflow.dicom.dicomjson import MAX_SEQUENCE_DEPTH
from dicomflow.dicom.elements import UNDEFINED_LENGTH, Element, Elements
from dicomflow.errors import ErrorCode, MalformedDicomError

PIXEL_DATA_TAGS = frozenset({0x7FE00008, 0x7FE00009, 0x7FE00010})
IMPLICIT_VR_LITTLE_ENDIAN = "1.2.840.10008.1.2"
_UNSUPPORTED_SYNTAXES = frozenset({"1.2.840.10008.1.2.2", "1.2.840.10008.1.2.1.99"})
_ITEM, _ITEM_END, _SEQUENCE_END = 0xFFFEE000, 0xFFFEE00D, 0xFFFEE0DD
_LONG_VRS = frozenset(
    {b"OB", b"OD", b"OF", b"OL", b"OV", b"OW", b"SQ", b"SV", b"UC", b"UN", b"UR", b"UT", b"UV"}
)
_VALID_VRS = _LONG_VRS | frozenset(
    {
        b"AE",
        b"AS",
        b"AT",
        b"CS",
        b"DA",
        b"DS",
        b"DT",
        b"FL",
        b"FD",
        b"IS",
        b"LO",
        b"LT",
        b"PN",
        b"SH",
        b"SL",
        b"SS",
        b"ST",
        b"SV",
        b"TM",
        b"UI",
        b"UL",
        b"US",
        b"UV",
    }
)
# 'US or SS' tags pydicom settles with Pixel Representation (0 → US, else SS).
_US_SS_BY_PIXEL_REPRESENTATION = frozenset(
    {
        0x00280104,
        0x00280105,
        0x00280106,
        0x00280107,
        0x00280108,
        0x00280109,
        0x00280110,
        0x00280111,
        0x00280120,
        0x00280121,
    }
)
IMPLICIT_PIXEL_VR = {0x7FE00008: "OF", 0x7FE00009: "OD", 0x7FE00010: "OW"}
FIRST_READ = 16 * 1024
MAX_FRAGMENTS = 10_000_000
MAX_HEADER_BYTES = 8 * 1024 * 1024
MAX_TRAILING_BYTES = 1024 * 1024


# Element is a NamedTuple whose generated __new__ is Python code; on the hot path the
# tuple constructor is called directly (same object, a few times faster).
_new_element = tuple.__new__


class FastPathUnsupported(Exception):
    """The file is outside what the fast reader handles; use the pydicom-backed reader."""


class _NeedMore(Exception):
    """The buffer ended before the header did."""


@cache
def _public_vr(tag: int) -> str | None:
    try:
        return str(dictionary_VR(tag))
    except KeyError:
        return None


@cache
def _private_vr(tag: int, creator: str) -> str:
    try:
        return str(private_dictionary_VR(tag, creator))
    except KeyError:
        return "UN"


class FastHeader:
    """What the fast reader found: file meta, data set, and where Pixel Data sits."""

    __slots__ = ("elements", "file_meta", "implicit", "pixel", "transfer_syntax_uid")

    def __init__(
        self,
        file_meta: Elements,
        elements: Elements,
        transfer_syntax_uid: str,
        implicit: bool,
        pixel: tuple[int, str, int, int | None, int] | None,
    ) -> None:
        self.file_meta = file_meta
        self.elements = elements
        self.transfer_syntax_uid = transfer_syntax_uid
        self.implicit = implicit
        self.pixel = pixel


def read_fast(fp: BinaryIO, size: int | None) -> FastHeader:
    """Parse a Part 10 header from ``fp`` (positioned anywhere) or raise FastPathUnsupported."""
    want = FIRST_READ
    while True:
        fp.seek(0)
        data = fp.read(want)
        whole = len(data) < want or (size is not None and len(data) >= size)
        try:
            return _Parser(data, whole).parse_file(fp, size)
        except _NeedMore:
            if whole or want >= MAX_HEADER_BYTES:
                raise FastPathUnsupported from None
            want = min(want * 4, MAX_HEADER_BYTES)


class _Parser:
    __slots__ = ("base", "data", "implicit", "whole")

    def __init__(self, data: bytes, whole: bool, base: int = 0) -> None:
        self.data = data
        self.whole = whole
        self.base = base
        self.implicit = False

    def _short(self) -> Exception:
        # Running out of bytes in a complete buffer is truncation: let pydicom classify it.
        return FastPathUnsupported() if self.whole else _NeedMore()

    def parse_file(self, fp: BinaryIO, size: int | None) -> FastHeader:
        data = self.data
        if data[128:132] != b"DICM":
            raise FastPathUnsupported
        meta, pos = self._file_meta(132)
        syntax = _transfer_syntax(meta)
        if syntax is None or syntax in _UNSUPPORTED_SYNTAXES:
            raise FastPathUnsupported
        self.implicit = syntax == IMPLICIT_VR_LITTLE_ENDIAN
        if self.implicit and len(data) >= pos + 6 and data[pos + 4 : pos + 6] in _VALID_VRS:
            raise FastPathUnsupported  # written explicit despite the syntax; pydicom adapts
        elements, pos, pixel_at = self._dataset(pos, None, 0, top=True)
        pixel = None
        if pixel_at is not None:
            pixel, end = self._pixel(pixel_at, fp, size)
            if size is not None and end < size:
                elements += self._trailing(fp, end, size)
        return FastHeader(meta, elements, syntax, self.implicit, pixel)

    def _file_meta(self, pos: int) -> tuple[Elements, int]:
        data = self.data
        out: list[Element] = []
        while True:
            if pos + 8 > len(data):
                raise self._short()
            group = unpack_from("<H", data, pos)[0]
            if group != 0x0002:
                return tuple(out), pos
            element, pos = self._explicit(pos, {}, None, 0)
            if out and element.tag <= out[-1].tag:
                raise FastPathUnsupported  # repeated meta elements: pydicom keeps the last
            out.append(element)

    def _dataset(
        self, pos: int, end: int | None, depth: int, *, top: bool = False
    ) -> tuple[Elements, int, int | None]:
        """Parse elements from ``pos`` until ``end`` (or an item delimiter when None)."""
        if depth > MAX_SEQUENCE_DEPTH:
            raise MalformedDicomError(
                f"sequences nested deeper than {MAX_SEQUENCE_DEPTH} levels",
                code=ErrorCode.TOO_DEEP,
            )
        data = self.data
        out: list[Element] = []
        creators: dict[int, str] = {}
        pixel_rep: int | None = None
        limit = len(data) if end is None else end
        previous = -1
        while pos < limit or end is None:
            if pos + 8 > len(data):
                if top and self.whole and end is None and pos == len(data):
                    return tuple(out), pos, None  # clean end of file, no Pixel Data
                raise self._short()
            group, number = unpack_from("<HH", data, pos)
            tag = group << 16 | number
            if tag <= previous and tag != _ITEM_END:
                raise FastPathUnsupported  # repeated or out-of-order tags: pydicom's rules
            previous = tag
            if tag == _ITEM_END:
                if end is not None or top:
                    raise FastPathUnsupported
                return tuple(out), pos + 8, None
            if top and tag in PIXEL_DATA_TAGS:
                return tuple(out), pos, pos
            if tag >> 16 == 0xFFFE:
                raise FastPathUnsupported
            if self.implicit:
                element, pos = self._implicit(pos, creators, pixel_rep, depth)
            else:
                element, pos = self._explicit(pos, creators, pixel_rep, depth)
            if group & 1 and 0x10 <= number <= 0xFF and isinstance(element.value, bytes):
                if element.vr not in ("LO", "UN"):
                    raise FastPathUnsupported  # an odd creator encoding: let pydicom decide
                creators[tag] = element.value.decode("iso8859").rstrip(" \x00")
            elif tag == 0x00280103 and element.length == 2:
                pixel_rep = unpack_from("<H", element.value)[0]
            out.append(element)
        if pos != limit:
            raise FastPathUnsupported
        return tuple(out), pos, None

    def _explicit(
        self, pos: int, creators: dict[int, str], pixel_rep: int | None, depth: int
    ) -> tuple[Element, int]:
        data = self.data
        if pos + 8 > len(data):
            raise self._short()
        tag = unpack_from("<HH", data, pos)
        tag_int = tag[0] << 16 | tag[1]
        code = data[pos + 4 : pos + 6]
        if code in _LONG_VRS:
            if pos + 12 > len(data):
                raise self._short()
            length = unpack_from("<L", data, pos + 8)[0]
            start = pos + 12
        elif code in _VALID_VRS:
            length = unpack_from("<H", data, pos + 6)[0]
            start = pos + 8
        else:
            raise FastPathUnsupported  # implicit data inside an explicit file, or garbage
        vr = code.decode("ascii")
        if vr == "UN":
            vr = self._vr_for_un(tag_int, creators, length)
        return self._value(tag_int, vr, start, length, depth)

    def _implicit(
        self, pos: int, creators: dict[int, str], pixel_rep: int | None, depth: int
    ) -> tuple[Element, int]:
        group, number, length = unpack_from("<HHL", self.data, pos)
        tag = group << 16 | number
        vr = self._implicit_vr(tag, creators, pixel_rep)
        return self._value(tag, vr, pos + 8, length, depth)

    def _implicit_vr(self, tag: int, creators: dict[int, str], pixel_rep: int | None) -> str:
        group, number = tag >> 16, tag & 0xFFFF
        if group & 1:
            return _private_element_vr(tag, creators)
        vr = _public_vr(tag)
        if vr is None:
            if number == 0:
                return "UL"
            raise FastPathUnsupported
        if vr == "OB or OW" and (tag == 0x7FE00010 or _is_overlay_data(tag)):
            return "OW"  # PS3.5 A.1: implicit VR little endian encodes pixels and overlays as OW
        if vr == "US or SS":
            if tag in _US_SS_BY_PIXEL_REPRESENTATION and pixel_rep is not None:
                return "US" if pixel_rep == 0 else "SS"
            raise FastPathUnsupported
        if " or " in vr:
            raise FastPathUnsupported
        return vr

    def _vr_for_un(self, tag: int, creators: dict[int, str], length: int) -> str:
        """pydicom replaces an explicit ``UN`` with the dictionary VR; so do we."""
        if tag >> 16 & 1:
            vr = _private_element_vr(tag, creators)
        elif length != UNDEFINED_LENGTH and length < 0xFFFF:
            vr = _public_vr(tag) or "UN"
        elif _public_vr(tag) is not None:
            raise FastPathUnsupported  # pydicom's choice here depends on its defer size
        else:
            vr = "UN"
        if vr == "SQ" or " or " in vr or (vr == "UN" and length == UNDEFINED_LENGTH):
            raise FastPathUnsupported  # UN-encoded sequences: pydicom re-parses as implicit
        return vr

    def _value(self, tag: int, vr: str, start: int, length: int, depth: int) -> tuple[Element, int]:
        data = self.data
        if vr == "SQ":
            if length == UNDEFINED_LENGTH:
                items, pos = self._items(start, None, depth)
            else:
                if start + length > len(data):
                    raise self._short()
                items, pos = self._items(start, start + length, depth)
            return _new_element(
                Element, (tag, "SQ", items, self.base + start, length, True, False)
            ), pos
        if length == UNDEFINED_LENGTH:
            raise FastPathUnsupported  # undefined length outside a sequence (not Pixel Data)
        end = start + length
        if end > len(data):
            raise self._short()
        return _new_element(
            Element, (tag, vr, data[start:end], self.base + start, length, True, False)
        ), end

    def _items(self, pos: int, end: int | None, depth: int) -> tuple[tuple[Elements, ...], int]:
        data = self.data
        items: list[Elements] = []
        while end is None or pos < end:
            if pos + 8 > len(data):
                raise self._short()
            group, number, length = unpack_from("<HHL", data, pos)
            tag = group << 16 | number
            if tag == _SEQUENCE_END:
                if end is not None:
                    raise FastPathUnsupported
                return tuple(items), pos + 8
            if tag != _ITEM:
                raise FastPathUnsupported
            if length == UNDEFINED_LENGTH:
                item, pos, _ = self._dataset(pos + 8, None, depth + 1)
            else:
                if pos + 8 + length > len(data):
                    raise self._short()
                item, pos, _ = self._dataset(pos + 8, pos + 8 + length, depth + 1)
            items.append(item)
        if pos != end:
            raise FastPathUnsupported
        return tuple(items), pos

    def _pixel(
        self, pos: int, fp: BinaryIO, size: int | None
    ) -> tuple[tuple[int, str, int, int | None, int], int]:
        """Locate the Pixel Data value without reading it: (tag, vr, offset, length, end)."""
        data = self.data
        if pos + 8 > len(data):
            raise self._short()
        group, number = unpack_from("<HH", data, pos)
        tag = group << 16 | number
        if self.implicit:
            length = unpack_from("<L", data, pos + 4)[0]
            start, vr = pos + 8, IMPLICIT_PIXEL_VR[tag]
        else:
            if pos + 12 > len(data):
                raise self._short()
            code = data[pos + 4 : pos + 6]
            if code not in (b"OB", b"OW", b"OF", b"OD"):
                raise FastPathUnsupported
            length = unpack_from("<L", data, pos + 8)[0]
            start, vr = pos + 12, code.decode("ascii")
        offset = self.base + start
        if length != UNDEFINED_LENGTH:
            end = offset + length
            if size is None or end > size:
                raise FastPathUnsupported  # truncated (or unknown size): pydicom path decides
            return (tag, vr, offset, length, end), end
        try:
            end = skip_fragments(fp, offset, size)
        except MalformedDicomError:
            raise FastPathUnsupported from None  # the careful reader classifies it
        return (tag, vr, offset, None, end), end

    def _trailing(self, fp: BinaryIO, offset: int, size: int) -> Elements:
        if size - offset > MAX_TRAILING_BYTES:
            raise FastPathUnsupported
        fp.seek(offset)
        trailing = _Parser(fp.read(size - offset), True, base=offset)
        trailing.implicit = self.implicit
        elements, _, pixel_at = trailing._dataset(0, None, 0, top=True)
        if pixel_at is not None:
            raise FastPathUnsupported
        return elements


def _private_element_vr(tag: int, creators: dict[int, str]) -> str:
    number = tag & 0xFFFF
    if 0x10 <= number <= 0xFF:
        return "LO"
    if number < 0x1000:
        return "UN"
    creator = creators.get((tag & 0xFFFF0000) | number >> 8)
    if creator is None:
        # pydicom looks for the creator in the whole data set (it may come later, or
        # before Pixel Data for trailing elements); leave those cases to it.
        raise FastPathUnsupported
    return _private_vr(tag, creator) if creator else "UN"


def _is_overlay_data(tag: int) -> bool:
    group = tag >> 16
    return tag & 0xFFFF == 0x3000 and 0x6000 <= group <= 0x601E and group % 2 == 0


def _transfer_syntax(meta: Elements) -> str | None:
    for element in meta:
        if element.tag == 0x00020010:
            return bytes(element.value).decode("ascii", "replace").rstrip("\x00 ")
    return None


def skip_fragments(fp: BinaryIO, offset: int, size: int | None, order: str = "<") -> int:
    """Walk encapsulated item headers without reading fragments; return the end offset.

    Shared by both readers. A file that ends early or has a bad item header raises
    :class:`MalformedDicomError` (the fast reader turns that into a fallback).
    """
    fp.seek(offset)
    for _ in range(MAX_FRAGMENTS):
        raw = fp.read(8)
        if len(raw) < 8:
            raise MalformedDicomError(
                "encapsulated Pixel Data has no sequence delimiter", code=ErrorCode.TRUNCATED
            )
        group, number, length = unpack_from(order + "HHL", raw)
        tag = group << 16 | number
        if tag == _SEQUENCE_END:
            return fp.tell()
        if tag != _ITEM or length == UNDEFINED_LENGTH:
            raise MalformedDicomError("encapsulated Pixel Data has a bad item header")
        offset = fp.tell() + length
        if size is not None and offset > size:
            raise MalformedDicomError(
                "an encapsulated fragment runs past the end of the file", code=ErrorCode.TRUNCATED
            )
        fp.seek(offset)
    raise MalformedDicomError("encapsulated Pixel Data has too many fragments")
