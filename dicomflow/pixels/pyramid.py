"""Resolution levels of a stack: each halves rows and columns, so viewers open large
images fast (OME-Zarr multiscales)."""

from __future__ import annotations

import numpy as np


def halved(frames: np.ndarray, *, nearest: bool = False) -> np.ndarray:
    """``frames`` (n, rows, cols[, samples]) at half the rows and columns, rounded up: the
    mean of each 2×2 block (an odd edge repeats its last row or column), or its first
    pixel where values are labels, such as palette indices, that must not be mixed."""
    if nearest:
        return frames[:, ::2, ::2]
    rows, cols = frames.shape[1], frames.shape[2]
    pad = [(0, 0), (0, rows % 2), (0, cols % 2)] + [(0, 0)] * (frames.ndim - 3)
    padded = np.pad(frames, pad, mode="edge") if rows % 2 or cols % 2 else frames
    blocks = padded.reshape(
        frames.shape[0], padded.shape[1] // 2, 2, padded.shape[2] // 2, 2, *frames.shape[3:]
    )
    mean = blocks.mean(axis=(2, 4), dtype=np.float64)
    if np.issubdtype(frames.dtype, np.integer):
        mean = np.rint(mean)
    return mean.astype(frames.dtype)


def pyramid(frames: np.ndarray, levels: int, *, nearest: bool = False) -> list[np.ndarray]:
    """``frames`` and its ``levels - 1`` successive halvings (see :func:`halved`)."""
    result = [frames]
    for _ in range(levels - 1):
        result.append(halved(result[-1], nearest=nearest))
    return result
