"""Zarr v3 shards assembled from chunks encoded already, so a shard is written whole.

A shard of the ``sharding_indexed`` codec (index at the end, zarr's default) is its
inner chunks' bytes one after another, then an index holding one pair of
little-endian uint64 per inner chunk in C order (offset and length; both
``2**64 - 1`` for an empty chunk), then the CRC32C of that index. The stacks'
frames are encoded where they are decoded, so building a shard is a concatenation
and writing it is one file or one PUT (a test checks the bytes against zarr's own).
"""

from __future__ import annotations

import os
import struct
from collections.abc import Sequence

import google_crc32c

Chunk = bytes | memoryview  # an encoded chunk's bytes, or a view of them (see series_tasks)

EMPTY = 2**64 - 1  # offset and length of a chunk the shard does not hold
INDEX_ENTRY = struct.Struct("<QQ")


def shard_parts(chunks: Sequence[Chunk | None]) -> list[Chunk] | None:
    """The shard holding ``chunks`` (its inner chunks in C order, None where a chunk is
    empty) as the pieces that make its bytes in order, or None when every chunk is empty:
    zarr then writes no shard at all. Written piece by piece (:func:`write_parts`), a
    shard is never copied whole in memory."""
    if all(chunk is None for chunk in chunks):
        return None
    index = bytearray()
    offset = 0
    for chunk in chunks:
        if chunk is None:
            index += INDEX_ENTRY.pack(EMPTY, EMPTY)
            continue
        index += INDEX_ENTRY.pack(offset, len(chunk))
        offset += len(chunk)
    checksum = struct.pack("<I", google_crc32c.value(bytes(index)))
    return [*(c for c in chunks if c is not None), bytes(index) + checksum]


def shard_bytes(chunks: Sequence[Chunk | None]) -> bytes | None:
    """The shard holding ``chunks`` as one ``bytes`` (see :func:`shard_parts`)."""
    parts = shard_parts(chunks)
    return None if parts is None else b"".join(parts)


def write_parts(path: str, parts: Sequence[Chunk]) -> None:
    """Write ``parts`` one after another as the file ``path`` (created or truncated),
    gathered by the kernel (``writev``) rather than joined here."""
    descriptor = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o666)
    try:
        pending = [memoryview(part).cast("B") for part in parts if len(part)]
        while pending:
            written = os.writev(descriptor, pending[:WRITEV_MAX])
            while pending and written >= len(pending[0]):
                written -= len(pending[0])
                pending.pop(0)
            if written:
                pending[0] = pending[0][written:]
    finally:
        os.close(descriptor)


WRITEV_MAX = 512  # buffers a writev takes at once (Linux allows 1024)
