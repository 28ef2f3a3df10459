"""Overlay planes (60xx,3000) burned into a rendered frame (PS3.3 C.9.2).

Overlays are bit planes: each set bit becomes the brightest output value. A
multi-frame overlay covers image frames ``Image Frame Origin`` onwards, one plane
per frame; ``Overlay Origin`` places the plane (1-based row, column) on the image,
and anything outside the image is dropped. Overlays embedded in unused high bits
of Pixel Data (retired) are not read.
"""

from __future__ import annotations

import numpy as np
from pydicom.dataset import Dataset

from dicomflow.render.errors import malformed

OVERLAY_GROUPS = tuple(range(0x6000, 0x6020, 2))


def overlay_groups(ds: Dataset) -> list[int]:
    """The repeating groups 60xx that hold Overlay Data."""
    return [g for g in OVERLAY_GROUPS if (g << 16 | 0x3000) in ds]


def overlay_mask(ds: Dataset, frame: int, shape: tuple[int, int]) -> np.ndarray | None:
    """The union of every overlay plane that applies to ``frame``, on an image of ``shape``."""
    mask: np.ndarray | None = None
    for group in overlay_groups(ds):
        plane = _plane(ds, group, frame)
        if plane is None:
            continue
        if mask is None:
            mask = np.zeros(shape, dtype=bool)
        origin = ds.get((group, 0x0050))
        try:
            row, col = (int(v) - 1 for v in origin.value) if origin is not None else (0, 0)
        except (TypeError, ValueError) as exc:
            raise malformed("an Overlay Origin is not two integers") from exc
        _paste(mask, plane, row, col)
    return mask


def _plane(ds: Dataset, group: int, frame: int) -> np.ndarray | None:
    try:
        frames = int(ds[group, 0x0015].value) if (group, 0x0015) in ds else 1
        first = int(ds[group, 0x0051].value) if (group, 0x0051) in ds else 1
    except (TypeError, ValueError) as exc:
        raise malformed("overlay frame attributes are not integers") from exc
    index = frame - (first - 1)
    if not 0 <= index < max(frames, 1):
        return None
    try:
        planes = ds.overlay_array(group)
    except (ValueError, KeyError, AttributeError, TypeError, IndexError) as exc:
        raise malformed("Overlay Data cannot be read") from exc
    if planes.ndim == 3:
        return planes[index].astype(bool) if index < planes.shape[0] else None
    return planes.astype(bool) if index == 0 else None


def _paste(mask: np.ndarray, plane: np.ndarray, row: int, col: int) -> None:
    rows, cols = mask.shape
    top, left = max(row, 0), max(col, 0)
    bottom, right = min(row + plane.shape[0], rows), min(col + plane.shape[1], cols)
    if bottom <= top or right <= left:
        return
    mask[top:bottom, left:right] |= plane[top - row : bottom - row, left - col : right - col]


def burn(image: np.ndarray, mask: np.ndarray | None) -> np.ndarray:
    """``image`` with the pixels of ``mask`` set to the brightest value of its dtype."""
    if mask is None or not mask.any():
        return image
    out = image.copy()
    out[mask] = np.iinfo(image.dtype).max
    return out
