"""Plain monochrome images decoded straight from the header reader's element tree.

Most of a cohort's slices are grayscale (CT, MR, PET) stored uncompressed little
endian, RLE Lossless or JPEG 2000. Decoding one through pydicom means building its ``Dataset``
and asking pydicom's decoder, which reads a dozen attributes through the dataset's
lazy conversion: on a 512² CT slice that costs three times an uncompressed decode
(0.8 ms against 0.2). The header the scan already parsed holds those attributes, so
here they are read from it, and the Pixel Data value's bytes become the array as
pydicom makes it: native frames as they are stored, RLE frames through imagecodecs'
DICOM RLE decoder (which :mod:`.imagecodecs_plugin` gives pydicom for RLE too), the
pixel dtype from Bits Allocated and Pixel Representation, and the bits above Bits
Stored masked or sign-extended (pydicom's ``correct_unused_bits``). JPEG 2000 and
HTJ2K frames go through imagecodecs' OpenJPEG on one thread (as the plugin gives them
to pydicom), but only raw codestreams of one component whose precision and signedness
are the header's: the rest, which pydicom reinterprets, are left to it (about 1 ms of
pydicom's machinery saved on a 15 ms 512² slice). The Modality LUT is then applied as
:func:`dicomflow.pixels.decode.decode` applies it.

Anything outside that plain case (colour, palettes, a Modality LUT Sequence,
functional groups, Bits Allocated 1, big endian, other codecs, a value this code
cannot read, or data that does not decode) gives ``None``, and the caller decodes
with pydicom, which also reports what is wrong with a broken image. The tests compare
the two on every such image of the corpus, with pydicom's own RLE decoder and with
pylibjpeg's OpenJPEG for JPEG 2000.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, BinaryIO

import numpy as np
from pydicom import uid
from pydicom.dataset import Dataset
from pydicom.encaps import generate_frames

from dicomflow.pixels.decode import (
    DEFAULT_MEMORY_BUDGET,
    PIXEL_DATA_TAG,
    DecodedPixels,
    decode,
    rescaled,
    worst_case_bytes,
)
from dicomflow.records import Element, Header

_NATIVE_LITTLE_ENDIAN = frozenset({uid.ExplicitVRLittleEndian, uid.ImplicitVRLittleEndian})
_ENCAPSULATED: dict[str, str] = {
    uid.RLELossless: "rle",
    uid.JPEG2000Lossless: "j2k",
    uid.JPEG2000: "j2k",
    uid.HTJ2KLossless: "j2k",
    uid.HTJ2KLosslessRPCL: "j2k",
    uid.HTJ2K: "j2k",
}
_SEQUENCE_DELIMITER_BYTES = 8
_MONOCHROME = frozenset({"MONOCHROME1", "MONOCHROME2"})

MODALITY = 0x00080060
SAMPLES_PER_PIXEL = 0x00280002
PHOTOMETRIC_INTERPRETATION = 0x00280004
NUMBER_OF_FRAMES = 0x00280008
ROWS = 0x00280010
COLUMNS = 0x00280011
BITS_ALLOCATED = 0x00280100
BITS_STORED = 0x00280101
PIXEL_REPRESENTATION = 0x00280103
WINDOW_CENTER = 0x00281050
WINDOW_WIDTH = 0x00281051
RESCALE_INTERCEPT = 0x00281052
RESCALE_SLOPE = 0x00281053
RESCALE_TYPE = 0x00281054
MODALITY_LUT_SEQUENCE = 0x00283000
SHARED_FUNCTIONAL_GROUPS = 0x52009229
PER_FRAME_FUNCTIONAL_GROUPS = 0x52009230

_WANTED = frozenset(
    {
        MODALITY,
        SAMPLES_PER_PIXEL,
        PHOTOMETRIC_INTERPRETATION,
        NUMBER_OF_FRAMES,
        ROWS,
        COLUMNS,
        BITS_ALLOCATED,
        BITS_STORED,
        PIXEL_REPRESENTATION,
        WINDOW_CENTER,
        WINDOW_WIDTH,
        RESCALE_INTERCEPT,
        RESCALE_SLOPE,
        RESCALE_TYPE,
    }
)
_ELSEWHERE = frozenset(  # their presence asks for pydicom's Modality LUT handling
    {MODALITY_LUT_SEQUENCE, SHARED_FUNCTIONAL_GROUPS, PER_FRAME_FUNCTIONAL_GROUPS}
)


class _NotPlain(Exception):
    """The image is not one this module decodes: pydicom's decoder takes it."""


