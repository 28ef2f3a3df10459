"""The imagecodecs plugin gives arrays identical to pydicom's default decode (RLE,
single-sample JPEG baseline and lossless, JPEG 2000 and HTJ2K lossless and lossy)."""

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


def _j2k_files() -> list[Path]:
    syntaxes = {str(s) for s in imagecodecs_plugin.J2K_SYNTAXES}
    files = [
        CORPUS / r["relative_path"]
        for r in corpus_manifest()
        if r["transfer_syntax_uid"] in syntaxes
    ]
    return sorted(files) + sorted(PYDICOM_TEST_FILES.glob("*j2k*.dcm"))


FILES = _rle_files()
JPEG_FILES = _grayscale_jpeg_files()
J2K_FILES = _j2k_files()
EVERY = FILES + JPEG_FILES + J2K_FILES


@pytest.mark.parametrize("path", EVERY, ids=[p.name for p in EVERY])
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


def test_plugin_covers_j2k_lossless_lossy_htj2k_and_colour() -> None:
    """The identity test above sees JPEG 2000 lossless and lossy, all three HTJ2K syntaxes
    present in the corpus, and colour (YBR_RCT/YBR_ICT/RGB) as well as grayscale."""
    if not any(p.is_relative_to(CORPUS) for p in J2K_FILES):
        pytest.skip("the shared corpus is not available")
    rows = {r["relative_path"]: r for r in corpus_manifest()}
    seen = [rows[str(p.relative_to(CORPUS))] for p in J2K_FILES if p.is_relative_to(CORPUS)]
    syntaxes = {r["transfer_syntax_uid"] for r in seen}
    assert {"1.2.840.10008.1.2.4.90", "1.2.840.10008.1.2.4.91"} <= syntaxes
    assert {"1.2.840.10008.1.2.4.201", "1.2.840.10008.1.2.4.202", "1.2.840.10008.1.2.4.203"} <= (
        syntaxes
    )
    colours = {r["photometric_interpretation"] for r in seen}
    assert {"YBR_RCT", "YBR_ICT", "RGB", "MONOCHROME2"} <= colours


def test_colour_jpeg_is_left_to_pydicom() -> None:
    path = PYDICOM_TEST_FILES / "SC_rgb_jpeg_dcmtk.dcm"
    ds = pydicom.dcmread(path)
    assert imagecodecs_plugin.register(ds.file_meta.TransferSyntaxUID)
    with pytest.raises(RuntimeError):
        pixel_array(ds, decoding_plugin=imagecodecs_plugin.LABEL)
