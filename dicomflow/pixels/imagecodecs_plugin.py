"""A pydicom decoder plugin backed by imagecodecs: RLE Lossless, single-sample JPEG, and
JPEG 2000 / HTJ2K.

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
"""

from __future__ import annotations

import numpy as np
from pydicom import uid
from pydicom.pixels.decoders.base import DecodeRunner

try:
    import imagecodecs
except ImportError:  # an optional extra: [codecs]
    imagecodecs = None  # type: ignore[assignment]

LABEL = "imagecodecs"
# Not JPEG Extended: its 12-bit lossy frames come out of libjpeg-turbo a little
# differently from pydicom's libjpeg (lossy IDCTs differ), so pydicom's stays.
JPEG_SYNTAXES = (uid.JPEGBaseline8Bit, uid.JPEGLossless, uid.JPEGLosslessSV1)
J2K_SYNTAXES = tuple(uid.JPEG2000TransferSyntaxes)  # JPEG 2000 and HTJ2K, as pydicom lists them
DECODER_DEPENDENCIES = {
    syntax: ("numpy", "imagecodecs>=2024.6.1")
    for syntax in (uid.RLELossless, *JPEG_SYNTAXES, *J2K_SYNTAXES)
}
_CODECS: dict[str, tuple[str, ...]] = {str(uid.RLELossless): ("DICOMRLE",)}
_CODECS.update({str(s): ("JPEG8", "LJPEG") for s in JPEG_SYNTAXES})
_CODECS.update({str(s): ("JPEG2K",) for s in J2K_SYNTAXES})


def is_available(transfer_syntax: str) -> bool:
    """True when imagecodecs is installed with the codecs ``transfer_syntax`` needs."""
    if imagecodecs is None or transfer_syntax not in DECODER_DEPENDENCIES:
        return False
    return all(
        getattr(imagecodecs, name, None) is not None and getattr(imagecodecs, name).available
        for name in _CODECS[transfer_syntax]
    )


def _decode_frame(src: bytes, runner: DecodeRunner) -> bytes:
    """One frame as little-endian samples (RLE: one plane per sample, planar configuration 1)."""
    if imagecodecs is None:
        raise RuntimeError("imagecodecs is not installed")
    if runner.transfer_syntax in J2K_SYNTAXES:
        return _decode_j2k(src, runner)
    if runner.transfer_syntax in JPEG_SYNTAXES:
        if runner.samples_per_pixel != 1:
            raise ValueError("colour JPEG is left to pydicom's own backends")
        return bytes(imagecodecs.jpeg_decode(src))
    kind = "i" if runner.pixel_representation else "u"
    dtype = np.dtype(f"<{kind}{runner.bits_allocated // 8}")
    decoded = imagecodecs.dicomrle_decode(src, dtype=dtype)
    runner.set_option("planar_configuration", 1)
    return bytes(decoded)


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
    True if it is usable."""
    from pydicom.pixels.decoders.base import get_decoder

    if transfer_syntax not in DECODER_DEPENDENCIES:
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
