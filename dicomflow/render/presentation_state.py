"""Grayscale Softcopy Presentation State (PS3.3 A.33.1, PS3.4 N.2) applied to one image.

Only what a presentation state says for *this* image (and frame) counts: items of
the Softcopy VOI LUT, Displayed Area Selection and Graphic Annotation sequences
apply when they reference the image, or when they reference nothing. The
presentation state's Presentation LUT replaces the image's MONOCHROME1 inversion
(PS3.4 N.2.1.2: its output is P-values whatever the image's photometric).
"""

from __future__ import annotations

from collections.abc import Iterable

import numpy as np
from pydicom.dataset import Dataset

from dicomflow.render.errors import RenderError, malformed
from dicomflow.render.lut import Lut, is_little_endian, read_lut
from dicomflow.render.voi import Voi, Window, numbers

ROTATIONS = (0, 90, 180, 270)
MAX_AREA_GROWTH = 8  # a displayed area may pad an image, within reason


def references(presentation_state: Dataset, ds: Dataset, frame: int | None = None) -> bool:
    """Whether ``presentation_state`` applies to ``ds`` (and its 0-based ``frame``).

    The image must sit in a Referenced Series Sequence item of its series, in its
    Referenced Image Sequence; Referenced Frame Number, when present, lists frames.
    """
    sop = str(ds.get("SOPInstanceUID", ""))
    series = str(ds.get("SeriesInstanceUID", ""))
    for item in presentation_state.get("ReferencedSeriesSequence") or []:
        if series and str(item.get("SeriesInstanceUID", "")) not in ("", series):
            continue
        if _lists_image(item.get("ReferencedImageSequence") or [], sop, frame):
            return True
    return False


def applies(item: Dataset, ds: Dataset, frame: int | None) -> bool:
    """A sequence item applies when it references nothing, or references this image."""
    refs = item.get("ReferencedImageSequence")
    if not refs:
        return True
    return _lists_image(refs, str(ds.get("SOPInstanceUID", "")), frame)


def _lists_image(refs: Iterable[Dataset], sop: str, frame: int | None) -> bool:
    for ref in refs:
        if str(ref.get("ReferencedSOPInstanceUID", "")) != sop:
            continue
        frames = ref.get("ReferencedFrameNumber")
        if frame is None or frames in (None, ""):
            return True
        listed = (
            frames if isinstance(frames, Iterable) and not isinstance(frames, str) else [frames]
        )
        try:
            if frame + 1 in {int(f) for f in listed}:
                return True
        except (TypeError, ValueError) as exc:
            raise malformed("a Referenced Frame Number is not an integer") from exc
    return False


def softcopy_voi(presentation_state: Dataset, ds: Dataset, frame: int) -> Voi | None:
    """The VOI of the Softcopy VOI LUT item for this image (its first window or LUT)."""
    for item in presentation_state.get("SoftcopyVOILUTSequence") or []:
        if not applies(item, ds, frame):
            continue
        centers, widths = numbers(item.get("WindowCenter")), numbers(item.get("WindowWidth"))
        if centers and widths:
            function = str(item.get("VOILUTFunction") or "LINEAR").strip().upper()
            return Window(centers[0], widths[0], function)
        luts = item.get("VOILUTSequence")
        if luts:
            return read_lut(luts[0], little_endian=is_little_endian(presentation_state))
    return None


def full_range(ds: Dataset, modality: tuple[float, float] | None) -> Window:
    """No VOI in the presentation state: every value the modality LUT can output, linearly."""
    try:
        bits = int(ds.get("BitsStored") or ds.get("BitsAllocated") or 16)
        signed = int(ds.get("PixelRepresentation") or 0) == 1
    except (TypeError, ValueError) as exc:
        raise malformed("Bits Stored or Pixel Representation is not an integer") from exc
    low, high = (-(1 << (bits - 1)), (1 << (bits - 1)) - 1) if signed else (0, (1 << bits) - 1)
    slope, intercept = modality or (1.0, 0.0)
    ends = sorted((low * slope + intercept, high * slope + intercept))
    return Window((ends[0] + ends[1] + 1) / 2, ends[1] - ends[0] + 1)


