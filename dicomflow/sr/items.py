"""Content items read straight from the element tree the scan already parsed.

pydicom converts a raw element on first access, and that conversion (about 30 µs a
value) is most of the cost of reading a content tree: a 6,000-item dose report
spends seconds in it. The scan's :class:`~dicomflow.records.Element` tree already
holds every value's bytes, so :class:`Item` decodes only the values the SR reader
asks for, by keyword, with the data set's character set. ``Item.get`` answers as
pydicom's ``Dataset.get`` does for the same keyword: text as ``str`` (a list when
multi-valued), binary numbers as ``int``/``float`` (a list when multi-valued),
decimal and integer strings as their text, a sequence as a list of items.
"""

from __future__ import annotations

import struct
import warnings
from functools import cache
from typing import Any

from pydicom.charset import decode_bytes
from pydicom.datadict import tag_for_keyword
from pydicom.dataset import Dataset
from pydicom.multival import MultiValue

from dicomflow.dicom.dicomjson import DEFAULT_ENCODING, encodings_of
from dicomflow.dicom.pydicom_tree import tree_from_dataset
from dicomflow.records import Element, Elements

SPECIFIC_CHARACTER_SET = 0x00080005
CHARSET_TEXT = frozenset({"SH", "LO", "ST", "LT", "UT", "PN", "UC"})
SINGLE_VALUED = frozenset({"ST", "LT", "UT", "UR"})
BINARY = {"US": "H", "UL": "I", "SS": "h", "SL": "i", "FL": "f", "FD": "d", "UV": "Q", "SV": "q"}
TEXT_DELIMITERS = {0x5C, 0x5E, 0x3D, 0x0D, 0x0A, 0x09, 0x0C}  # where an escape resets


class NotInMemory(LookupError):
    """A value the reader needs was left in the file by the scan (bulk-sized)."""


@cache
def tag_of(keyword: str) -> int:
    tag = tag_for_keyword(keyword)
    if tag is None:
        raise KeyError(keyword)
    return int(tag)


class Item:
    """One data set (the document, or a sequence item) read lazily by keyword."""

    __slots__ = ("_by_tag", "_elements", "_encodings", "_sequences")

    def __init__(self, elements: Elements, encodings: list[str] | None = None) -> None:
        self._elements = elements
        self._by_tag: dict[int, Element] | None = None
        self._encodings = encodings_of(elements, encodings)
        self._sequences: dict[int, list[Item]] = {}

    @classmethod
    def from_dataset(cls, ds: Dataset) -> Item:
        """A pydicom data set as an item (every value read)."""
        return cls(tree_from_dataset(ds))

    def _element(self, keyword: str) -> Element | None:
        if self._by_tag is None:
            self._by_tag = {e.tag: e for e in self._elements}
        return self._by_tag.get(tag_of(keyword))

    def __contains__(self, keyword: str) -> bool:
        return self._element(keyword) is not None

    def get(self, keyword: str, default: Any = None) -> Any:
        element = self._element(keyword)
        if element is None:
            return default
        if element.vr == "SQ":
            return self._sequence(element)
        if element.value is None:
            raise NotInMemory(keyword)
        if element.converted:
            value = element.value
            return list(value) if isinstance(value, list | tuple | MultiValue) else value
        return _decode(element, self._encodings)

    def _sequence(self, element: Element) -> list[Item]:
        items = self._sequences.get(element.tag)
        if items is None:
            value = element.value or ()
            items = [Item(item, self._encodings) for item in value]
            self._sequences[element.tag] = items
        return items


def _decode(element: Element, encodings: list[str] | None) -> Any:
    value: bytes = element.value
    fmt = BINARY.get(element.vr)
    if fmt is not None:
        size = struct.calcsize("<" + fmt)
        if not value:
            return None
        if len(value) % size:
            raise ValueError("length is not a multiple of the value size")
        order = "<" if element.little_endian else ">"
        numbers = list(struct.unpack(f"{order}{len(value) // size}{fmt}", value))
        return numbers[0] if len(numbers) == 1 else numbers
    if element.vr in ("OB", "OW", "OF", "OD", "OL", "OV", "UN"):
        return value
    text = _text(value, encodings) if element.vr in CHARSET_TEXT else value.decode("latin-1")
    if element.vr in SINGLE_VALUED:
        return text.rstrip("\x00 ")
    parts = [part.strip("\x00 ") for part in text.split("\\")]
    return parts[0] if len(parts) == 1 else parts


def _text(value: bytes, encodings: list[str] | None) -> str:
    if encodings and len(encodings) == 1 and b"\x1b" not in value:
        try:
            return value.decode(encodings[0])
        except (UnicodeError, LookupError):
            pass
    with warnings.catch_warnings():  # pydicom warns, quoting the value, on bad bytes
        warnings.simplefilter("ignore")
        return decode_bytes(value, encodings or [DEFAULT_ENCODING], TEXT_DELIMITERS)
