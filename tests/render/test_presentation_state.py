"""Grayscale Softcopy Presentation States: rendered through dcmp2pgm (DCMTK) for VOI,
Presentation LUT Shape and spatial transformation; displayed areas through dcm2pnm's
clip region; annotations and references checked directly."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest

from dicomflow.pixels.decode import DecodedPixels, decode
from dicomflow.render import RenderSettings, references, render_instance
from dicomflow.render.presentation_state import softcopy_voi
from dicomflow.render.voi import Window
from tests.conftest import CORPUS, require
from tests.render import cases, gsps, oracle

pytestmark = pytest.mark.integration

CT = "cornerstonejs__dicomParser/CT1_UNC.explicit_little_endian.dcm"
MR = "pydicom__pydicom/test_files/MR_small.dcm"
CR_MONOCHROME1 = "ImagingDataCommons__highdicom/dx_image.dcm"
PR_DIR = "orthanc-mirrors__orthanc-tests/HierarchicalAnonymization/2019-03-28"

VARIANTS = {
    "ct-window": (CT, {"window": (40, 400)}),
    "ct-inverse": (CT, {"window": (40, 400), "shape": "INVERSE"}),
    "ct-no-voi": (CT, {}),
    "ct-no-modality-lut": (CT, {"window": (1064, 400), "rescale": False}),
    "ct-rotate-90": (CT, {"window": (40, 400), "rotation": 90}),
    "ct-rotate-180": (CT, {"window": (-600, 1500), "rotation": 180}),
    "ct-rotate-270-flip": (CT, {"window": (40, 400), "rotation": 270, "flip": True}),
    "ct-flip": (CT, {"window": (40, 400), "flip": True}),
    "mr-window": (MR, {"window": (600, 1200), "rotation": 90, "flip": True}),
    "cr-monochrome1-inverse": (CR_MONOCHROME1, {"window": (100, 120), "shape": "INVERSE"}),
    "cr-monochrome1-identity": (CR_MONOCHROME1, {"window": (100, 120)}),
}


def _image(relative: str) -> tuple[Path, object]:
    require(CORPUS.exists(), f"the shared corpus at {CORPUS}")
    source = cases.path(relative)
    return source, oracle.read(source)


@pytest.mark.parametrize("variant", list(VARIANTS), ids=list(VARIANTS))
def test_gsps_matches_dcmp2pgm(variant: str, tmp_path: Path) -> None:
    relative, options = VARIANTS[variant]
    source, ds = _image(relative)
    ps = gsps.build(ds, **options)
    reference = oracle.dcmp2pgm(source, gsps.write(ps, tmp_path / "ps.dcm"), tmp_path)
    (frame,) = render_instance(ds, decode(ds), RenderSettings(), ps)
    mean, worst = oracle.differences(frame.image, reference)
    assert mean <= 1.0 and worst <= 2, f"mean {mean:.3f}, max {worst}"


def test_the_gsps_window_is_the_one_applied() -> None:
    """A GSPS window differs from the image's own: the render follows the GSPS."""
    _, ds = _image(CT)
    ps = gsps.build(ds, window=(-600, 1500))
    (with_ps,) = render_instance(ds, decode(ds), RenderSettings(), ps)
    (explicit,) = render_instance(ds, decode(ds), RenderSettings(window=(-600, 1500)))
    (default,) = render_instance(ds, decode(ds), RenderSettings())
    assert np.abs(with_ps.image.astype(int) - explicit.image).max() <= 1
    assert oracle.differences(with_ps.image, default.image)[0] > 5


@pytest.mark.parametrize(
    "area",
    [(101, 51, 400, 450), (1, 1, 256, 512), (300, 200, 301, 201)],
    ids=["inside", "left-half", "two-by-two"],
)
def test_displayed_area_crops_as_dcm2pnm_clips(
    area: tuple[int, int, int, int], tmp_path: Path
) -> None:
    source, ds = _image(CT)
    ps = gsps.build(ds, window=(40, 400), area=area)
    (frame,) = render_instance(ds, decode(ds), RenderSettings(), ps)
    c0, r0, c1, r1 = area
    clip = ["+C", str(c0 - 1), str(r0 - 1), str(c1 - c0 + 1), str(r1 - r0 + 1)]
    reference = oracle.dcm2pnm(source, tmp_path, ["+Ww", "40", "400", "-O", *clip], ds=ds)
    mean, worst = oracle.differences(frame.image, reference)
    assert mean <= 1.0 and worst <= 2, f"mean {mean:.3f}, max {worst}"


def test_displayed_area_outside_the_image_is_black_padding() -> None:
    _, ds = _image(CT)
    ps = gsps.build(ds, window=(40, 400), area=(-9, 1, 512, 520), flip=True)
    (frame,) = render_instance(ds, decode(ds), RenderSettings(), ps)
    (plain,) = render_instance(ds, decode(ds), RenderSettings(window=(40, 400)))
    assert frame.image.shape == (520, 522)
    flipped = frame.image[:, ::-1]  # undo the flip: image coordinates again
    assert (flipped[:, :10] == 0).all() and (flipped[512:] == 0).all()
    assert np.array_equal(flipped[:512, 10:], plain.image)