def modality_values(
    values: np.ndarray,
    ds: Dataset,
    presentation_state: Dataset,
    image_rescale: tuple[float, float] | None,
) -> tuple[np.ndarray, tuple[float, float] | None]:
    """Values under the presentation state's Modality LUT, which replaces the image's.

    A presentation state without one means identity (PS3.4 N.2.1.1): the stored
    values. ``image_rescale`` is the (slope, intercept) decode applied, undone here
    first. Returns the values and the rescale now in force (None for a LUT)."""
    has_lut = bool(presentation_state.get("ModalityLUTSequence"))
    has_rescale = "RescaleSlope" in presentation_state and "RescaleIntercept" in presentation_state
    if "ModalityLUTSequence" in ds:
        raise RenderError("a presentation state cannot replace an image's Modality LUT table")
    stored = values
    if image_rescale is not None and image_rescale != (1.0, 0.0):
        slope, intercept = image_rescale
        stored = np.rint((values.astype(np.float64) - intercept) / slope)
    if has_lut:
        lut = read_lut(
            presentation_state.ModalityLUTSequence[0],
            little_endian=is_little_endian(presentation_state),
        )
        return lut.apply(stored), None
    if not has_rescale:
        return stored, None
    try:
        slope = float(presentation_state.RescaleSlope)
        intercept = float(presentation_state.RescaleIntercept)
    except (TypeError, ValueError) as exc:
        raise malformed("the presentation state's rescale is not numeric") from exc
    if (slope, intercept) == (1.0, 0.0):
        return stored, None
    return stored.astype(np.float64) * slope + intercept, (slope, intercept)


def presentation_lut(presentation_state: Dataset) -> tuple[Lut | None, bool]:
    """The Presentation LUT (a table, or None) and whether the shape is INVERSE."""
    luts = presentation_state.get("PresentationLUTSequence")
    if luts:
        return read_lut(luts[0], little_endian=is_little_endian(presentation_state)), False
    shape = str(presentation_state.get("PresentationLUTShape") or "IDENTITY").strip().upper()
    return None, shape == "INVERSE"


def through_presentation_lut(normalized: np.ndarray, lut: Lut) -> np.ndarray:
    """VOI output in [0, 1] spread over the table's entries, then its output in [0, 1]."""
    index = normalized * np.float32(len(lut.data) - 1) + np.float32(lut.first_mapped)
    return lut.normalized(index)


def displayed_area(
    presentation_state: Dataset, ds: Dataset, frame: int, shape: tuple[int, int]
) -> tuple[int, int, int, int] | None:
    """(top, left, bottom, right), 0-based and exclusive at the end, of the displayed area.

    The corners are given in the image's own pixel space (1-based column\\row) before
    spatial transformation, so a flipped display may list them swapped."""
    for item in presentation_state.get("DisplayedAreaSelectionSequence") or []:
        if not applies(item, ds, frame):
            continue
        try:
            (c0, r0), (c1, r1) = (
                [int(v) for v in item.DisplayedAreaTopLeftHandCorner],
                [int(v) for v in item.DisplayedAreaBottomRightHandCorner],
            )
        except (AttributeError, TypeError, ValueError) as exc:
            raise malformed("a displayed area needs two column\\row corners") from exc
        top, bottom = min(r0, r1) - 1, max(r0, r1)
        left, right = min(c0, c1) - 1, max(c0, c1)
        limit = MAX_AREA_GROWTH * max(shape)
        if bottom - top > limit or right - left > limit:
            raise RenderError("the displayed area is far larger than the image")
        return top, left, bottom, right
    return None


def crop_or_pad(image: np.ndarray, area: tuple[int, int, int, int]) -> np.ndarray:
    """The ``area`` of ``image``, black where it lies outside the image."""
    top, left, bottom, right = area
    rows, cols = image.shape[:2]
    if (top, left, bottom, right) == (0, 0, rows, cols):
        return image
    out = np.zeros((bottom - top, right - left, *image.shape[2:]), dtype=image.dtype)
    src_top, src_left = max(top, 0), max(left, 0)
    src_bottom, src_right = min(bottom, rows), min(right, cols)
    if src_bottom > src_top and src_right > src_left:
        out[src_top - top : src_bottom - top, src_left - left : src_right - left] = image[
            src_top:src_bottom, src_left:src_right
        ]
    return out


def spatial_transform(image: np.ndarray, presentation_state: Dataset) -> np.ndarray:
    """Image Rotation clockwise, then Image Horizontal Flip ("after any Image Rotation
    has been applied", PS3.3 C.10.6)."""
    flip = str(presentation_state.get("ImageHorizontalFlip") or "N").strip().upper() == "Y"
    try:
        rotation = int(presentation_state.get("ImageRotation") or 0)
    except (TypeError, ValueError) as exc:
        raise malformed("Image Rotation is not an integer") from exc
    if rotation not in ROTATIONS:
        raise malformed("Image Rotation must be 0, 90, 180 or 270")
    if rotation:
        image = np.rot90(image, k=-rotation // 90, axes=(0, 1))
    if flip:
        image = image[:, ::-1]
    return np.ascontiguousarray(image)
