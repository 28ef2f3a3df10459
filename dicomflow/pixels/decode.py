"""Decode Pixel Data with pydicom's pixel backends, then apply the Modality LUT.

pydicom chooses among its decoder plugins (pylibjpeg with libjpeg, openjpeg and
rle; python-gdcm; its own native/RLE code). We add what a dataset user needs on
top: frames always on the first axis, YBR converted to RGB, the Modality LUT
applied in a dtype that holds the result without loss, a memory check before
anything is allocated, and errors that name the problem (never a value).
"""

from __future__ import annotations

import dataclasses
import warnings
from dataclasses import dataclass
from typing import Any, BinaryIO

import numpy as np
import pydicom
from pydicom import uid
from pydicom.dataelem import RawDataElement
from pydicom.dataset import Dataset
from pydicom.multival import MultiValue
from pydicom.pixels import apply_color_lut, apply_modality_lut, get_decoder
from pydicom.pixels.decoders.base import Decoder

from dicomflow.dicom.elements import UNDEFINED_LENGTH
from dicomflow.errors import DicomReadError, ErrorCode
from dicomflow.pixels import imagecodecs_plugin
from dicomflow.pixels.native_messages import quiet_gdcm

DEFAULT_MEMORY_BUDGET = 2 * 1024**3
PIXEL_DATA_TAG = 0x7FE00010


@dataclass(frozen=True)
class DecodedPixels:
    """Frames of one instance, shaped (frames, rows, cols[, samples])."""

    array: np.ndarray
    rescale_applied: bool
    units: str | None
    photometric_interpretation: str
    window_center: list[float] | None
    window_width: list[float] | None
    palette: dict[str, Any] | None = None  # PALETTE COLOR kept as indices: the RGB table


class PixelDecodeError(DicomReadError):
    """Pixel Data cannot be decoded (broken stream, short data, unsupported syntax)."""


