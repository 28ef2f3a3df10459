"""Graphic and text annotations of a presentation state (PS3.3 C.10.5), drawn as masks.

PIXEL coordinates are sub-pixel column\\row positions in the image (0.0\\0.0 is the
top left corner of the first pixel), drawn before the spatial transformation;
DISPLAY coordinates are fractions of the displayed area, drawn after it. Every
layer is drawn at the brightest value: layer colours and order are not kept.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence

import numpy as np
from PIL import Image, ImageDraw, ImageFont
from pydicom.dataset import Dataset

from dicomflow.render.errors import malformed
from dicomflow.render.presentation_state import applies

Point = tuple[float, float]
Placer = Callable[[float, float], Point]
ELLIPSE_STEPS = 72


def annotation_mask(
    presentation_state: Dataset,
    ds: Dataset,
    frame: int,
    shape: tuple[int, int],
    units: str,
    origin: tuple[int, int] = (0, 0),
) -> np.ndarray | None:
    """Mask of every graphic and text object in ``units`` ("PIXEL" or "DISPLAY").

    ``shape`` is (rows, cols) of the canvas; ``origin`` is the (row, col) of the
    canvas's first pixel in image coordinates (a displayed area that crops or pads).
    """
    items = [
        item
        for item in presentation_state.get("GraphicAnnotationSequence") or []
        if applies(item, ds, frame)
    ]
    if not items:
        return None
    canvas = Image.new("1", (shape[1], shape[0]), 0)
    draw = ImageDraw.Draw(canvas)
    drawn = False

    def place(x: float, y: float) -> Point:
        # Pillow draws at the pixel whose index is the truncated coordinate: the
        # pixel that contains the point (pixel i spans [i, i + 1))
        if units == "DISPLAY":
            return x * shape[1], y * shape[0]
        return x - origin[1], y - origin[0]

    for item in items:
        for graphic in item.get("GraphicObjectSequence") or []:
            if _units(graphic, "GraphicAnnotationUnits") == units:
                _draw_graphic(draw, graphic, place)
                drawn = True
        for text in item.get("TextObjectSequence") or []:
            drawn |= _draw_text(draw, text, units, place)
    return np.asarray(canvas, dtype=bool) if drawn else None


def _units(item: Dataset, keyword: str) -> str:
    return str(item.get(keyword) or "PIXEL").strip().upper()


def _points(graphic: Dataset) -> list[Point]:
    data = graphic.get("GraphicData")
    try:
        values = [float(v) for v in data] if data is not None else []
    except (TypeError, ValueError) as exc:
        raise malformed("Graphic Data is not numeric") from exc
    if len(values) % 2 or not all(math.isfinite(v) for v in values):
        raise malformed("Graphic Data must hold column\\row pairs")
    return list(zip(values[0::2], values[1::2], strict=True))


def _draw_graphic(draw: ImageDraw.ImageDraw, graphic: Dataset, place: Placer) -> None:
    kind = str(graphic.get("GraphicType") or "").strip().upper()
    points = [place(x, y) for x, y in _points(graphic)]
    filled = str(graphic.get("GraphicFilled") or "N").strip().upper() == "Y"
    if not points:
        return
    if kind == "POINT":
        x, y = points[0]
        draw.ellipse((x - 1, y - 1, x + 1, y + 1), fill=1)
    elif kind in ("POLYLINE", "INTERPOLATED"):
        _outline(draw, points, filled)
    elif kind == "CIRCLE" and len(points) >= 2:
        (cx, cy), (px, py) = points[0], points[1]
        radius = math.hypot(px - cx, py - cy)
        box = (cx - radius, cy - radius, cx + radius, cy + radius)
        draw.ellipse(box, outline=1, fill=1 if filled else None)
    elif kind == "ELLIPSE" and len(points) >= 4:
        _outline(draw, _ellipse(points[:4]), filled, closed=True)
    else:
        raise malformed("a graphic object has an unknown type or too few points")


def _outline(
    draw: ImageDraw.ImageDraw, points: Sequence[Point], filled: bool, closed: bool = False
) -> None:
    if filled and len(points) >= 3:
        draw.polygon(list(points), fill=1, outline=1)
    elif len(points) == 1:
        draw.point(points[0], fill=1)
    else:
        draw.line([*points, points[0]] if closed else list(points), fill=1, width=1)


def _ellipse(points: Sequence[Point]) -> list[Point]:
    """Outline of the ellipse given by the end points of its major then minor axis."""
    (x0, y0), (x1, y1), (x2, y2), (x3, y3) = points
    cx, cy = (x0 + x1) / 2, (y0 + y1) / 2
    a = math.hypot(x1 - x0, y1 - y0) / 2
    b = math.hypot(x3 - x2, y3 - y2) / 2
    angle = math.atan2(y1 - y0, x1 - x0)
    cos, sin = math.cos(angle), math.sin(angle)
    out = []
    for step in range(ELLIPSE_STEPS):
        t = 2 * math.pi * step / ELLIPSE_STEPS
        ex, ey = a * math.cos(t), b * math.sin(t)
        out.append((cx + ex * cos - ey * sin, cy + ex * sin + ey * cos))
    return out


def _draw_text(draw: ImageDraw.ImageDraw, text: Dataset, units: str, place: Placer) -> bool:
    """Text at its bounding box's top left corner, else at its anchor point."""
    value = str(text.get("UnformattedTextValue") or "")
    if "BoundingBoxTopLeftHandCorner" in text:
        where, unit_keyword = text.BoundingBoxTopLeftHandCorner, "BoundingBoxAnnotationUnits"
    elif "AnchorPoint" in text:
        where, unit_keyword = text.AnchorPoint, "AnchorPointAnnotationUnits"
    else:
        return False
    if not value or _units(text, unit_keyword) != units:
        return False
    try:
        x, y = (float(v) for v in where)
    except (TypeError, ValueError) as exc:
        raise malformed("a text position is not a column\\row pair") from exc
    printable = value.encode("ascii", "replace").decode("ascii")  # the default font is Latin
    draw.multiline_text(place(x, y), printable, fill=1, font=ImageFont.load_default())
    return True
