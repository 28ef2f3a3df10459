"""Inflate a deflated data set (Deflated Explicit VR Little Endian) within bounds.

pydicom inflates a deflated data set whole, however large it becomes: a 1 MB
file of deflated zeros is 1 GiB inflated, and parsing that held a worker for
minutes. Here the stream is inflated piece by piece and stopped as soon as it
passes a size cap, or a ratio cap for a file that grows far more than real data
does (deflate shrinks image and text data by a factor of a few, not hundreds).
The ratio cap applies only past a floor, so small, very regular data sets (a
black image of a few hundred KiB) are read.
"""

from __future__ import annotations

import zlib
from dataclasses import dataclass
from typing import BinaryIO

from dicomflow.errors import ErrorCode, MalformedDicomError

MiB = 1024 * 1024
_CHUNK = MiB  # deflated bytes read at a time


@dataclass(frozen=True)
class InflateLimits:
    """How far a deflated data set may grow: ``max_bytes`` inflated at most, and no
    more than ``max_ratio`` times its deflated size once past ``ratio_floor``."""

    max_bytes: int = 256 * MiB
    max_ratio: int = 100
    ratio_floor: int = MiB

    def budget(self, deflated_size: int | None) -> int:
        """The most inflated bytes a stream of ``deflated_size`` bytes may give."""
        if deflated_size is None:  # not known ahead: the size cap alone
            return self.max_bytes
        return min(self.max_bytes, max(self.ratio_floor, self.max_ratio * deflated_size))


def inflate(fp: BinaryIO, *, deflated_size: int | None, limits: InflateLimits) -> bytes:
    """The raw deflate stream from ``fp``'s position, inflated.

    Raises :class:`MalformedDicomError` with code ``too_large`` as soon as the output
    passes ``limits`` (before any more of it is made), and with code ``malformed``
    for a stream that is broken or ends early.
    """
    budget = limits.budget(deflated_size)
    inflater = zlib.decompressobj(-zlib.MAX_WBITS)
    out = bytearray()
    try:
        while not inflater.eof:
            chunk = inflater.unconsumed_tail or fp.read(_CHUNK)
            if not chunk:
                raise MalformedDicomError("the deflated data set ends early")
            out += inflater.decompress(chunk, budget + 1 - len(out))
            if len(out) > budget:
                raise MalformedDicomError(
                    f"the deflated data set inflates past its limit of {budget} bytes",
                    code=ErrorCode.TOO_LARGE,
                )
    except zlib.error as exc:
        raise MalformedDicomError("deflated data set cannot be inflated") from exc
    return bytes(out)
