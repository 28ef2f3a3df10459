"""Colour images: PALETTE COLOR through its tables, RGB scaled to the output depth,
and the ICC profile that says what the RGB values mean (PS3.3 C.11.15)."""

from __future__ import annotations

import io
from typing import Any

import numpy as np
from PIL import ImageCms
from pydicom.dataset import Dataset
from pydicom.pixels import apply_color_lut

from dicomflow.render.errors import RenderError, malformed

CHANNELS = ("Red", "Green", "Blue")


def palette_to_rgb(
    indices: np.ndarray, ds: Dataset, palette: dict[str, Any] | None, bits: int
) -> np.ndarray:
    """PALETTE COLOR indices to RGB at ``bits`` per sample (uint8 or uint16).

    The table comes from decode (``palette``) when it read one, else from ``ds``
    through pydicom (segmented palettes included). Entries are scaled by the bit
    depth of the LUT Descriptor; an 8-bit table declared 16 bits deep is
    recognised by its values."""
    first_mapped, entry_bits = _palette_descriptor(ds)
    if palette is not None:
        table = np.asarray(palette["rgb"], dtype=np.float64)
        first_mapped = int(palette["first_mapped"])
    else:
        table = _read_table(ds, first_mapped)
    if table.ndim != 2 or table.shape[1] != 3 or table.shape[0] < 1:
        raise malformed("the palette tables do not match their descriptors")
    if entry_bits == 16 and table.size and table.max() < 256:
        entry_bits = 8  # tables padded to 16 bits but holding 8-bit values
    scale = ((1 << bits) - 1) / ((1 << entry_bits) - 1)
    out_type = np.uint8 if bits == 8 else np.uint16
    lut = np.rint(np.clip(table * scale, 0, (1 << bits) - 1)).astype(out_type)
    offset = np.clip(indices.astype(np.int64) - first_mapped, 0, len(lut) - 1)
    return np.take(lut, offset, axis=0)


def _palette_descriptor(ds: Dataset) -> tuple[int, int]:
    """(first mapped value, bits per entry) agreed by the three descriptors."""
    descriptors = []
    for channel in CHANNELS:
        value = ds.get(f"{channel}PaletteColorLookupTableDescriptor")
        try:
            descriptor = [int(v) for v in value] if value is not None else []
        except (TypeError, ValueError) as exc:
            raise malformed("a palette LUT Descriptor is not numeric") from exc
        if len(descriptor) != 3:
            raise malformed("a palette LUT Descriptor must hold three values")
        descriptors.append(descriptor)
    if any(d != descriptors[0] for d in descriptors):
        raise malformed("the red, green and blue palette descriptors disagree")
    _, first_mapped, entry_bits = descriptors[0]
    if entry_bits not in (8, 16):
        raise malformed("a palette LUT Descriptor gives a bit depth other than 8 or 16")
    return first_mapped, entry_bits


def _read_table(ds: Dataset, first_mapped: int) -> np.ndarray:
    entries = int(ds.RedPaletteColorLookupTableDescriptor[0]) or 65536
    indices = np.arange(first_mapped, first_mapped + entries)
    try:
        return np.asarray(apply_color_lut(indices, ds), dtype=np.float64)
    except (ValueError, KeyError, AttributeError, IndexError, TypeError) as exc:
        raise malformed("the palette tables cannot be read") from exc


def rgb_to_bits(rgb: np.ndarray, ds: Dataset, bits: int) -> np.ndarray:
    """RGB samples (Bits Stored deep) rescaled to ``bits`` per sample."""
    stored = _bits_stored(ds, rgb.dtype)
    out_type = np.uint8 if bits == 8 else np.uint16
    if stored == bits and rgb.dtype == out_type:
        return rgb
    if rgb.dtype.kind == "f":
        raise RenderError("floating point colour pixels are not supported")
    top = (1 << stored) - 1
    values = np.clip(rgb, 0, top).astype(np.float64)
    return np.rint(values * (((1 << bits) - 1) / top)).astype(out_type)


def _bits_stored(ds: Dataset, dtype: np.dtype) -> int:
    try:
        stored = int(ds.get("BitsStored") or 0)
    except (TypeError, ValueError):
        stored = 0
    container = dtype.itemsize * 8
    return stored if 0 < stored <= container else container


def icc_profile(ds: Dataset) -> bytes | None:
    """The ICC profile of the image (0028,2000), or of its first optical path (WSI)."""
    profile = ds.get("ICCProfile")
    if not profile:
        for path in ds.get("OpticalPathSequence") or []:
            if path.get("ICCProfile"):
                profile = path.ICCProfile
                break
    return bytes(profile) if profile else None


def check_icc_profile(profile: bytes) -> None:
    """Raise RenderError unless Pillow's LittleCMS can read ``profile``."""
    try:
        ImageCms.ImageCmsProfile(io.BytesIO(profile))
    except (OSError, ValueError, TypeError, ImageCms.PyCMSError) as exc:
        raise malformed("the ICC profile cannot be read") from exc
