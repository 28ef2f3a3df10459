"""A pydicom decoder plugin backed by imagecodecs: RLE Lossless, single-sample JPEG,
JPEG 2000 / HTJ2K, JPEG XL, and Deflated Image Frame Compression.

imagecodecs' DICOM RLE and JPEG (libjpeg-turbo, lossless JPEG) decoders are
several times faster than pydicom's default backends. JPEG is taken only for
single-sample (grayscale) frames: colour JPEG leaves the YCbCr question to
pydicom's own backends, which are then used instead. JPEG 2000 and HTJ2K go
through the same OpenJPEG library as pylibjpeg-openjpeg, but on one thread:
pylibjpeg-openjpeg spends about 1.5 cores per frame (19 ms of CPU against 13.5
here, measured on a 512² CT slice), which only oversubscribes the cores once
Dask already runs one decode per core. It follows pydicom's
plugin contract (``DECODER_DEPENDENCIES``, ``is_available``, ``_decode_frame``)
and is registered next to pydicom's own plugins;
:func:`dicomflow.pixels.decode.decode` asks for it by name and falls back to
pydicom's defaults if it fails. A test checks that it yields arrays identical
to pydicom's default decode on every RLE and grayscale JPEG file of the corpus.

Four more cases, where pydicom's own backends cannot decode at all:

- **JPEG Extended** (12-bit lossy) is a fallback only, tried after pydicom's
  backends (:data:`FALLBACK_SYNTAXES`): pylibjpeg-libjpeg rejects streams whose
  scan header gives spectral selection values other than 0-63 for a sequential
  process, which libjpeg-turbo (like DCMTK) decodes with a warning.
- **RLE Lossless with Bits Allocated 1**: each frame's packed bits, padded to a
  whole byte, are the one segment; they are unpacked to one 0/1 byte a pixel as
  pydicom unpacks native bit-packed data.
- **JPEG XL** (Lossless, JPEG Recompression, and lossy) and **Deflated Image
  Frame Compression** (each frame's native bytes deflated, RFC 1951): pydicom 3.0
  knows neither the transfer syntaxes nor a decoder, so :func:`own_decoder` gives
  a pydicom ``Decoder`` of our own, with this plugin as its only backend.
"""

from __future__ import annotations

import zlib

import numpy as np
from pydicom import uid
from pydicom.pixels.decoders.base import Decoder, DecodeRunner

try:
    import imagecodecs
except ImportError:  # an optional extra: [codecs]
    imagecodecs = None  # type: ignore[assignment]

LABEL = "imagecodecs"
# Not JPEG Extended: its 12-bit lossy frames come out of libjpeg-turbo a little
# differently from pydicom's libjpeg (lossy IDCTs differ), so pydicom's stays.
JPEG_SYNTAXES = (uid.JPEGBaseline8Bit, uid.JPEGLossless, uid.JPEGLosslessSV1)
J2K_SYNTAXES = tuple(uid.JPEG2000TransferSyntaxes)  # JPEG 2000 and HTJ2K, as pydicom lists them
# Taken only when pydicom's own backends have failed (see the module docstring).
FALLBACK_SYNTAXES = (uid.JPEGExtended12Bit,)


class _EncapsulatedSyntax(uid.UID):
    """A transfer syntax missing from pydicom's UID dictionary, described as every
    encapsulated syntax is: explicit VR little endian, compressed."""

    @property
    def is_transfer_syntax(self) -> bool:
        return True

    @property
    def is_compressed(self) -> bool:
        return True

    @property
    def is_encapsulated(self) -> bool:
        return True

    @property
    def is_little_endian(self) -> bool:
        return True

    @property
    def is_implicit_VR(self) -> bool:  # noqa: N802 - pydicom's name
        return False

    @property
    def is_deflated(self) -> bool:
        return False


JPEGXLLossless = _EncapsulatedSyntax("1.2.840.10008.1.2.4.110")
JPEGXLJPEGRecompression = _EncapsulatedSyntax("1.2.840.10008.1.2.4.111")
JPEGXL = _EncapsulatedSyntax("1.2.840.10008.1.2.4.112")
JPEGXL_SYNTAXES = (JPEGXLLossless, JPEGXLJPEGRecompression, JPEGXL)
DeflatedImageFrameCompression = _EncapsulatedSyntax("1.2.840.10008.1.2.8.1")
# Transfer syntaxes pydicom has no decoder for: this plugin is their only one.
OWN_SYNTAXES = (*JPEGXL_SYNTAXES, DeflatedImageFrameCompression)

