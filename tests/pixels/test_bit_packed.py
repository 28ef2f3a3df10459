"""Bits Allocated 1 (SEG binary masks): decoded frames equal pydicom's ``pixel_array``, and
``ingest --pixels`` keeps the SEG's ``instances`` row with its frames in the lake."""

from __future__ import annotations

import shutil
import subprocess
import sys
import warnings
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import pydicom
import pytest
import zarr

from dicomflow.dicom.header import read_header
from dicomflow.pixels.decode import PixelDecodeError, decode
from dicomflow.pixels.header_dataset import dataset_from_header
from tests.conftest import CORPUS, PYDICOM_TEST_FILES, corpus_manifest, require


def _bit_packed() -> list[Path]:
    """Every file whose manifest entry says Bits Allocated 1, and pydicom's own SEG files."""
    corpus = [
        CORPUS / row["relative_path"]
        for row in corpus_manifest()
        if "bits 1/1 unsigned" in row["notes"]
    ]
    return [
        *corpus,
        PYDICOM_TEST_FILES / "liver_1frame.dcm",
        PYDICOM_TEST_FILES / "liver_expb_1frame.dcm",
    ]


FILES = _bit_packed()
# pydicom 3.0 decodes neither RLE nor deflated image frames of Bits Allocated 1 (and in
# this process it may fall back on dicomflow's own plugin): their reference is
# pydicom's decode of the same pixels stored natively.
NATIVE_TWINS = {
    "liver_rle.dcm": "liver.dcm",
    "liver_nonbyte_aligned_rle.dcm": "liver_nonbyte_aligned.dcm",
    "liver_deflate.dcm": "liver.dcm",
}


def _id(path: Path) -> str:
    return str(path.relative_to(CORPUS if path.is_relative_to(CORPUS) else PYDICOM_TEST_FILES))


def _pydicom_frames(ds: pydicom.Dataset) -> np.ndarray | None:
    """pydicom's unpacked pixels, frames first; None when pydicom cannot decode them."""
    try:
        array = ds.pixel_array
    except (NotImplementedError, RuntimeError, ValueError):
        return None
    return array[np.newaxis] if int(ds.get("NumberOfFrames") or 1) == 1 else array


def test_the_bit_packed_files_are_there() -> None:
    require(CORPUS.exists(), "the shared corpus")
    assert len(FILES) > 15  # SEGs from highdicom, dcmqi and pydicom-data


@pytest.mark.parametrize("path", FILES, ids=[_id(p) for p in FILES])
def test_bit_packed_frames_equal_pydicoms_pixel_array(path: Path) -> None:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        ds = pydicom.dcmread(path)
        assert ds.BitsAllocated == 1
        twin = NATIVE_TWINS.get(path.name)
        expected = _pydicom_frames(pydicom.dcmread(path.with_name(twin)) if twin else ds)
    if expected is None:
        with pytest.raises(PixelDecodeError):
            decode(ds)
        return
    decoded = decode(ds)
    assert decoded.array.dtype == np.uint8
    assert set(np.unique(decoded.array)) <= {0, 1}
    np.testing.assert_array_equal(decoded.array, expected)
    # The ingest path builds the dataset from the scan's header instead of reading again.
    with path.open("rb") as fp:
        built = dataset_from_header(read_header(fp, size=path.stat().st_size), fp)
    if built is not None:
        np.testing.assert_array_equal(decode(built).array, expected)


def _run_cli(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "dicomflow", *args], capture_output=True, text=True, timeout=300
    )


def test_ingest_pixels_keeps_the_seg_row_and_writes_its_frames(tmp_path: Path) -> None:
    require(CORPUS.exists(), "the shared corpus")
    inputs = tmp_path / "in"
    inputs.mkdir()
    names = [
        "QIICR__dcmqi/sr-example/seg.dcm",
        "ImagingDataCommons__highdicom/seg_image_ct_binary.dcm",
    ]
    for name in names:
        shutil.copy(CORPUS / name, inputs / Path(name).name)
    lake = tmp_path / "lake"
    result = _run_cli("ingest", str(inputs), "--out", str(lake), "--pixels", "--workers", "1")
    assert result.returncode == 0, result.stderr
    rows = pq.read_table(lake / "instances").to_pylist()
    assert sorted(Path(r["source"]).name for r in rows) == sorted(Path(n).name for n in names)
    errors = pq.read_table(lake / "errors").to_pylist() if (lake / "errors").exists() else []
    assert errors == []
    for row in rows:
        ds = pydicom.dcmread(row["source"])
        assert row["SOPInstanceUID"] == ds.SOPInstanceUID
        assert row["zarr_path"]
        stored = zarr.open_group(str(lake / row["zarr_path"]), mode="r")["0"]
        frames = int(ds.get("NumberOfFrames") or 1)
        ours = stored[row["frame_index"] : row["frame_index"] + frames]
        np.testing.assert_array_equal(ours, _pydicom_frames(ds))
