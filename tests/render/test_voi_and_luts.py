"""Window choice, VOI LUT Sequence, 16-bit output and palettes: DCMTK where it has the
feature, the formulas of PS3.3 C.11.2 where it has not (LINEAR_EXACT, percentiles)."""

from __future__ import annotations

import math
from fractions import Fraction
from pathlib import Path

import numpy as np
import pytest
from pydicom.dataset import Dataset
from pydicom.pixels import apply_color_lut

from dicomflow.pixels.decode import DecodedPixels, decode
from dicomflow.render import RenderSettings, render_instance
from dicomflow.render.voi import MinMax, Window, apply_minmax, apply_window, choose_voi
from tests.conftest import CORPUS, require
from tests.render import cases, oracle

MG = "themorlan__openREM/MG-Im-GE_Seno_1_ForPresentation.dcm"  # 3 windows, SIGMOID, VOI LUT
CT = "cornerstonejs__dicomParser/CT1_UNC.explicit_little_endian.dcm"


def _read(relative: str) -> object:
    require(CORPUS.exists(), f"the shared corpus at {CORPUS}")
    return oracle.read(cases.path(relative))


@pytest.mark.integration
@pytest.mark.parametrize("index", [0, 1, 2])
def test_the_nth_window_matches_dcm2pnm(index: int, tmp_path: Path) -> None:
    ds = _read(MG)
    (frame,) = render_instance(ds, decode(ds), RenderSettings(window=index))
    options = ["+Wi", str(index + 1), "-O"]
    reference = oracle.dcm2pnm(cases.path(MG), tmp_path, options, ds=ds)
    mean, worst = oracle.differences(frame.image, reference)
    assert mean <= 1.0 and worst <= 2, f"mean {mean:.3f}, max {worst}"


@pytest.mark.integration
@pytest.mark.parametrize(
    "relative",
    [
        MG,
        "themorlan__openREM/MG-Im-GE_Seno_2_ForPresentation.dcm",
        "pydicom__pydicom-data/vlut_04.dcm",
    ],
)
def test_the_voi_lut_sequence_matches_dcm2pnm(relative: str, tmp_path: Path) -> None:
    """Without windows, "auto" takes the VOI LUT Sequence (dcm2pnm +Wl 1)."""
    ds = _read(relative)
    pixels = decode(ds)
    for keyword in ("WindowCenter", "WindowWidth", "VOILUTFunction"):
        if keyword in ds:
            delattr(ds, keyword)
    pixels = type(pixels)(
        pixels.array,
        pixels.rescale_applied,
        pixels.units,
        pixels.photometric_interpretation,
        None,
        None,
    )
    (frame,) = render_instance(ds, pixels, RenderSettings())
    reference = oracle.dcm2pnm(cases.path(relative), tmp_path, ["+Wl", "1", "-O"], ds=ds)
    mean, worst = oracle.differences(frame.image, reference)
    assert mean <= 1.0 and worst <= 2, f"mean {mean:.3f}, max {worst}"


@pytest.mark.integration
def test_sixteen_bit_output_matches_dcm2pnm(tmp_path: Path) -> None:
    ds = _read(CT)
    (frame,) = render_instance(ds, decode(ds), RenderSettings(window=(40, 400), bits=16))
    assert frame.image.dtype == np.uint16
    reference = oracle.dcm2pnm(cases.path(CT), tmp_path, ["+Ww", "40", "400", "-O", "+on2"], ds=ds)
    assert reference.dtype == np.uint16 or reference.max() > 255
    diff = np.abs(frame.image.astype(np.int64) - reference.astype(np.int64))
    assert diff.mean() <= 257 and diff.max() <= 2 * 257  # the 8-bit bounds, in 16-bit steps


@pytest.mark.integration
@pytest.mark.parametrize(
    "relative",
    [
        "pydicom__pydicom-data/gdcm-US-ALOKA-16.dcm",
        "pydicom__pydicom-data/gdcm-US-ALOKA-16_big.dcm",
    ],
)
def test_segmented_palettes_follow_pydicom(relative: str) -> None:
    """DCMTK refuses segmented palettes; pydicom expands them independently of us."""
    ds = _read(relative)
    (frame,) = render_instance(ds, decode(ds), RenderSettings())
    expected = apply_color_lut(ds.pixel_array, ds).astype(np.float64)
    expected = np.rint(expected * 255 / 65535)
    assert np.abs(frame.image.astype(int) - expected).max() <= 1


