"""A pydicom decoder plugin backed by imagecodecs: RLE Lossless and single-sample JPEG.

imagecodecs' DICOM RLE and JPEG (libjpeg-turbo, lossless JPEG) decoders are
several times faster than pydicom's default backends. JPEG is taken only for
single-sample (grayscale) frames: colour JPEG leaves the YCbCr question to
pydicom's own backends, which are then used instead. It follows pydicom's
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
DECODER_DEPENDENCIES = {
    syntax: ("numpy", "imagecodecs>=2024.6.1") for syntax in (uid.RLELossless, *JPEG_SYNTAXES)
}
_CODECS: dict[str, tuple[str, ...]] = {uid.RLELossless: ("DICOMRLE",)} | {
    str(s): ("JPEG8", "LJPEG") for s in JPEG_SYNTAXES
}


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
    if runner.transfer_syntax in JPEG_SYNTAXES:
        if runner.samples_per_pixel != 1:
            raise ValueError("colour JPEG is left to pydicom's own backends")
        return bytes(imagecodecs.jpeg_decode(src))
    kind = "i" if runner.pixel_representation else "u"
    dtype = np.dtype(f"<{kind}{runner.bits_allocated // 8}")
    decoded = imagecodecs.dicomrle_decode(src, dtype=dtype)
    runner.set_option("planar_configuration", 1)
    return bytes(decoded)


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
