"""An elementwise display transform computed once per stored value, not once per pixel.

The grayscale chain of PS3.4 Annex N.2 after the Modality LUT (window or VOI LUT,
Presentation LUT, inversion, quantizing) maps each value on its own. A CT slice of
512² pixels holds a few thousand distinct integer values, so the chain runs on the
range of values the frame spans and each pixel is looked up in that table: the same
numbers (each entry is the chain applied to that very value in the same dtype), for a
third of the floating-point work.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np

# A table pays when the frame holds several pixels per value its range spans.
PIXELS_PER_ENTRY = 4


def tabulated(values: np.ndarray, elementwise: Callable[[np.ndarray], np.ndarray]) -> np.ndarray:
    """``elementwise(values)``, through a table over ``values``' range when they are
    integers of at most 16 bits spanning few enough values; ``elementwise`` must map
    each value on its own, whatever the array it comes in."""
    if values.dtype.kind not in "iu" or values.dtype.itemsize > 2 or values.size == 0:
        return elementwise(values)
    low, high = int(values.min()), int(values.max())
    if (high - low + 1) * PIXELS_PER_ENTRY > values.size:
        return elementwise(values)
    table = elementwise(np.arange(low, high + 1, dtype=values.dtype))
    return table[np.subtract(values, low, dtype=np.int32)]
