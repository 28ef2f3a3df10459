"""The imagecodecs plugin gives arrays identical to pydicom's default decode (RLE, and
single-sample JPEG baseline, extended and lossless)."""

from __future__ import annotations

import warnings
from pathlib import Path

import numpy as np
import pydicom
import pytest
from pydicom.pixels import pixel_array
from pydicom.uid import RLELossless

from dicomflow.pixels import imagecodecs_plugin
from tests.conftest import CORPUS, PYDICOM_TEST_FILES, corpus_manifest


def _rle_files() -> list[Path]:
    files = [p for p in PYDICOM_TEST_FILES.glob("*rle*.dcm")]
    files += [
        CORPUS / r["relative_path"]
        for r in corpus_manifest()
        if r["transfer_syntax_uid"] == RLELossless
    ]
    return sorted(files)


def _grayscale_jpeg_files() -> list[Path]:
    syntaxes = {str(s) for s in imagecodecs_plugin.JPEG_SYNTAXES}
    files = [
        CORPUS / r["relative_path"]
        for r in corpus_manifest()
        if r["transfer_syntax_uid"] in syntaxes
    ]
    found = []
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        for path in sorted(files):
            try:
                ds = pydicom.dcmread(path, stop_before_pixels=True)
            except Exception:
                continue
            if int(ds.get("SamplesPerPixel", 1) or 1) == 1:
                found.append(path)
    return found


FILES = _rle_files()
JPEG_FILES = _grayscale_jpeg_files()


@pytest.mark.parametrize("path", FILES + JPEG_FILES, ids=[p.name for p in FILES + JPEG_FILES])
def test_identical_to_pydicoms_default(path: Path) -> None:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        syntax = pydicom.dcmread(path, stop_before_pixels=True).file_meta.TransferSyntaxUID
    assert imagecodecs_plugin.register(syntax)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        ds = pydicom.dcmread(path)
        try:
            expected = ds.pixel_array
        except Exception:
            pytest.skip("pydicom's default backends cannot decode this file either")
        ours = pixel_array(ds, decoding_plugin=imagecodecs_plugin.LABEL)
    assert ours.dtype == expected.dtype
    assert np.array_equal(ours, expected)


def test_plugin_covers_rle_files_from_both_sources() -> None:
    assert len([p for p in FILES if p.is_relative_to(PYDICOM_TEST_FILES)]) >= 5


def test_plugin_covers_grayscale_jpeg_of_every_process() -> None:
    if not JPEG_FILES:
        pytest.skip("the shared corpus is not available")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        syntaxes = {
            str(pydicom.dcmread(p, stop_before_pixels=True).file_meta.TransferSyntaxUID)
            for p in JPEG_FILES
        }
    assert {str(s) for s in imagecodecs_plugin.JPEG_SYNTAXES} <= syntaxes


def test_colour_jpeg_is_left_to_pydicom() -> None:
    path = PYDICOM_TEST_FILES / "SC_rgb_jpeg_dcmtk.dcm"
    ds = pydicom.dcmread(path)
    assert imagecodecs_plugin.register(ds.file_meta.TransferSyntaxUID)
    with pytest.raises(RuntimeError):
        pixel_array(ds, decoding_plugin=imagecodecs_plugin.LABEL)
