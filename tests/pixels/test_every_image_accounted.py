"""In a pixel run, every input with Pixel Data ends with pixels or an error row: an image
without a series, or without rows or columns, is said to have no stack, never dropped
silently."""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import pydicom
import pytest

import dicomflow
from tests.conftest import CORPUS, PYDICOM_TEST_FILES, require


def _ingest(src: Path, lake: Path) -> None:
    result = subprocess.run(
        [sys.executable, "-m", "dicomflow", "ingest", str(src), "--out", str(lake), "--pixels"],
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert result.returncode == 0, result.stderr


def _unaccounted(lake: Path) -> list[str]:
    read = dicomflow.read_lake(str(lake))
    rows = read.instances(columns=["source", "has_pixel_data", "zarr_path"]).to_pylist()
    with_errors = {e["source"] for e in read.errors().to_pylist()}
    return [
        r["source"]
        for r in rows
        if r["has_pixel_data"] and r["zarr_path"] is None and r["source"] not in with_errors
    ]


def test_images_that_cannot_be_placed_get_error_rows(tmp_path: Path) -> None:
    src = tmp_path / "src"
    src.mkdir()
    shutil.copy(PYDICOM_TEST_FILES / "CT_small.dcm", src / "good.dcm")
    no_series = pydicom.dcmread(PYDICOM_TEST_FILES / "MR_small.dcm")
    del no_series.SeriesInstanceUID
    no_series.save_as(src / "no-series.dcm")
    empty = pydicom.dcmread(PYDICOM_TEST_FILES / "CT_small.dcm")
    empty.SOPInstanceUID = "1.2.826.0.1.3680043.8.498.3"
    empty.Rows = 0
    empty.save_as(src / "no-rows.dcm")
    lake = tmp_path / "lake"
    _ingest(src, lake)
    read = dicomflow.read_lake(str(lake))
    rows = {Path(r["source"]).name: r for r in read.instances().to_pylist()}
    assert set(rows) == {"good.dcm", "no-series.dcm", "no-rows.dcm"}
    assert rows["good.dcm"]["zarr_path"] is not None
    errors = {Path(e["source"]).name: e for e in read.errors().to_pylist()}
    for name in ("no-series.dcm", "no-rows.dcm"):
        assert rows[name]["zarr_path"] is None
        assert (errors[name]["stage"], errors[name]["code"]) == (
            "write_pixels",
            "unsupported_pixels",
        )
        assert "write_pixels: unsupported_pixels" in rows[name]["warnings"]
    assert "good.dcm" not in errors


@pytest.mark.slow
def test_every_corpus_image_ends_with_pixels_or_an_error_row(tmp_path: Path) -> None:
    require(CORPUS.exists(), f"the shared corpus at {CORPUS}")
    lake = tmp_path / "lake"
    _ingest(CORPUS, lake)
    assert _unaccounted(lake) == []