DECODER_DEPENDENCIES = {
    syntax: ("numpy", "imagecodecs>=2024.6.1")
    for syntax in (
        uid.RLELossless,
        *JPEG_SYNTAXES,
        *FALLBACK_SYNTAXES,
        *J2K_SYNTAXES,
        *OWN_SYNTAXES,
    )
}
_CODECS: dict[str, tuple[str, ...]] = {str(uid.RLELossless): ("DICOMRLE",)}
_CODECS.update({str(s): ("JPEG8", "LJPEG") for s in JPEG_SYNTAXES})
_CODECS.update({str(s): ("JPEG8",) for s in FALLBACK_SYNTAXES})
_CODECS.update({str(s): ("JPEG2K",) for s in J2K_SYNTAXES})
_CODECS.update({str(s): ("JPEGXL",) for s in JPEGXL_SYNTAXES})
_CODECS[str(DeflatedImageFrameCompression)] = ()  # the standard library's zlib
_OWN_DECODERS: dict[str, Decoder] = {}


def is_available(transfer_syntax: str) -> bool:
    """True when imagecodecs is installed with the codecs ``transfer_syntax`` needs."""
    if imagecodecs is None or transfer_syntax not in DECODER_DEPENDENCIES:
        return False
    return all(
        getattr(imagecodecs, name, None) is not None and getattr(imagecodecs, name).available
        for name in _CODECS[transfer_syntax]
    )


def is_preferred(transfer_syntax: str) -> bool:
    """True where this plugin is asked before pydicom's own backends (it is faster and
    gives identical arrays); False where it is only their fallback or not a plugin."""
    return transfer_syntax in (uid.RLELossless, *JPEG_SYNTAXES, *J2K_SYNTAXES)


def _decode_frame(src: bytes, runner: DecodeRunner) -> bytes:
    """One frame as little-endian samples (RLE: one plane per sample, planar configuration 1)."""
    if imagecodecs is None:
        raise RuntimeError("imagecodecs is not installed")
    if runner.transfer_syntax in J2K_SYNTAXES:
        return _decode_j2k(src, runner)
    if runner.transfer_syntax in JPEGXL_SYNTAXES:
        return _decode_jpegxl(src, runner)
    if runner.transfer_syntax == DeflatedImageFrameCompression:
        return _decode_deflated(src, runner)
    if runner.transfer_syntax in (*JPEG_SYNTAXES, *FALLBACK_SYNTAXES):
        if runner.samples_per_pixel != 1:
            raise ValueError("colour JPEG is left to pydicom's own backends")
        return _as_container(imagecodecs.jpeg_decode(src), runner)
    if runner.bits_allocated == 1:
        return _decode_rle_bits(src, runner)
    kind = "i" if runner.pixel_representation else "u"
    dtype = np.dtype(f"<{kind}{runner.bits_allocated // 8}")
    decoded = imagecodecs.dicomrle_decode(src, dtype=dtype)
    runner.set_option("planar_configuration", 1)
    return bytes(decoded)


def _decode_rle_bits(src: bytes, runner: DecodeRunner) -> bytes:
    """One RLE frame of Bits Allocated 1: the packed bits (least significant bit
    first, as PS3.5 8.1.1 packs them) unpacked to one 0/1 byte a pixel."""
    if runner.samples_per_pixel != 1:
        raise ValueError("Bits Allocated 1 needs one sample per pixel")
    packed = np.frombuffer(imagecodecs.dicomrle_decode(src, dtype=np.dtype("u1")), np.uint8)
    return _unpacked(packed, runner.rows * runner.columns)


