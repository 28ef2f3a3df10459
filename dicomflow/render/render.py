"""render_instance: decoded pixels to display frames, in the order of PS3.4 Annex N.2.

Grayscale: (Modality LUT, applied by decode) -> VOI LUT -> Presentation LUT
(INVERSE, or MONOCHROME1) -> overlays -> presentation state annotations, displayed
area and spatial transformation -> thumbnail. Colour: palette or RGB scaled to the
output depth, then the same geometric steps, with the ICC profile carried along.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import numpy as np
from pydicom.dataset import Dataset

from dicomflow.errors import ErrorCode
from dicomflow.render import presentation_state as gsps
from dicomflow.render.annotations import annotation_mask
from dicomflow.render.color import check_icc_profile, icc_profile, palette_to_rgb, rgb_to_bits
from dicomflow.render.errors import RenderError
from dicomflow.render.geometry import resize
from dicomflow.render.overlays import burn, overlay_mask
from dicomflow.render.settings import RenderedFrame, RenderSettings
from dicomflow.render.voi import Voi, Window, apply_voi, choose_voi

if TYPE_CHECKING:
    from dicomflow.pixels.decode import DecodedPixels


def render_instance(
    ds: Dataset,
    pixels: DecodedPixels,
    settings: RenderSettings,
    presentation_state: Dataset | None = None,
) -> list[RenderedFrame]:
    """The frames ``settings`` selects, rendered; any fault is a :class:`RenderError`.

    With a ``presentation_state`` (GSPS) its Modality LUT, Softcopy VOI LUT
    (unless ``settings.window`` names another), Presentation LUT, annotations,
    displayed area and spatial transformation apply.
    """
    try:
        return _render(ds, pixels, settings, presentation_state)
    except RenderError:
        raise
    except Exception as exc:  # the contract: nothing but RenderError escapes
        raise RenderError(
            f"the instance cannot be rendered ({type(exc).__name__})", code=ErrorCode.DECODE_FAILED
        ) from exc


def select_frames(choice: str | int, count: int) -> list[int]:
    """Frame indices for ``"all"``, ``"middle"`` or a 0-based index."""
    if choice == "all":
        return list(range(count))
    if choice == "middle":
        return [count // 2]
    if isinstance(choice, int) and not isinstance(choice, bool) and 0 <= choice < count:
        return [choice]
    raise RenderError("the requested frame does not exist in this instance")


def _render(
    ds: Dataset, pixels: DecodedPixels, settings: RenderSettings, ps: Dataset | None
) -> list[RenderedFrame]:
    array = pixels.array
    if array.ndim not in (3, 4) or 0 in array.shape:
        raise RenderError("the image is empty or not shaped (frames, rows, cols[, samples])")
    if array.ndim == 4 and array.shape[3] != 3:
        raise RenderError("colour images must have three samples a pixel")
    photometric = pixels.photometric_interpretation.strip().upper()
    colour = array.ndim == 4 or photometric == "PALETTE COLOR"
    profile = icc_profile(ds) if colour else None
    if profile is not None:
        check_icc_profile(profile)
    out = []
    for index in select_frames(settings.frames, array.shape[0]):
        frame = array[index]
        if photometric == "PALETTE COLOR" and frame.ndim == 2:
            image = palette_to_rgb(frame, ds, pixels.palette, settings.bits)
        elif frame.ndim == 3:
            image = rgb_to_bits(frame, ds, settings.bits)
        else:
            image = _grayscale(frame, ds, pixels, settings, ps, index, photometric)
        if settings.overlays:
            image = burn(image, overlay_mask(ds, index, image.shape[:2]))
        if ps is not None:
            image = _presentation_geometry(image, ds, ps, index)
        out.append(RenderedFrame(index, resize(image, settings.size), profile))
    return out


def _grayscale(
    values: np.ndarray,
    ds: Dataset,
    pixels: DecodedPixels,
    settings: RenderSettings,
    ps: Dataset | None,
    index: int,
    photometric: str,
) -> np.ndarray:
    plut = None
    voi: Voi | None
    if ps is None:
        voi = choose_voi(
            ds,
            index,
            settings.window,
            settings.percentile,
            pixels.window_center,
            pixels.window_width,
        )
        shape = str(ds.get("PresentationLUTShape") or "").strip().upper()
        # MONOCHROME1 + INVERSE (DX, MG) describe one inversion, not two
        inverse = photometric == "MONOCHROME1" or shape == "INVERSE"
    else:
        rescale = image_rescale(ds, index) if pixels.rescale_applied else None
        values, rescale = gsps.modality_values(values, ds, ps, rescale)
        voi = (
            gsps.softcopy_voi(ps, ds, index)
            if settings.window == "auto"
            else choose_voi(ds, index, settings.window, settings.percentile)
        )
        if voi is None:
            voi = gsps.full_range(ds, rescale)
        plut, inverse = gsps.presentation_lut(ps)
    line = voi.line() if isinstance(voi, Window) and plut is None else None
    if line is not None:  # one pass for a straight window (a 512² slice: 0.25 ms, not 0.7)
        return quantize_line(values, *line, inverse, settings.bits)
    normalized = apply_voi(values, voi)
    if plut is not None:
        normalized = gsps.through_presentation_lut(normalized, plut)
    if inverse:
        normalized = 1.0 - normalized
    return quantize(normalized, settings.bits)


def quantize(normalized: np.ndarray, bits: int) -> np.ndarray:
    """[0, 1] to 0..2**bits - 1, rounded to nearest."""
    top = np.float32((1 << bits) - 1)
    scaled = (
        normalized * top if normalized.dtype == np.float32 else normalized.astype(np.float32) * top
    )
    scaled += np.float32(0.5)
    return scaled.astype(np.uint8 if bits == 8 else np.uint16)


def quantize_line(
    values: np.ndarray, pivot: float, slope: float, inverse: bool, bits: int
) -> np.ndarray:
    """``quantize(clip((values - pivot) * slope + 0.5, 0, 1))`` (inverted on request) in
    one pass: the window's line and the quantizer's scaling folded together."""
    top = (1 << bits) - 1
    dtype = np.float64 if values.dtype == np.float64 else np.float32
    out = np.subtract(values, dtype(pivot), dtype=dtype)
    out *= dtype(-slope * top if inverse else slope * top)  # 1 - v mirrors about the pivot
    out += dtype(0.5 * top + 0.5)
    np.clip(out, 0.5, top + 0.5, out=out)
    return out.astype(np.uint8 if bits == 8 else np.uint16)


def image_rescale(ds: Dataset, index: int) -> tuple[float, float] | None:
    """The (slope, intercept) the image applies to ``index``: top level, else functional groups."""
    if "RescaleSlope" in ds and "RescaleIntercept" in ds:
        return float(ds.RescaleSlope), float(ds.RescaleIntercept)
    per_frame = ds.get("PerFrameFunctionalGroupsSequence") or []
    shared = ds.get("SharedFunctionalGroupsSequence") or []
    for item in ([per_frame[index]] if index < len(per_frame) else []) + list(shared[:1]):
        sequence = item.get("PixelValueTransformationSequence")
        if sequence and "RescaleSlope" in sequence[0] and "RescaleIntercept" in sequence[0]:
            return float(sequence[0].RescaleSlope), float(sequence[0].RescaleIntercept)
    return None


def _presentation_geometry(image: np.ndarray, ds: Dataset, ps: Dataset, index: int) -> np.ndarray:
    """PIXEL annotations, displayed area, spatial transformation, then DISPLAY annotations."""
    area = gsps.displayed_area(ps, ds, index, image.shape[:2])
    if area is not None:
        image = gsps.crop_or_pad(image, area)
    origin = (area[0], area[1]) if area is not None else (0, 0)
    image = burn(image, annotation_mask(ps, ds, index, image.shape[:2], "PIXEL", origin))
    image = gsps.spatial_transform(image, ps)
    return burn(image, annotation_mask(ps, ds, index, image.shape[:2], "DISPLAY"))
