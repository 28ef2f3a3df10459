"""Frame selection and burned-in overlays against dcm2pnm (which shows overlays by default)."""

from __future__ import annotations

from pathlib import Path

import pytest

from dicomflow.pixels.decode import decode
from dicomflow.render import RenderSettings, render_instance
from tests.conftest import CORPUS, require
from tests.render import cases, oracle

pytestmark = pytest.mark.integration

OVERLAID = [
    "pydicom__pydicom/test_files/examples_overlay.dcm",
    "pydicom__pydicom-data/MR-SIEMENS-DICOM-WithOverlays.dcm",
]
MULTI_FRAME = [
    "pydicom__pydicom-data/emri_small.dcm",  # 10 frames, no window: min-max per frame
    "icometrix__dicom2nifti/philips_enhanced/anatomical/001/IM-0001-0170-0001.dcm",
    "themorlan__openREM/NM-NmIm-Siemens.dcm",
]


def _render(relative: str, settings: RenderSettings) -> list:
    require(CORPUS.exists(), f"the shared corpus at {CORPUS}")
    ds = oracle.read(cases.path(relative))
    return render_instance(ds, decode(ds), settings)


@pytest.mark.parametrize("relative", OVERLAID, ids=OVERLAID)
def test_overlays_burned_in_match_dcm2pnm(relative: str, tmp_path: Path) -> None:
    (frame,) = _render(relative, RenderSettings(overlays=True))
    ds = oracle.read(cases.path(relative))
    reference = oracle.dcm2pnm(cases.path(relative), tmp_path, oracle.voi_options(ds), ds=ds)
    mean, worst = oracle.differences(frame.image, reference)
    assert mean <= 1.0 and worst <= 2, f"mean {mean:.3f}, max {worst}"
    (plain,) = _render(relative, RenderSettings())
    assert (plain.image != frame.image).sum() > 100  # the overlay really is there


@pytest.mark.parametrize("relative", MULTI_FRAME, ids=MULTI_FRAME)
def test_every_frame_matches_dcm2pnm(relative: str, tmp_path: Path) -> None:
    frames = _render(relative, RenderSettings())
    ds = oracle.read(cases.path(relative))
    assert [f.frame for f in frames] == list(range(int(ds.NumberOfFrames)))
    for rendered in frames[:: max(1, len(frames) // 4)]:
        options = ["+F", str(rendered.frame + 1), "-O", *oracle.voi_options(ds, rendered.frame)]
        reference = oracle.dcm2pnm(cases.path(relative), tmp_path, options, ds=ds)
        mean, worst = oracle.differences(rendered.image, reference)
        assert mean <= 1.0 and worst <= 2, f"frame {rendered.frame}: mean {mean:.3f}, max {worst}"


def test_middle_and_chosen_frames() -> None:
    relative = MULTI_FRAME[0]
    every = _render(relative, RenderSettings())
    (middle,) = _render(relative, RenderSettings(frames="middle"))
    (third,) = _render(relative, RenderSettings(frames=3))
    assert middle.frame == len(every) // 2
    assert (middle.image == every[middle.frame].image).all()
    assert third.frame == 3 and (third.image == every[3].image).all()
