"""Rendering: decoded DICOM pixels to display images (PNG/JPEG), as pure functions.

::

    render_instance(ds, decode(ds), RenderSettings(size=256))  -> [RenderedFrame, ...]
    encode_image(frame, "png")                                  -> bytes

Modules, one job each: ``voi`` (windows, VOI LUTs, min-max), ``lut`` (LUT tables),
``color`` (palettes, RGB depth, ICC), ``overlays`` (60xx planes),
``presentation_state`` and ``annotations`` (GSPS), ``geometry`` (thumbnails),
``encode`` (PNG/JPEG) and ``render`` (the pipeline of PS3.4 Annex N.2).

Choices: a window-less image is stretched frame by frame (as DCMTK, which loads
one frame); ICC profiles are embedded in the PNG/JPEG, not applied; thumbnails
use Pillow's BOX filter. Not rendered: display shutters, overlays and graphic
layer colours of a presentation state, and its Presentation Size Mode and Pixel
Aspect Ratio (the displayed area comes out at one image pixel per output pixel).
"""

from __future__ import annotations

from dicomflow.render.encode import encode_image
from dicomflow.render.errors import RenderError
from dicomflow.render.geometry import thumbnail_shape
from dicomflow.render.presentation_state import references
from dicomflow.render.render import render_instance
from dicomflow.render.settings import RenderedFrame, RenderSettings

__all__ = [
    "RenderError",
    "RenderSettings",
    "RenderedFrame",
    "encode_image",
    "references",
    "render_instance",
    "thumbnail_shape",
]
