"""Encapsulated Pixel Data with every fragment of even length.

Some inputs hold an odd-length fragment. pydicom reads it, but on writing pads
the whole value, which leaves a stray byte where the next item header should
be. Padding each odd fragment with one zero byte instead (decoders ignore
bytes after the end-of-image marker) keeps the output valid; the Basic Offset
Table is rewritten to the new fragment positions.
"""

from __future__ import annotations

import struct

from dicomflow.errors import DeidentificationError

ITEM = b"\xfe\xff\x00\xe0"


def _items(value: bytes) -> list[tuple[int, bytes]]:
    items = []
    position = 0
    while position < len(value):
        if value[position : position + 4] != ITEM or position + 8 > len(value):
            raise DeidentificationError("encapsulated Pixel Data has a bad item header")
        (length,) = struct.unpack("<I", value[position + 4 : position + 8])
        payload = value[position + 8 : position + 8 + length]
        if len(payload) != length:
            raise DeidentificationError("encapsulated Pixel Data runs past its end")
        items.append((position, payload))
        position += 8 + length
    return items


def even_fragments(value: bytes) -> bytes:
    """``value`` (the items of encapsulated Pixel Data) with no odd-length fragment."""
    items = _items(value)
    if len(items) < 2 or all(len(payload) % 2 == 0 for _, payload in items[1:]):
        return value
    table, fragments = items[0][1], items[1:]
    first = fragments[0][0]
    moved: dict[int, int] = {}
    body = bytearray()
    for position, payload in fragments:
        moved[position - first] = len(body)
        padded = payload + b"\x00" * (len(payload) % 2)
        body += ITEM + struct.pack("<I", len(padded)) + padded
    offsets = struct.unpack(f"<{len(table) // 4}I", table[: len(table) // 4 * 4])
    try:
        new_table = struct.pack(f"<{len(offsets)}I", *(moved[o] for o in offsets))
    except KeyError:
        raise DeidentificationError("the Basic Offset Table does not match the fragments") from None
    return ITEM + struct.pack("<I", len(new_table)) + new_table + bytes(body)
