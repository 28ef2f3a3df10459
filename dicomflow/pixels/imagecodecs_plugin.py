"""A pydicom decoder plugin backed by imagecodecs, for RLE Lossless.

imagecodecs' DICOM RLE decoder is several times faster than pydicom's default
backends. It follows pydicom's plugin contract (``DECODER_DEPENDENCIES``,
``is_available``, ``_decode_frame``) and is registered next to pydicom's own
plugins; :func:`dicomflow.pixels.decode.decode` asks for it by name and falls
back to pydicom's defaults if it fails. A test checks that it yields arrays
identical to pydicom's default decode on every RLE file in the corpus.
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
DECODER_DEPENDENCIES = {uid.RLELossless: ("numpy", "imagecodecs>=2024.6.1")}


def is_available(transfer_syntax: str) -> bool:
    """True when imagecodecs is installed with its DICOM RLE codec."""
    if imagecodecs is None or transfer_syntax not in DECODER_DEPENDENCIES:
        return False
    return bool(getattr(imagecodecs, "DICOMRLE", None) and imagecodecs.DICOMRLE.available)


def _decode_frame(src: bytes, runner: DecodeRunner) -> bytes:
    """One RLE frame as little-endian samples, one plane per sample (planar configuration 1)."""
    if imagecodecs is None:
        raise RuntimeError("imagecodecs is not installed")
    kind = "i" if runner.pixel_representation else "u"
    dtype = np.dtype(f"<{kind}{runner.bits_allocated // 8}")
    decoded = imagecodecs.dicomrle_decode(src, dtype=dtype)
    runner.set_option("planar_configuration", 1)
    return bytes(decoded)


def register() -> bool:
    """Add the plugin to pydicom's RLE decoder once per process; True if it is usable."""
    from pydicom.pixels.decoders import RLELosslessDecoder

    if LABEL not in RLELosslessDecoder.available_plugins:
        if not is_available(uid.RLELossless):
            return False
        try:
            RLELosslessDecoder.add_plugin(LABEL, (__name__, "_decode_frame"))
        except ValueError:  # already registered (unavailable at the time)
            return False
    return LABEL in RLELosslessDecoder.available_plugins
