"""The VOI LUT stage (PS3.3 C.11.2): windows, VOI LUTs, and the fallback window.

Every function here maps modality values to float32 in [0, 1]; quantizing to 8 or
16 bits happens once, later. Window formulas follow PS3.3 C.11.2.1.2.1 (LINEAR)
and C.11.2.1.3 (LINEAR_EXACT, SIGMOID) with y_min = 0 and y_max = 1.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np
from pydicom.dataset import Dataset
from pydicom.multival import MultiValue

from dicomflow.render.errors import RenderError, malformed
from dicomflow.render.lut import Lut, is_little_endian, read_lut
from dicomflow.render.settings import WindowChoice

VOI_FUNCTIONS = ("LINEAR", "LINEAR_EXACT", "SIGMOID")


@dataclass(frozen=True)
class Window:
    """A Window Center/Width pair with its VOI LUT Function."""

    center: float
    width: float
    function: str = "LINEAR"

    def __post_init__(self) -> None:
        if self.function not in VOI_FUNCTIONS:
            raise malformed("VOI LUT Function is not LINEAR, LINEAR_EXACT or SIGMOID")
        if not (np.isfinite(self.center) and np.isfinite(self.width)):
            raise RenderError("a window center or width is not a finite number")
        if self.function == "LINEAR" and self.width < 1:
            raise RenderError("a LINEAR window must be at least 1 wide")
        if self.width <= 0:
            raise RenderError("a window must have a positive width")

    def line(self) -> tuple[float, float] | None:
        """(pivot, slope) with which the window maps x to ``(x - pivot) * slope + 0.5``
        before clipping to [0, 1]; None where it is no straight line (SIGMOID, and LINEAR
        of width 1, a threshold). Centred on the pivot, a narrow window far from zero
        keeps float32's precision (``x * slope + offset`` cancels large terms)."""
        c, w = self.center, self.width
        if self.function == "LINEAR_EXACT":
            return c, 1.0 / w
        if self.function == "SIGMOID" or w == 1:
            return None
        return c - 0.5, 1.0 / (w - 1)


@dataclass(frozen=True)
class MinMax:
    """No window in the file: stretch each frame's range, optionally clipping percentiles."""

    percentile: float | None = None


Voi = Window | Lut | MinMax


def apply_voi(values: np.ndarray, voi: Voi) -> np.ndarray:
    """``values`` (one frame of modality values) through ``voi``, as float32 in [0, 1]."""
    if isinstance(voi, Window):
        return apply_window(values, voi)
    if isinstance(voi, Lut):
        return voi.normalized(values)
    return apply_minmax(values, voi.percentile)


def apply_window(values: np.ndarray, window: Window) -> np.ndarray:
    """PS3.3 C.11.2.1.2.1 (LINEAR), C.11.2.1.3.2 (LINEAR_EXACT), C.11.2.1.3.1 (SIGMOID)."""
    x = values.astype(np.float32, copy=False) if values.dtype != np.float64 else values
    c, w = window.center, window.width
    if window.function == "SIGMOID":
        out = 1.0 / (1.0 + np.exp(-4.0 * (x - c) / w))
        return out.astype(np.float32, copy=False)
    line = window.line()
    if line is None:  # LINEAR with width 1 is a threshold at c - 0.5
        return (x > c - 0.5).astype(np.float32)
    pivot, slope = line
    out = x - pivot  # a Python float keeps the array's float32 or float64
    out *= slope
    out += 0.5
    out = np.clip(out, 0.0, 1.0, out=out)
    return out.astype(np.float32, copy=False)


def apply_minmax(values: np.ndarray, percentile: float | None) -> np.ndarray:
    """Stretch [min, max] (or the [p, 100 - p] percentiles) of finite values to [0, 1]."""
    finite = values[np.isfinite(values)] if values.dtype.kind == "f" else values
    if finite.size == 0:
        return np.zeros(values.shape, dtype=np.float32)
    if percentile:
        low, high = (float(v) for v in np.percentile(finite, [percentile, 100 - percentile]))
    else:
        low, high = float(finite.min()), float(finite.max())
    if high <= low:
        return np.zeros(values.shape, dtype=np.float32)
    out = (values.astype(np.float32) - np.float32(low)) * np.float32(1.0 / (high - low))
    out = np.clip(out, 0.0, 1.0, out=out)
    if values.dtype.kind == "f":
        out[~np.isfinite(values)] = 0.0
    return out


def choose_voi(
    ds: Dataset,
    frame: int,
    choice: WindowChoice,
    percentile: float | None,
    centers: list[float] | None = None,
    widths: list[float] | None = None,
) -> Voi:
    """The VOI transform for one frame of ``ds``.

    ``"auto"``: the frame's first window (Frame VOI LUT functional group), else the
    first image-level window, else the first VOI LUT Sequence item, else min-max.
    An int N picks the N-th window (then the N-th VOI LUT). A pair is used as given.
    ``centers``/``widths`` are the image-level windows as decode read them.
    """
    if isinstance(choice, tuple):
        try:
            return Window(float(choice[0]), float(choice[1]))
        except (TypeError, ValueError) as exc:
            raise RenderError("an explicit window must hold two numbers") from exc
    windows = frame_windows(ds, frame)
    if windows is None:
        windows = image_windows(ds, centers, widths)
    luts = ds.get("VOILUTSequence") or []
    index = 0 if choice == "auto" else int(choice)
    if index < len(windows):
        return windows[index]
    if index - len(windows) < len(luts) and (choice == "auto" or not windows):
        return read_lut(luts[index - len(windows)], little_endian=is_little_endian(ds))
    if choice == "auto":
        return MinMax(percentile)
    raise RenderError("the requested window does not exist in this instance")


def image_windows(
    ds: Dataset, centers: list[float] | None = None, widths: list[float] | None = None
) -> list[Window]:
    """The image-level Window Center/Width pairs with the VOI LUT Function."""
    if centers is None or widths is None:
        centers, widths = numbers(ds.get("WindowCenter")), numbers(ds.get("WindowWidth"))
    return _windows(centers, widths, ds.get("VOILUTFunction"))


def frame_windows(ds: Dataset, frame: int) -> list[Window] | None:
    """Windows of the Frame VOI LUT functional group (per-frame first, then shared)."""
    per_frame = ds.get("PerFrameFunctionalGroupsSequence") or []
    shared = ds.get("SharedFunctionalGroupsSequence") or []
    items = ([per_frame[frame]] if frame < len(per_frame) else []) + list(shared[:1])
    for item in items:
        voi = item.get("FrameVOILUTSequence")
        if voi:
            found = _windows(
                numbers(voi[0].get("WindowCenter")),
                numbers(voi[0].get("WindowWidth")),
                voi[0].get("VOILUTFunction"),
            )
            if found:
                return found
    return None


def _windows(
    centers: list[float] | None, widths: list[float] | None, function: Any
) -> list[Window]:
    if not centers or not widths:
        return []
    name = str(function).strip().upper() if function else "LINEAR"
    return [Window(c, w, name) for c, w in zip(centers, widths, strict=False)]


def numbers(value: Any) -> list[float] | None:
    """A DS/IS value (single or multi-valued) as floats; None when absent."""
    if value is None or value == "":
        return None
    values = list(value) if isinstance(value, MultiValue | list | tuple) else [value]
    try:
        return [float(v) for v in values]
    except (TypeError, ValueError) as exc:
        raise malformed("a window value is not a number") from exc
