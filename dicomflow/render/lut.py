"""Lookup tables of the VOI LUT, Modality LUT and Presentation LUT modules (PS3.3 C.11).

A table is read once into a :class:`Lut` (numpy data, first mapped value, bits) and
applied with one vectorised ``take``: values below the first mapped value get the
first entry, values past the end get the last (PS3.3 C.11.2.1.1).
"""

from __future__ import annotations

import struct
from dataclasses import dataclass, field
from typing import Any

import numpy as np
from pydicom.dataset import Dataset

from dicomflow.render.errors import malformed


@dataclass(frozen=True, eq=False)
class Lut:
    """A LUT: ``data[i]`` is the output for input ``first_mapped + i``."""

    first_mapped: int
    bits: int
    data: np.ndarray = field(repr=False)

    @property
    def max_output(self) -> int:
        """The largest output the descriptor allows (2**bits - 1)."""
        return (1 << self.bits) - 1

    def apply(self, values: np.ndarray) -> np.ndarray:
        """The table's output for every value (input rounded to the nearest integer)."""
        index = np.rint(values) if values.dtype.kind == "f" else values
        index = np.clip(index, self.first_mapped, self.first_mapped + len(self.data) - 1)
        offset = (index - self.first_mapped).astype(np.intp, copy=False)
        return np.take(self.data, offset)

    def normalized(self, values: np.ndarray) -> np.ndarray:
        """The output scaled to [0, 1] by the descriptor's bit depth (float32)."""
        out = self.apply(values).astype(np.float32)
        out *= np.float32(1.0 / self.max_output)
        return np.clip(out, 0.0, 1.0, out=out)


def read_lut(item: Dataset, *, little_endian: bool = True) -> Lut:
    """The LUT of a sequence item holding LUT Descriptor and LUT Data."""
    try:
        descriptor = [int(v) for v in item.LUTDescriptor]
        raw = item["LUTData"]
    except (AttributeError, KeyError, TypeError, ValueError) as exc:
        raise malformed("a LUT lacks a usable LUT Descriptor or LUT Data") from exc
    if len(descriptor) != 3:
        raise malformed("a LUT Descriptor must hold three values")
    entries, first_mapped, bits = descriptor
    entries = entries or 65536  # 0 means 2**16 entries (PS3.3 C.11.1.1.1)
    if not 1 <= bits <= 16:
        raise malformed("a LUT Descriptor gives an unsupported bit depth")
    data = _lut_values(raw.value, raw.VR, entries, little_endian)
    if data.size < entries or entries < 1:
        raise malformed("LUT Data is shorter than its LUT Descriptor says")
    return Lut(first_mapped=first_mapped, bits=bits, data=data[:entries])


def _lut_values(value: Any, vr: str, entries: int, little_endian: bool) -> np.ndarray:
    if isinstance(value, bytes | bytearray):
        if vr == "OB" or (len(value) == entries and entries % 2 == 0 and vr != "OW"):
            return np.frombuffer(value, dtype=np.uint8).astype(np.int64)
        count = len(value) // 2
        fmt = f"{'<' if little_endian else '>'}{count}H"
        return np.asarray(struct.unpack_from(fmt, value), dtype=np.int64)
    if value is None:
        return np.zeros(0, dtype=np.int64)
    values = value if isinstance(value, list | tuple) or hasattr(value, "__len__") else [value]
    return np.asarray(list(values), dtype=np.int64)


def is_little_endian(ds: Dataset) -> bool:
    """Byte order of OW LUT Data in ``ds`` (its transfer syntax; little endian when unknown)."""
    meta = getattr(ds, "file_meta", None)
    syntax = meta.get("TransferSyntaxUID") if meta is not None else None
    if syntax is not None:
        return str(syntax) != "1.2.840.10008.1.2.2"
    encoding = getattr(ds, "original_encoding", (None, True))
    return encoding[1] is not False