def _decode_deflated(src: bytes, runner: DecodeRunner) -> bytes:
    """One deflated frame: the frame exactly as native Pixel Data holds it (little
    endian, planar configuration as the header says; Bits Allocated 1 packed, each
    frame starting on a byte, unpacked here). Inflated no further than the frame's
    size, so a deflate bomb costs nothing (imagecodecs has no raw deflate: zlib)."""
    pixels = runner.rows * runner.columns * runner.samples_per_pixel
    size = -(-pixels // 8) if runner.bits_allocated == 1 else pixels * runner.bits_allocated // 8
    inflater = zlib.decompressobj(-zlib.MAX_WBITS)
    native = inflater.decompress(src, size)
    if inflater.unconsumed_tail:
        raise ValueError("the frame inflates past its size")
    if runner.bits_allocated != 1:
        return native
    if runner.samples_per_pixel != 1:
        raise ValueError("Bits Allocated 1 needs one sample per pixel")
    return _unpacked(np.frombuffer(native, np.uint8), runner.rows * runner.columns)


def _unpacked(packed: np.ndarray, pixels: int) -> bytes:
    if packed.size * 8 < pixels:
        raise ValueError("the frame holds fewer bits than it has pixels")
    return np.unpackbits(packed, bitorder="little")[:pixels].tobytes()


def _decode_jpegxl(src: bytes, runner: DecodeRunner) -> bytes:
    """One JPEG XL frame. libjxl gives colour as RGB whatever the Photometric
    Interpretation says (a recompressed JPEG's YCbCr included), so it is described
    to pydicom as RGB; samples come interleaved. JPEG XL has no signed samples, and
    how a signed image would map onto them is not settled here: refused."""
    if runner.pixel_representation:
        raise ValueError("signed samples in JPEG XL are not supported")
    decoded = imagecodecs.jpegxl_decode(src, numthreads=1)
    if decoded.ndim == 3 and decoded.shape[-1] != runner.samples_per_pixel:
        raise ValueError("the codestream's channels differ from Samples per Pixel")
    if runner.samples_per_pixel == 3:
        runner.set_option("photometric_interpretation", "RGB")
        runner.set_option("planar_configuration", 0)
    return _as_container(decoded, runner)


def _as_container(decoded: np.ndarray, runner: DecodeRunner) -> bytes:
    """The decoded samples, with pydicom told their size when it differs from Bits
    Allocated (an 8-bit stream in a 16-bit container): pydicom widens them itself."""
    if decoded.dtype.kind not in "ui":
        raise ValueError("the codestream's samples are not integers")
    if decoded.dtype.itemsize * 8 != runner.bits_allocated:
        runner.set_option("bits_allocated", decoded.dtype.itemsize * 8)
    return bytes(decoded.astype(decoded.dtype.newbyteorder("<"), copy=False))


def _decode_j2k(src: bytes, runner: DecodeRunner) -> bytes:
    """One JPEG 2000 frame, described to pydicom exactly as its pylibjpeg-openjpeg plugin
    describes it: samples interleaved, YBR_ICT/YBR_RCT already RGB, and the container
    sized by the codestream's precision (pydicom then corrects the sign, as for OpenJPEG)."""
    decoded = imagecodecs.jpeg2k_decode(src, numthreads=1)
    if runner.photometric_interpretation in ("YBR_ICT", "YBR_RCT"):
        runner.set_option("photometric_interpretation", "RGB")
    precision = runner.get_option("j2k_precision", runner.bits_stored)
    for bits in (8, 16, 32):
        if 0 < precision <= bits:
            runner.set_option("bits_allocated", bits)
            break
    if decoded.dtype.itemsize * 8 != runner.bits_allocated:
        raise ValueError("the codestream's sample size differs from its precision")
    runner.set_option("planar_configuration", 0)
    return bytes(decoded.astype(decoded.dtype.newbyteorder("<"), copy=False))


def register(transfer_syntax: str = uid.RLELossless) -> bool:
    """Add the plugin to pydicom's decoder for ``transfer_syntax`` once per process;
    True if it is usable. pydicom tries its plugins in the order they were added, so
    this one comes after its own unless asked for by name."""
    from pydicom.pixels.decoders.base import get_decoder

    if transfer_syntax not in DECODER_DEPENDENCIES or transfer_syntax in OWN_SYNTAXES:
        return False
    decoder = get_decoder(transfer_syntax)
    if LABEL not in decoder.available_plugins:
        if not is_available(transfer_syntax):
            return False
        try:
            decoder.add_plugin(LABEL, (__name__, "_decode_frame"))
        except ValueError:  # already registered (unavailable at the time)
            return False
    return LABEL in decoder.available_plugins


def own_decoder(transfer_syntax: str) -> Decoder | None:
    """A decoder, with this plugin as its only backend, for a transfer syntax pydicom
    has none for (:data:`OWN_SYNTAXES`); None for any other syntax, or without the codec."""
    syntax = next((s for s in OWN_SYNTAXES if s == transfer_syntax), None)
    if syntax is None or not is_available(syntax):
        return None
    decoder = _OWN_DECODERS.get(syntax)
    if decoder is None:
        decoder = Decoder(syntax)
        decoder.add_plugin(LABEL, (__name__, "_decode_frame"))
        decoder = _OWN_DECODERS.setdefault(syntax, decoder)
    return decoder