def read_dataset(fp: BinaryIO) -> Dataset:
    """The whole instance, Pixel Data included, read by pydicom."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return pydicom.dcmread(fp, force=True)


def header_int(ds: Dataset, keyword: str, default: int) -> int:
    """An integer attribute, or ``default`` when absent; invalid values are decode errors."""
    try:
        value = ds.get(keyword)
        return default if value in (None, "") else int(value)
    except (TypeError, ValueError) as exc:
        raise PixelDecodeError(
            f"{keyword} is not a valid integer", code=ErrorCode.DECODE_FAILED
        ) from exc


def expected_bytes(ds: Dataset) -> int:
    """Worst-case bytes of the decoded frames (float64 after the Modality LUT), from the header."""
    rows, cols = header_int(ds, "Rows", 0), header_int(ds, "Columns", 0)
    frames = header_int(ds, "NumberOfFrames", 1)
    samples = header_int(ds, "SamplesPerPixel", 1)
    return worst_case_bytes(rows, cols, frames, samples)


def worst_case_bytes(rows: int, columns: int, frames: int, samples: int) -> int:
    """Bytes of that many frames as float64, the widest the Modality LUT makes them."""
    return rows * columns * frames * samples * 8


def decode(
    ds: Dataset, *, memory_budget: int = DEFAULT_MEMORY_BUDGET, expand_palette: bool = False
) -> DecodedPixels:
    """Decode ``ds``'s pixels; raise :class:`PixelDecodeError` with a code on failure.

    PALETTE COLOR stays as indices with the RGB table in ``palette``; with
    ``expand_palette`` it becomes RGB. pydicom's warnings quote values, so they
    are silenced here, inside the task.
    """
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        try:
            decoded = _decode(ds, memory_budget)
        except PixelDecodeError:
            raise
        except (
            NotImplementedError,  # pydicom: an unknown VR in an attribute the decode reads
            ValueError,
            TypeError,
            KeyError,
            AttributeError,
            IndexError,
            OverflowError,
        ) as exc:
            raise PixelDecodeError(
                f"the image's attributes cannot be read ({type(exc).__name__})",
                code=ErrorCode.DECODE_FAILED,
            ) from exc
        return with_palette(decoded, ds, expand=expand_palette)


def with_palette(decoded: DecodedPixels, ds: Dataset, *, expand: bool) -> DecodedPixels:
    """PALETTE COLOR pixels with their RGB table (``palette``), or, with ``expand``, as
    RGB; other pixels as they are. Pixels that carry their table already can still be
    expanded (an image decoded once for several steps)."""
    if decoded.photometric_interpretation != "PALETTE COLOR":
        return decoded
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        try:
            if expand:
                rgb = apply_color_lut(decoded.array, ds)
                return dataclasses.replace(
                    decoded, array=rgb, photometric_interpretation="RGB", palette=None
                )
            if decoded.palette is not None:
                return decoded
            return dataclasses.replace(decoded, palette=palette_table(ds))
        except (ValueError, KeyError, AttributeError, IndexError, TypeError) as exc:
            raise PixelDecodeError(
                f"the palette cannot be read ({type(exc).__name__})", code=ErrorCode.DECODE_FAILED
            ) from exc


def palette_table(ds: Dataset) -> dict[str, Any]:
    """The palette as ``{"first_mapped": m, "rgb": [[r, g, b], …]}`` (index m first)."""
    entries, first_mapped, _ = ds.RedPaletteColorLookupTableDescriptor
    entries = entries or 65536  # 0 means 2**16 entries (PS3.3 C.7.6.3.1.5)
    indices = np.arange(first_mapped, first_mapped + entries)
    rgb = apply_color_lut(indices, ds)
    return {"first_mapped": int(first_mapped), "rgb": rgb.astype(int).tolist()}


def _decode(ds: Dataset, memory_budget: int) -> DecodedPixels:
    syntax = transfer_syntax(ds)
    decoder = _decoder(syntax)
    if decoder is None or not decoder.is_available:
        raise PixelDecodeError(
            f"no decoder for transfer syntax {syntax}", code=ErrorCode.UNSUPPORTED_TRANSFER_SYNTAX
        )
    _check_pixel_module(ds)
    if expected_bytes(ds) > memory_budget:
        raise PixelDecodeError(
            "decoded pixels would exceed the memory budget", code=ErrorCode.TOO_LARGE
        )
    try:
        # YBR_FULL/YBR_FULL_422 -> RGB; palette: indices; Bits Allocated 1 (SEG) unpacked
        # by pydicom to one uint8 0/1 a pixel
        array = _pixel_array(ds, decoder)
    except (
        ValueError,
        RuntimeError,
        AttributeError,
        TypeError,
        KeyError,
        IndexError,
        NotImplementedError,
        OSError,
    ) as exc:
        raise PixelDecodeError(
            f"Pixel Data cannot be decoded ({type(exc).__name__})", code=ErrorCode.DECODE_FAILED
        ) from exc
    frames = header_int(ds, "NumberOfFrames", 1)
    samples = header_int(ds, "SamplesPerPixel", 1)
    if frames == 1 and array.ndim == (3 if samples > 1 else 2):
        array = array[np.newaxis]
    if not array.dtype.isnative:
        array = array.astype(array.dtype.newbyteorder("="))  # big endian sources
    physical, applied = _modality_lut(array, ds)
    photometric = str(ds.get("PhotometricInterpretation", ""))
    if photometric.startswith("YBR") and samples == 3:
        photometric = "RGB"
    return DecodedPixels(
        array=physical,
        rescale_applied=applied,
        units=_units(ds) if applied else None,
        photometric_interpretation=photometric,
        window_center=_numbers(ds.get("WindowCenter")),
        window_width=_numbers(ds.get("WindowWidth")),
    )


def transfer_syntax(ds: Dataset) -> str:
    """The transfer syntax of ``ds``'s Pixel Data.

    It is the file meta's. A data set stored without file meta (or without a Transfer
    Syntax UID in it) was read in an encoding its header reader determined, recorded as
    ``ds.original_encoding``; its Pixel Data, when native, is in the native syntax of
    that encoding (PS3.5 A.1-A.3), as pydicom decodes it when given that syntax.
    Encapsulated Pixel Data names no codec without the UID: unsupported.
    """
    meta = getattr(ds, "file_meta", None)
    syntax = meta.get("TransferSyntaxUID") if meta is not None else None
    if syntax is not None and not isinstance(syntax, str):  # bytes under a wrong VR
        raise PixelDecodeError(
            "the Transfer Syntax UID is not text", code=ErrorCode.UNSUPPORTED_TRANSFER_SYNTAX
        )
    if syntax:
        return syntax
    native = _NATIVE_SYNTAXES.get(ds.original_encoding)
    if native is None:
        raise PixelDecodeError(
            "no Transfer Syntax UID in the file meta", code=ErrorCode.UNSUPPORTED_TRANSFER_SYNTAX
        )
    if _is_encapsulated(ds):
        raise PixelDecodeError(
            "no Transfer Syntax UID in the file meta, and the Pixel Data is encapsulated",
            code=ErrorCode.UNSUPPORTED_TRANSFER_SYNTAX,
        )
    return native


_NATIVE_SYNTAXES: dict[tuple[bool | None, bool | None], str] = {
    (True, True): uid.ImplicitVRLittleEndian,
    (False, True): uid.ExplicitVRLittleEndian,
    (False, False): uid.ExplicitVRBigEndian,
}


def _is_encapsulated(ds: Dataset) -> bool:
    element = ds.get_item(PIXEL_DATA_TAG)
    if element is None:
        return False
    if isinstance(element, RawDataElement):
        return element.length == UNDEFINED_LENGTH
    return bool(element.is_undefined_length)


def _decoder(syntax: str) -> Decoder | None:
    """pydicom's decoder for ``syntax``; for one pydicom has none for (JPEG XL, deflated
    image frames), the imagecodecs plugin's own."""
    try:
        return get_decoder(syntax)
    except NotImplementedError:
        return imagecodecs_plugin.own_decoder(syntax)