def test_the_corpus_gsps_references_its_cr_and_declares_its_window() -> None:
    require(CORPUS.exists(), f"the shared corpus at {CORPUS}")
    ps = oracle.read(CORPUS / PR_DIR / "PR000000.dcm")
    cr = oracle.read(CORPUS / PR_DIR / "CR000000.dcm")
    other = oracle.read(cases.path(CT))
    assert references(ps, cr)
    assert references(ps, cr, frame=0)
    assert not references(ps, other)
    assert softcopy_voi(ps, cr, 0) == Window(2048.0, 4096.0)


def test_the_corpus_gsps_annotations_are_drawn() -> None:
    """PR000000's ELLIPSE and text, drawn on a black stand-in for its CR (which the
    corpus keeps without Pixel Data); rotation and area as the GSPS says."""
    require(CORPUS.exists(), f"the shared corpus at {CORPUS}")
    ps = oracle.read(CORPUS / PR_DIR / "PR000000.dcm")
    cr = oracle.read(CORPUS / PR_DIR / "CR000000.dcm")
    black = np.zeros((1, int(cr.Rows), int(cr.Columns)), dtype=np.uint16)
    pixels = DecodedPixels(black, False, None, "MONOCHROME1", [2048.0], [4096.0])
    (frame,) = render_instance(cr, pixels, RenderSettings(), ps)
    # the displayed area runs from 0\\0 (one column and row of padding) to 2688\\2688
    assert frame.image.shape == (2689, 2689)
    image = frame.image[1:, 1:]
    # IDENTITY shape in the GSPS: stored 0 under window 2048/4096 is black, not inverted
    assert image[0, 0] == 0
    graphic = ps.GraphicAnnotationSequence[0].GraphicObjectSequence[0].GraphicData
    x0, y0, x1, y1 = (int(v) for v in graphic[:4])  # the ends of the major axis
    assert image[y0 - 2 : y0 + 3, x0 - 2 : x0 + 3].max() == 255
    assert image[y1 - 2 : y1 + 3, x1 - 2 : x1 + 3].max() == 255
    cx, cy = (x0 + x1) // 2, int(graphic[5]) + 40  # inside the unfilled ellipse
    assert image[cy, cx] == 0
    text_box = ps.GraphicAnnotationSequence[0].TextObjectSequence[0]
    tx, ty = (int(v) for v in text_box.BoundingBoxTopLeftHandCorner)
    assert image[ty : ty + 40, tx : tx + 300].max() == 255  # the text was written
    assert (image == 255).sum() < image.size // 100


@pytest.mark.parametrize("units", ["PIXEL", "DISPLAY"])
def test_graphic_types_are_drawn_where_they_say(units: str) -> None:
    from pydicom.dataset import Dataset
    from pydicom.sequence import Sequence

    _, ds = _image(MR)
    ps = gsps.build(ds, window=(600, 1200), rotation=90)
    scale = 1 / 64 if units == "DISPLAY" else 1.0
    objects = []
    for kind, data, filled in [
        ("POLYLINE", [2, 2, 30, 2], "N"),
        ("CIRCLE", [40, 40, 44, 40], "Y"),
        ("POINT", [10, 50], "N"),
        ("INTERPOLATED", [50, 10, 55, 15, 60, 10], "N"),
    ]:
        item = Dataset()
        item.GraphicAnnotationUnits = units
        item.GraphicDimensions = 2
        item.NumberOfGraphicPoints = len(data) // 2
        item.GraphicData = [v * scale for v in data]
        item.GraphicType = kind
        item.GraphicFilled = filled
        objects.append(item)
    annotation = Dataset()
    annotation.GraphicLayer = "LAYER"
    annotation.GraphicObjectSequence = Sequence(objects)
    ps.GraphicAnnotationSequence = Sequence([annotation])
    (frame,) = render_instance(ds, decode(ds), RenderSettings(), ps)
    image = frame.image
    if units == "PIXEL":  # drawn in image space, then rotated 90 degrees clockwise
        image = np.rot90(image, 1)
    assert (image[2, 3:29] == 255).all()  # the polyline
    assert image[40, 42] == 255 and image[38, 40] == 255  # the filled circle
    assert image[50, 10] == 255  # the point


def test_an_explicit_window_overrides_the_gsps() -> None:
    _, ds = _image(CT)
    ps = gsps.build(ds, window=(40, 400))
    settings = RenderSettings(window=(-600, 1500))
    (with_ps,) = render_instance(ds, decode(ds), settings, ps)
    (without,) = render_instance(ds, decode(ds), settings)
    assert np.abs(with_ps.image.astype(int) - without.image).max() <= 1


def test_references_honour_frame_numbers() -> None:
    _, ds = _image("pydicom__pydicom-data/emri_small.dcm")
    ps = gsps.build(ds, window=(100, 200), frames=[2, 3])
    assert references(ps, ds) and references(ps, ds, frame=1) and references(ps, ds, frame=2)
    assert not references(ps, ds, frame=0)
    pixels = decode(ds)
    frames = render_instance(ds, replace(pixels), RenderSettings(frames=1), ps)
    assert len(frames) == 1
