"""The Zarr layout contract: attribute names, OME-Zarr 0.5 metadata, schema version."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np

ZARR_SCHEMA_VERSION = "1.0"
OME_VERSION = "0.5"


def ome_multiscales(
    spacing: tuple[float, float, float],
    affine: np.ndarray,
    *,
    channels: bool,
    levels: int = 1,
    units: Sequence[str | None] = ("millimeter",) * 3,
) -> dict[str, Any]:
    """OME-Zarr 0.5 ``ome`` attribute: a channel axis first when ``channels``, then z/y/x
    in ``units`` (no unit where None: an axis without geometry counts pixels), scale =
    spacing, translation = origin (voxel (0, 0, 0)) expressed along the stack's own
    z/y/x axes; one dataset per pyramid level, level ``n`` halving y and x ``n`` times.

    For an axial stack those axes are S, P and L, so the translation is the
    origin's LPS coordinates in z/y/x order; the exact oblique mapping is the
    ``affine`` attribute. A level's translation is its first pixel's centre: half a
    pixel of level 0 per halving further in.
    """
    axes: list[dict[str, Any]] = [
        {"name": name, "type": "space", **({"unit": unit} if unit else {})}
        for name, unit in zip("zyx", units, strict=True)
    ]
    matrix = np.asarray(affine, float)
    origin = []
    for axis in range(3):
        direction = matrix[:3, axis]
        norm = float(np.linalg.norm(direction)) or 1.0
        origin.append(float(np.dot(matrix[:3, 3], direction / norm)))
    if channels:
        axes.insert(0, {"name": "c", "type": "channel"})
    datasets = []
    for level in range(levels):
        factor = 2.0**level
        scale = [float(spacing[0]), spacing[1] * factor, spacing[2] * factor]
        shift = [0.0, (factor - 1) / 2 * spacing[1], (factor - 1) / 2 * spacing[2]]
        translation = [o + d for o, d in zip(origin, shift, strict=True)]
        if channels:
            scale.insert(0, 1.0)
            translation.insert(0, 0.0)
        datasets.append(
            {
                "path": str(level),
                "coordinateTransformations": [
                    {"type": "scale", "scale": [float(v) for v in scale]},
                    {"type": "translation", "translation": [float(v) for v in translation]},
                ],
            }
        )
    return {
        "version": OME_VERSION,
        "multiscales": [{"name": "image", "axes": axes, "datasets": datasets}],
    }