# What pydicom needs to decode, each Type 1 in the Image Pixel module (PS3.3 C.7.6.3).
_REQUIRED = ("Rows", "Columns", "SamplesPerPixel", "PhotometricInterpretation", "BitsAllocated")
_REQUIRED_FOR_INTEGERS = ("BitsStored", "PixelRepresentation")


def _check_pixel_module(ds: Dataset) -> None:
    """Name the attribute an image lacks, and refuse empty Pixel Data, before decoding."""
    keyword = next((k for k in _PIXEL_KEYWORDS if k in ds), None)
    if keyword is None:
        raise PixelDecodeError("no Pixel Data", code=ErrorCode.UNSUPPORTED_PIXELS)
    required = _REQUIRED + (_REQUIRED_FOR_INTEGERS if keyword == "PixelData" else ())
    for name in required:
        if ds.get(name) in (None, ""):
            raise PixelDecodeError(
                f"the Image Pixel module lacks {name}", code=ErrorCode.UNSUPPORTED_PIXELS
            )
    if not ds.get(keyword):
        raise PixelDecodeError(f"{keyword} is empty", code=ErrorCode.DECODE_FAILED)


_PIXEL_KEYWORDS = ("PixelData", "FloatPixelData", "DoubleFloatPixelData")


def _pixel_array(ds: Dataset, decoder: Decoder) -> np.ndarray:
    """pydicom's decode, with the imagecodecs plugin where it applies.

    Where that plugin is faster and gives the same arrays it is asked first, then
    pydicom's own backends if it fails; elsewhere pydicom's backends come first and
    the plugin, when registered for the syntax, is their last resort (pydicom tries
    its plugins in the order they were added). The decoder is asked directly, as
    ``Dataset.pixel_array`` asks it, minus that property's caching bookkeeping (a
    quarter millisecond a slice).

    Values beyond Bits Stored (a 12-bit JPEG stream under Bits Stored 10) are
    masked to Bits Stored, as pydicom masks them for every syntax but JPEG 2000 and
    JPEG-LS (its ``correct_unused_bits``; PS3.5 8.1.1 leaves the bits above High Bit
    out of the value) and as DCMTK's ``dcmdjpeg`` does. The stream's precision says
    how to decode it (PS3.5 8.2.1), Bits Stored what the value is. The tests compare
    with both.
    """
    quiet_gdcm(decoder)  # GDCM's codecs print to the process's stderr themselves
    registered = imagecodecs_plugin.register(decoder.UID)
    if registered and imagecodecs_plugin.is_preferred(decoder.UID):
        try:
            return decoder.as_array(ds, decoding_plugin=imagecodecs_plugin.LABEL)[0]
        except (ValueError, RuntimeError):
            pass  # fall back to pydicom's default plugins
    return decoder.as_array(ds)[0]


