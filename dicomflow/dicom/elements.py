"""The parsed-header tree shared by both readers and by the DICOM JSON encoder.

Both the fast reader (:mod:`.fastread`) and the pydicom-backed reader
(:mod:`.pydicom_tree`) produce the same tree of :class:`Element` values, so
one encoder serves both and tests can compare the two readers directly.
"""

from __future__ import annotations

from typing import Any, NamedTuple

UNDEFINED_LENGTH = 0xFFFFFFFF


class Element(NamedTuple):
    """One data element.

    ``value`` is the encoded bytes; ``None`` when the value was not read (bulk
    data left in the source at ``offset``); for ``SQ`` a tuple of items, each a
    tuple of elements. When ``converted`` is true, ``value`` is already a Python
    value (pydicom resolved an ambiguous VR and decoded it).
    """

    tag: int
    vr: str
    value: Any
    offset: int | None
    length: int
    little_endian: bool = True
    converted: bool = False


Elements = tuple[Element, ...]
