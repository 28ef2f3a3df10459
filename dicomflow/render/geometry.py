"""Thumbnail sizes and resizing: aspect kept, longest side ``size``, never upscaled."""

from __future__ import annotations

import numpy as np
from PIL import Image

from dicomflow.render.errors import RenderError

# Factors Pillow's ``reduce`` averages exactly (powers of two: a shift; 3 is approximate).
EXACT_REDUCTIONS = (2, 4, 8)


def thumbnail_shape(rows: int, cols: int, size: int | None) -> tuple[int, int]:
    """``(h, w)`` of a ``rows`` x ``cols`` image whose longest side becomes ``size``."""
    if rows < 1 or cols < 1:
        raise RenderError("an image needs at least one row and one column")
    if size is None or max(rows, cols) <= size:
        return rows, cols
    if size < 1:
        raise RenderError("a thumbnail size must be positive")
    scale = size / max(rows, cols)
    return max(1, round(rows * scale)), max(1, round(cols * scale))


def resize(image: np.ndarray, size: int | None) -> np.ndarray:
    """``image`` shrunk to :func:`thumbnail_shape` with Pillow's BOX filter.

    BOX averages the source pixels under each output pixel: it never rings around
    burned-in graphics as Lanczos does, and costs a quarter as much. An 8-bit image
    shrunk by 2, 4 or 8 on both axes (a 512² slice to 256) is averaged block by block
    with ``Image.reduce``, which rounds each block's mean exactly (BOX's fixed-point
    weights are off by one now and then) in a quarter of BOX's time (0.08 ms against
    0.32 for a 512² slice)."""
    height, width = thumbnail_shape(image.shape[0], image.shape[1], size)
    if (height, width) == image.shape[:2]:
        return image
    if image.dtype == np.uint8:
        factor = image.shape[0] // height
        picture = Image.fromarray(image)
        if factor in EXACT_REDUCTIONS and image.shape[:2] == (height * factor, width * factor):
            return np.asarray(picture.reduce(factor))
        return np.asarray(picture.resize((width, height), Image.Resampling.BOX))
    channels = [image] if image.ndim == 2 else [image[..., k] for k in range(image.shape[2])]
    top = np.iinfo(image.dtype).max
    out = []
    for channel in channels:  # 16-bit: each channel as 32-bit float, then back
        plane = Image.fromarray(channel.astype(np.float32)).resize(
            (width, height), Image.Resampling.BOX
        )
        out.append(np.clip(np.rint(np.asarray(plane)), 0, top).astype(image.dtype))
    return out[0] if image.ndim == 2 else np.stack(out, axis=-1)