def test_linear_exact_and_sigmoid_follow_the_formulas() -> None:
    x = np.array([-100.0, 0.0, 40.0, 50.0, 60.0, 100.0, 1000.0])
    exact = apply_window(x, Window(50, 20, "LINEAR_EXACT"))
    assert np.allclose(exact, np.clip((x - 50) / 20 + 0.5, 0, 1))
    sigmoid = apply_window(x, Window(50, 20, "SIGMOID"))
    assert np.allclose(sigmoid, 1 / (1 + np.exp(-4 * (x - 50) / 20)), atol=1e-6)
    linear = apply_window(x, Window(50, 21))  # C.11.2.1.2.1: (x - (c - 0.5)) / (w - 1) + 0.5
    assert np.allclose(linear, np.clip((x - 49.5) / 20 + 0.5, 0, 1))
    assert apply_window(np.array([49.0, 50.0]), Window(50, 1)).tolist() == [0.0, 1.0]


@pytest.mark.parametrize("function", ["LINEAR", "LINEAR_EXACT"])
@pytest.mark.parametrize("inverse", [False, True])
@pytest.mark.parametrize(
    ("dtype", "bits", "center", "width", "values"),
    [
        (np.int16, 8, 40.0, 400.0, (-2048, 4096)),
        (np.int16, 16, 40.0, 400.0, (-2048, 4096)),
        (np.float64, 8, 40.0, 400.0, (-2048, 4096)),
        (np.int16, 16, 3000.0, 3.0, (2990, 3010)),  # narrow, far from zero
        (np.uint16, 16, 30000.0, 20.0, (29980, 30020)),
        (np.uint16, 16, 30000.0, 20000.0, (0, 65535)),
    ],
)
def test_a_straight_window_quantized_in_one_pass_follows_the_formulas(
    function: str,
    inverse: bool,
    dtype: type,
    bits: int,
    center: float,
    width: float,
    values: tuple[int, int],
) -> None:
    """The one-pass window of a render equals PS3.3 C.11.2.1.2.1 / C.11.2.1.3.2 computed in
    exact arithmetic and rounded to nearest, within one level where float32 rounds a tie."""
    rng = np.random.default_rng(7)
    x = rng.integers(*values, size=(64, 64), endpoint=True).astype(dtype)
    if dtype == np.float64:
        x = x * 0.37 + 0.125
    ds = Dataset()
    ds.WindowCenter, ds.WindowWidth, ds.VOILUTFunction = center, width, function
    ds.PresentationLUTShape = "INVERSE" if inverse else "IDENTITY"
    pixels = DecodedPixels(x[None], True, "HU", "MONOCHROME2", None, None)
    (frame,) = render_instance(ds, pixels, RenderSettings(size=None, bits=bits))
    c, w, half, top = Fraction(center), Fraction(width), Fraction(1, 2), (1 << bits) - 1

    def level(value: float) -> int:  # in exact rational arithmetic: no rounding but the last
        v = Fraction(value)
        t = (v - (c - half)) / (w - 1) + half if function == "LINEAR" else (v - c) / w + half
        t = min(max(t, Fraction(0)), Fraction(1))
        return math.floor((1 - t if inverse else t) * top + half)

    table = {value: level(value) for value in np.unique(x).tolist()}
    expected = np.vectorize(table.__getitem__, otypes=[np.int64])(x)
    difference = np.abs(frame.image.astype(np.int64) - expected)
    assert frame.image.dtype == (np.uint8 if bits == 8 else np.uint16)
    assert difference.max() <= 1 and (difference == 0).mean() > 0.999


def test_percentile_fallback_ignores_outliers() -> None:
    values = np.arange(10000, dtype=np.int16).reshape(100, 100)
    values[0, 0] = 32000
    stretched = apply_minmax(values, 0.5)
    assert stretched[50, 50] == pytest.approx(0.5, abs=0.01)
    assert apply_minmax(values, None)[50, 50] < 0.2  # min-max is pulled by the outlier
    assert isinstance(choose_voi(_bare(), 0, "auto", 0.5), MinMax)


def test_an_explicit_pair_and_the_auto_choice() -> None:
    ds = _bare()
    ds.WindowCenter, ds.WindowWidth = [40, 300], [400, 1500]
    assert choose_voi(ds, 0, "auto", None) == Window(40, 400)
    assert choose_voi(ds, 0, 1, None) == Window(300, 1500)
    assert choose_voi(ds, 0, (10, 20), None) == Window(10, 20)


def _bare() -> object:
    from pydicom.dataset import Dataset

    return Dataset()
