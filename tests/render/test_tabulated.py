"""Rendering through a table of the frame's value range gives exactly the numbers of
the chain applied pixel by pixel: on every grayscale corpus image (their windows, VOI
LUTs, MONOCHROME1), and for each window function, a VOI LUT and 16-bit output."""

from __future__ import annotations

import contextlib
import warnings

import numpy as np
import pydicom
import pytest

from dicomflow.pixels.decode import PixelDecodeError, decode
from dicomflow.render import RenderSettings, render_instance, tabulated
from dicomflow.render.errors import RenderError
from tests.conftest import CORPUS, require
from tests.render import cases

MONOCHROME = cases.images(("MONOCHROME",))


def _both(ds: pydicom.Dataset, settings: RenderSettings, monkeypatch: pytest.MonkeyPatch) -> int:
    """Render ``ds`` with and without tables; assert equal; return the frames compared."""
    pixels = decode(ds)
    with_tables = render_instance(ds, pixels, settings)
    with monkeypatch.context() as patched:
        patched.setattr(tabulated, "PIXELS_PER_ENTRY", 10**12)  # never a table
        direct = render_instance(ds, pixels, settings)
    assert len(with_tables) == len(direct)
    for ours, theirs in zip(with_tables, direct, strict=True):
        assert ours.image.dtype == theirs.image.dtype
        np.testing.assert_array_equal(ours.image, theirs.image)
    return len(direct)


@pytest.mark.parametrize("relative", MONOCHROME, ids=MONOCHROME)
def test_corpus_images_render_the_same_through_tables(
    relative: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    require(CORPUS.exists(), f"the shared corpus at {CORPUS}")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        ds = pydicom.dcmread(cases.path(relative), force=True)
        # an image that cannot be rendered: other tests cover its error rows
        with contextlib.suppress(PixelDecodeError, RenderError):
            _both(ds, RenderSettings(size=None, frames="all"), monkeypatch)


def _ct(values: np.ndarray) -> pydicom.Dataset:
    ds = pydicom.Dataset()
    ds.Modality = "CT"
    ds.SamplesPerPixel, ds.PhotometricInterpretation = 1, "MONOCHROME2"
    ds.Rows, ds.Columns = values.shape
    ds.BitsAllocated, ds.BitsStored, ds.HighBit = 16, 12, 11
    ds.PixelRepresentation = 0
    ds.RescaleSlope, ds.RescaleIntercept = "1", "-1024"
    ds.PixelData = values.astype(np.uint16).tobytes()
    ds.file_meta = pydicom.dataset.FileMetaDataset()
    ds.file_meta.TransferSyntaxUID = pydicom.uid.ExplicitVRLittleEndian
    return ds


PHANTOM = np.random.default_rng(3).integers(0, 4096, (256, 256))


@pytest.mark.parametrize("function", ["LINEAR", "LINEAR_EXACT", "SIGMOID"])
@pytest.mark.parametrize("bits", [8, 16])
def test_each_window_function(function: str, bits: int, monkeypatch: pytest.MonkeyPatch) -> None:
    ds = _ct(PHANTOM)
    ds.WindowCenter, ds.WindowWidth, ds.VOILUTFunction = "40", "400", function
    assert _both(ds, RenderSettings(size=None, bits=bits), monkeypatch) == 1


def test_a_voi_lut_and_a_one_wide_window(monkeypatch: pytest.MonkeyPatch) -> None:
    ds = _ct(PHANTOM)
    item = pydicom.Dataset()
    item.LUTDescriptor = [4096, -1024, 12]
    item.LUTData = [int(v) for v in (np.arange(4096) ** 2 // 4096)]
    ds.VOILUTSequence = [item]
    assert _both(ds, RenderSettings(size=None), monkeypatch) == 1
    del ds.VOILUTSequence
    ds.WindowCenter, ds.WindowWidth = "100", "1"
    assert _both(ds, RenderSettings(size=None), monkeypatch) == 1


def test_a_table_is_used_where_it_pays_and_not_elsewhere() -> None:
    calls: list[int] = []

    def chain(values: np.ndarray) -> np.ndarray:
        calls.append(values.size)
        return values.astype(np.float32) * 2

    wide = np.arange(-30000, 30000, dtype=np.int16).reshape(200, 300)
    np.testing.assert_array_equal(tabulated.tabulated(wide, chain), wide.astype(np.float32) * 2)
    assert calls == [wide.size]  # 60,000 values for 60,000 pixels: no table
    calls.clear()
    narrow = (PHANTOM - 1024).astype(np.int16)
    np.testing.assert_array_equal(tabulated.tabulated(narrow, chain), narrow.astype(np.float32) * 2)
    assert calls == [int(narrow.max()) - int(narrow.min()) + 1]
    calls.clear()
    floats = narrow.astype(np.float32)
    tabulated.tabulated(floats, chain)
    assert calls == [floats.size]
