"""What to render (:class:`RenderSettings`) and what comes out (:class:`RenderedFrame`)."""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from dicomflow.render.errors import RenderError

WindowChoice = str | int | tuple[float, float]
FrameChoice = str | int


@dataclass(frozen=True)
class RenderSettings:
    """How to turn decoded pixels into display images.

    ``window``: ``"auto"`` (the first window in the file, else its VOI LUT Sequence,
    else a min-max or percentile window), an ``int`` N for the N-th (0-based) window
    of several, or an explicit ``(center, width)`` pair (VOI LUT Function LINEAR).
    ``frames``: ``"all"``, ``"middle"`` or a 0-based frame index. ``bits``: 8 or 16.
    ``size``: longest side of a thumbnail (never upscaled); None keeps native size.
    ``overlays``: burn 60xx overlays in. ``percentile``: clip this percentage at each
    end instead of min-max when the file has no window. Min-max and percentiles
    are taken frame by frame.
    """

    window: WindowChoice = "auto"
    frames: FrameChoice = "all"
    bits: int = 8
    size: int | None = None
    overlays: bool = False
    percentile: float | None = None

    def __post_init__(self) -> None:
        if self.bits not in (8, 16):
            raise RenderError("bits must be 8 or 16")
        if self.size is not None and (isinstance(self.size, bool) or self.size < 1):
            raise RenderError("size must be a positive integer or None")
        if self.percentile is not None and not 0 <= self.percentile < 50:
            raise RenderError("percentile must be in [0, 50)")
        if isinstance(self.frames, str) and self.frames not in ("all", "middle"):
            raise RenderError("frames must be 'all', 'middle' or a frame index")
        if isinstance(self.frames, int) and (isinstance(self.frames, bool) or self.frames < 0):
            raise RenderError("a frame index is 0-based and not negative")
        if isinstance(self.window, str) and self.window != "auto":
            raise RenderError("window must be 'auto', an index or a (center, width) pair")
        if isinstance(self.window, tuple) and len(self.window) != 2:
            raise RenderError("an explicit window is a (center, width) pair")


@dataclass(frozen=True, eq=False)
class RenderedFrame:
    """One display-ready frame: uint8 or uint16, 2-D (grayscale) or (H, W, 3) RGB."""

    frame: int
    image: np.ndarray = field(repr=False)
    icc_profile: bytes | None = field(default=None, repr=False)