@dataclass(frozen=True)
class PlainImage:
    """What decoding a plain monochrome image needs, read from its header."""

    offset: int  # of the Pixel Data value in the file
    size: int  # bytes of the value read: the frames (native), or the items (RLE, J2K)
    codec: str  # "native", "rle" or "j2k"
    rows: int
    columns: int
    frames: int
    dtype: np.dtype
    unused_bits: int  # Bits Allocated less Bits Stored
    bits_stored: int
    rescale: tuple[float, float] | None
    units: str | None
    photometric_interpretation: str
    window_center: list[float] | None
    window_width: list[float] | None

    @property
    def nbytes(self) -> int:
        """Bytes the decoded frames take (native: of the value, which may hold a padding
        byte more)."""
        return self.rows * self.columns * self.frames * self.dtype.itemsize

    @classmethod
    def of(
        cls, header: Header | None, memory_budget: int = DEFAULT_MEMORY_BUDGET
    ) -> PlainImage | None:
        """The image's facts, or None when it is not plain monochrome, or its decoded
        frames would exceed ``memory_budget`` (pydicom's path refuses it)."""
        if (
            header is None
            or not header.is_little_endian
            or header.deflated
            or header.pixel_data_tag != PIXEL_DATA_TAG
            or header.pixel_data_offset is None
        ):
            return None
        offset, length = header.pixel_data_offset, header.pixel_data_length
        syntax = header.transfer_syntax_uid
        if syntax in _NATIVE_LITTLE_ENDIAN and length is not None:
            codec, size = "native", length
        elif syntax in _ENCAPSULATED and length is None and header.pixel_data_end is not None:
            codec = _ENCAPSULATED[syntax]
            size = header.pixel_data_end - _SEQUENCE_DELIMITER_BYTES - offset
        else:
            return None
        try:
            image = _facts(header.elements, offset, size, codec)
        except (_NotPlain, ValueError, UnicodeDecodeError):
            return None
        if codec == "native" and image.nbytes > size:
            return None  # too short: pydicom's decoder names the problem
        worst_case = worst_case_bytes(image.rows, image.columns, image.frames, 1)
        return image if worst_case <= memory_budget else None

    def decode(self, value: bytes | bytearray | memoryview) -> DecodedPixels | None:
        """The frames in ``value`` (the Pixel Data value's bytes), shaped (frames, rows,
        cols), with the Modality LUT applied; None if they cannot be had from it."""
        if self.codec == "native":
            array = self._native_frames(value)
        else:
            array = self._encapsulated_frames(value)
        if array is None:
            return None
        if self.unused_bits:  # pydicom's correct_unused_bits: mask, or sign-extend
            array = np.left_shift(array, self.unused_bits)
            np.right_shift(array, self.unused_bits, out=array)
        if not array.flags.writeable:
            array = array.copy()  # a view of the value: the frames are the caller's
        applied = self.rescale is not None
        if self.rescale is not None:
            slope, intercept = self.rescale
            array = rescaled(array, self.bits_stored, slope, intercept)
        return DecodedPixels(
            array=array,
            rescale_applied=applied,
            units=self.units if applied else None,
            photometric_interpretation=self.photometric_interpretation,
            window_center=self.window_center,
            window_width=self.window_width,
        )

    def read(self, fp: BinaryIO) -> DecodedPixels | None:
        """The frames, read from the file the header came from."""
        fp.seek(self.offset)
        return self.decode(fp.read(self.size))

    def _native_frames(self, value: bytes | bytearray | memoryview) -> np.ndarray | None:
        if len(value) < self.nbytes:
            return None
        flat = np.frombuffer(value, dtype=self.dtype, count=self.nbytes // self.dtype.itemsize)
        return flat.reshape(self.frames, self.rows, self.columns)

    def _encapsulated_frames(self, value: bytes | bytearray | memoryview) -> np.ndarray | None:
        """Each frame of the encapsulated value through this codec's frame decoder; None
        when a frame does not decode to one of the image's, or the count differs."""
        decode_frame = self._rle_frame if self.codec == "rle" else self._j2k_frame
        out = np.empty((self.frames, self.rows, self.columns), dtype=self.dtype)
        index = -1
        try:
            for index, frame in enumerate(
                generate_frames(bytes(value), number_of_frames=self.frames)
            ):
                if index == self.frames:
                    return None  # more frames than the header says
                decoded = decode_frame(frame)
                if decoded is None:
                    return None
                out[index] = decoded
        except (ValueError, RuntimeError, TypeError, IndexError):  # imagecodecs': RuntimeError
            return None  # a broken stream: pydicom's decoder says what is wrong
        return out if index == self.frames - 1 else None

    def _rle_frame(self, frame: bytes) -> np.ndarray | None:
        """One frame through imagecodecs' DICOM RLE decoder."""
        import imagecodecs

        decoded = np.frombuffer(imagecodecs.dicomrle_decode(frame, dtype=self.dtype), self.dtype)
        if decoded.size != self.rows * self.columns:
            return None
        return decoded.reshape(self.rows, self.columns)

    def _j2k_frame(self, frame: bytes) -> np.ndarray | None:
        """One frame through imagecodecs' OpenJPEG on one thread, as
        :mod:`.imagecodecs_plugin` decodes it for pydicom; only a codestream whose one
        component has the image's Bits Stored and Pixel Representation (what pydicom
        would otherwise reinterpret is left to it)."""
        import imagecodecs

        if _j2k_component(frame) != (self.dtype.kind == "i", self.bits_stored):
            return None
        decoded = imagecodecs.jpeg2k_decode(frame, numthreads=1)
        if decoded.shape != (self.rows, self.columns) or decoded.dtype != self.dtype:
            return None
        return decoded


def _j2k_component(frame: bytes) -> tuple[bool, int] | None:
    """(signed, precision) of a raw JPEG 2000 codestream's only component, from its SIZ
    marker segment (ISO 15444-1 A.5.1); None for anything else (a JP2 file, colour)."""
    if len(frame) < 43 or frame[:4] != b"\xff\x4f\xff\x51":
        return None
    if int.from_bytes(frame[40:42], "big") != 1:  # Csiz: one component
        return None
    ssiz = frame[42]
    return bool(ssiz & 0x80), (ssiz & 0x7F) + 1


def decode_with_header(
    ds: Dataset,
    header: Header | None,
    *,
    memory_budget: int = DEFAULT_MEMORY_BUDGET,
    expand_palette: bool = False,
) -> DecodedPixels:
    """``ds``'s pixels as :func:`dicomflow.pixels.decode.decode` gives them, decoded
    from its Pixel Data value by this module when its ``header`` says the image is
    plain monochrome."""
    image = PlainImage.of(header, memory_budget)
    element = ds.get_item(PIXEL_DATA_TAG) if image is not None else None
    value = getattr(element, "value", None)
    if image is not None and isinstance(value, bytes | bytearray | memoryview):
        pixels = image.decode(value)
        if pixels is not None:
            return pixels
    return decode(ds, memory_budget=memory_budget, expand_palette=expand_palette)


def _facts(elements: tuple[Element, ...], offset: int, size: int, codec: str) -> PlainImage:
    values: dict[int, Any] = {}
    for element in elements:
        tag = element.tag
        if tag in _ELSEWHERE:
            raise _NotPlain
        if tag > PIXEL_DATA_TAG:
            break
        if tag in _WANTED:
            if element.converted or not isinstance(element.value, bytes):
                raise _NotPlain
            values[tag] = element.value
    photometric = _text(values.get(PHOTOMETRIC_INTERPRETATION))
    if _integer(values, SAMPLES_PER_PIXEL, 2) != 1 or photometric not in _MONOCHROME:
        raise _NotPlain
    rows, columns = _integer(values, ROWS, 2), _integer(values, COLUMNS, 2)
    bits_allocated = _integer(values, BITS_ALLOCATED, 2)
    bits_stored = _integer(values, BITS_STORED, 2)
    representation = _integer(values, PIXEL_REPRESENTATION, 2)
    frames = _frames(values.get(NUMBER_OF_FRAMES))
    if (
        not rows
        or not columns
        or bits_allocated not in (8, 16, 32)
        or not 0 < bits_stored <= bits_allocated
        or representation not in (0, 1)
    ):
        raise _NotPlain
    slope, intercept = _decimal(values.get(RESCALE_SLOPE)), _decimal(values.get(RESCALE_INTERCEPT))
    kind = "i" if representation else "u"
    rescale_type = _text(values.get(RESCALE_TYPE))
    return PlainImage(
        offset=offset,
        size=size,
        codec=codec,
        rows=rows,
        columns=columns,
        frames=frames,
        dtype=np.dtype(f"<{kind}{bits_allocated // 8}"),
        unused_bits=bits_allocated - bits_stored,
        bits_stored=bits_stored,
        rescale=None if slope is None or intercept is None else (slope, intercept),
        units=rescale_type or ("HU" if _text(values.get(MODALITY)) == "CT" else None),
        photometric_interpretation=photometric,
        window_center=_decimals(values.get(WINDOW_CENTER)),
        window_width=_decimals(values.get(WINDOW_WIDTH)),
    )


def _text(value: bytes | None) -> str:
    return value.decode("ascii").strip(" \x00") if value else ""


def _integer(values: dict[int, bytes], tag: int, size: int) -> int:
    """A US value (Type 1 in the Image Pixel module: absent or empty is not plain)."""
    value = values.get(tag)
    if value is None or len(value) != size:
        raise _NotPlain
    return int.from_bytes(value, "little")


def _frames(value: bytes | None) -> int:
    """Number of Frames (IS): 1 when absent; anything but a positive integer is not plain."""
    if value is None:
        return 1
    frames = int(_text(value))
    if frames < 1:
        raise _NotPlain
    return frames


def _decimal(value: bytes | None) -> float | None:
    """One DS value; None when absent. Empty or several values are not plain."""
    if value is None:
        return None
    numbers = _decimals(value)
    if numbers is None or len(numbers) != 1:
        raise _NotPlain
    return numbers[0]


def _decimals(value: bytes | None) -> list[float] | None:
    """A DS value's numbers, None when absent or empty (as decode reports a window)."""
    text = _text(value)
    if not text:
        return None
    return [float(part) for part in text.split("\\")]
