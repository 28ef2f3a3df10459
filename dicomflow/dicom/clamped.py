"""A file whose reads never ask for more than what is left of it.

pydicom reads a value by the length its header claims, and a Python file object
reserves what a read asks for before it finds the file shorter: a claimed 4 GiB in
a 70 KB file reserved 4 GiB, a damaged 3 KB JPEG 2000 file 1.3 GB. Reads through
:class:`ClampedReads` ask for at most the bytes that remain, so damage costs what the
file holds, not what it claims.
"""

from __future__ import annotations

import io
from typing import Any, BinaryIO


class ClampedReads:
    """``fp`` (seekable, ``size`` bytes long) with every read cut to what remains."""

    def __init__(self, fp: BinaryIO, size: int) -> None:
        self._fp, self._size = fp, size

    @classmethod
    def of(cls, fp: BinaryIO) -> ClampedReads:
        """``fp`` clamped to its own length (found by seeking to its end)."""
        position = fp.tell()
        size = fp.seek(0, io.SEEK_END)
        fp.seek(position)
        return cls(fp, size)

    def read(self, n: int | None = -1) -> bytes:
        if n is None or n < 0:
            return self._fp.read()
        return self._fp.read(min(n, max(0, self._size - self._fp.tell())))

    def __getattr__(self, name: str) -> Any:
        return getattr(self._fp, name)