def _modality_lut(array: np.ndarray, ds: Dataset) -> tuple[np.ndarray, bool]:
    """Physical values (HU for CT) in the narrowest dtype that holds them exactly."""
    if "ModalityLUTSequence" in ds:
        return apply_modality_lut(array, ds), True
    slope, intercept = ds.get("RescaleSlope"), ds.get("RescaleIntercept")
    if slope is None or intercept is None:
        per_frame = frame_rescales(ds, array.shape[0])
        if per_frame is None:
            return array, False
        if len(set(per_frame)) > 1:  # frames rescaled differently: float64, frame by frame
            factors = np.asarray(per_frame, dtype=np.float64)
            shape = (-1,) + (1,) * (array.ndim - 1)
            out = array.astype(np.float64) * factors[:, 0].reshape(shape)
            return out + factors[:, 1].reshape(shape), True
        slope, intercept = per_frame[0]
    return rescaled(array, _bits_stored(ds), float(slope), float(intercept)), True


def frame_rescales(ds: Dataset, frames: int) -> list[tuple[float, float]] | None:
    """Enhanced multi-frame: each frame's (slope, intercept) from its Pixel Value
    Transformation functional group (per-frame first, then shared); None if absent."""
    shared_items = ds.get("SharedFunctionalGroupsSequence") or []
    per_frame = ds.get("PerFrameFunctionalGroupsSequence") or []
    shared = _group_rescale(shared_items[0]) if shared_items else None
    values = []
    for index in range(frames):
        own = _group_rescale(per_frame[index]) if index < len(per_frame) else None
        value = own or shared
        if value is None:
            return None
        values.append(value)
    return values


def _group_rescale(item: Dataset) -> tuple[float, float] | None:
    sequence = item.get("PixelValueTransformationSequence")
    if not sequence or "RescaleSlope" not in sequence[0] or "RescaleIntercept" not in sequence[0]:
        return None
    return float(sequence[0].RescaleSlope), float(sequence[0].RescaleIntercept)


def rescaled(array: np.ndarray, bits_stored: int, slope: float, intercept: float) -> np.ndarray:
    """``stored * slope + intercept`` in the narrowest dtype that holds it exactly (the
    stored values' range from ``bits_stored``; 0 when unknown: the dtype's whole range)."""
    if slope == 1.0 and intercept == 0.0:
        return array
    if slope.is_integer() and intercept.is_integer() and np.issubdtype(array.dtype, np.integer):
        stored_min, stored_max = _stored_range(bits_stored, array.dtype)
        ends = [stored_min * slope + intercept, stored_max * slope + intercept]
        low, high = min(ends), max(ends)
        for dtype in (np.int16, np.int32, np.int64):
            if np.iinfo(dtype).min <= low and high <= np.iinfo(dtype).max:
                # pixel_array is ours: reuse it when the dtype already fits
                out = array.astype(dtype, copy=False)
                if slope != 1.0:
                    np.multiply(out, int(slope), out=out)
                np.add(out, int(intercept), out=out)
                return out
    # Fractional slope: float64 keeps every (stored * slope + intercept) exact enough.
    return array.astype(np.float64) * slope + intercept


def _bits_stored(ds: Dataset) -> int:
    try:
        return int(ds.get("BitsStored") or 0)
    except (TypeError, ValueError):
        return 0


def _stored_range(bits: int, dtype: np.dtype) -> tuple[int, int]:
    """The values Bits Stored allows (narrower than the container dtype, often 12 of 16)."""
    info = np.iinfo(dtype)
    if not 0 < bits < info.bits:
        return int(info.min), int(info.max)
    if info.min < 0:
        return -(1 << (bits - 1)), (1 << (bits - 1)) - 1
    return 0, (1 << bits) - 1


def _units(ds: Dataset) -> str | None:
    if ds.get("RescaleType"):
        return str(ds.RescaleType)
    return "HU" if ds.get("Modality") == "CT" else None


def _numbers(value: Any) -> list[float] | None:
    if value is None or value == "":
        return None
    values = list(value) if isinstance(value, MultiValue | list | tuple) else [value]
    try:
        return [float(v) for v in values]
    except (TypeError, ValueError):
        return None
