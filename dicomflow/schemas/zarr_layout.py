"""The Zarr layout contract: attribute names, OME-Zarr 0.5 metadata, schema version."""

from __future__ import annotations

from typing import Any

import numpy as np

ZARR_SCHEMA_VERSION = "1.0"
OME_VERSION = "0.5"


def ome_multiscales(
    spacing: tuple[float, float, float], affine: np.ndarray, *, channels: bool
) -> dict[str, Any]:
    """OME-Zarr 0.5 ``ome`` attribute: z/y/x axes in millimetres, scale = spacing,
    translation = origin (voxel (0, 0, 0)) expressed along the stack's own z/y/x axes.

    For an axial stack those axes are S, P and L, so the translation is the
    origin's LPS coordinates in z/y/x order; the exact oblique mapping is the
    ``affine`` attribute.
    """
    axes = [
        {"name": "z", "type": "space", "unit": "millimeter"},
        {"name": "y", "type": "space", "unit": "millimeter"},
        {"name": "x", "type": "space", "unit": "millimeter"},
    ]
    scale = [float(v) for v in spacing]
    matrix = np.asarray(affine, float)
    origin = []
    for axis in range(3):
        direction = matrix[:3, axis]
        norm = float(np.linalg.norm(direction)) or 1.0
        origin.append(float(np.dot(matrix[:3, 3], direction / norm)))
    if channels:
        axes.append({"name": "c", "type": "channel"})
        scale.append(1.0)
        origin.append(0.0)
    return {
        "version": OME_VERSION,
        "multiscales": [
            {
                "name": "image",
                "axes": axes,
                "datasets": [
                    {
                        "path": "0",
                        "coordinateTransformations": [
                            {"type": "scale", "scale": scale},
                            {"type": "translation", "translation": origin},
                        ],
                    }
                ],
            }
        ],
    }
