"""Server-rendered thumbnails of a header-only scan (``dicomflow scan dicomweb+… --thumbnails``)
against a real Orthanc: each image's thumbnail comes from WADO-RS ``/rendered`` (the middle
frame of a multi-frame image), keeps the image's aspect ratio, and shows the same picture
as pydicom's pixels of the file; an image the server cannot render is a ``not_rendered``
error row, and nothing else is lost."""

from __future__ import annotations

import subprocess
import sys
import warnings
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pydicom
import pytest
from PIL import Image

import dicomflow
from tests.conftest import CORPUS, PYDICOM_TEST_FILES, require
from tests.peers.orthanc import Orthanc, orthanc_binary, running_orthanc

IMAGES = (
    PYDICOM_TEST_FILES / "CT_small.dcm",  # 128², signed, windowed
    PYDICOM_TEST_FILES / "MR_small.dcm",
    CORPUS / "pydicom__pydicom/test_files/ExplVR_BigEnd.dcm",  # RGB, big endian, 80 x 60
    CORPUS / "ImagingDataCommons__highdicom/dx_image.dcm",  # MONOCHROME1, 169 x 211
    CORPUS
    / "cornerstonejs__dicomParser/encapsulated/multi-frame/IM00001.implicit_little_endian.dcm",
)
NO_PIXELS = PYDICOM_TEST_FILES / "rtplan.dcm"
UNRENDERABLE = CORPUS / "pydicom__pydicom/test_files/SC_rgb_rle_32bit_2frame.dcm"  # Orthanc: 400
SIZE = 64


@pytest.fixture(scope="module")
def orthanc(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Orthanc]:
    require(orthanc_binary() is not None, "Orthanc (Debian package orthanc)")
    require(UNRENDERABLE.exists(), "the shared corpus")
    with running_orthanc(tmp_path_factory.mktemp("orthanc"), dicomweb=True) as server:
        for path in (*IMAGES, NO_PIXELS, UNRENDERABLE):
            assert server.upload(path), path
        yield server


@pytest.fixture(scope="module")
def lake(orthanc: Orthanc, tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("lake") / "lake"
    done = subprocess.run(
        [
            *(sys.executable, "-m", "dicomflow", "scan", orthanc.dicomweb, "-q", "SOPClassUID=*"),
            *("--thumbnails", "--thumbnail-size", str(SIZE), "--out", str(out)),
            *("--no-progress", "--workers", "1"),
        ],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert done.returncode == 0, done.stderr
    return out


def _read(path: Path, **options: Any) -> Any:
    with warnings.catch_warnings():  # the corpus's own quirks (a misspelt charset)
        warnings.simplefilter("ignore")
        return pydicom.dcmread(path, **options)


def _pixels(path: Path) -> np.ndarray:
    """pydicom's stored values of the frame a thumbnail shows (the middle one), as floats."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        dataset = pydicom.dcmread(path)
        array = dataset.pixel_array.astype(np.float64)
    frames = int(dataset.get("NumberOfFrames") or 1)
    return array[frames // 2] if frames > 1 else array


def _correlation(a: np.ndarray, b: np.ndarray) -> float:
    return float(np.corrcoef(a.ravel(), b.ravel())[0, 1])


def test_every_image_has_the_servers_thumbnail(orthanc: Orthanc, lake: Path) -> None:
    rows = {r["SOPInstanceUID"]: r for r in dicomflow.read_lake(str(lake)).instances().to_pylist()}
    assert len(rows) == len(IMAGES) + 2
    for path in IMAGES:
        dataset = _read(path, stop_before_pixels=True)
        row = rows[str(dataset.SOPInstanceUID)]
        assert row["render_path"], path.name
        thumbnail = Image.open(lake / row["render_path"])
        rows_, columns = int(dataset.Rows), int(dataset.Columns)
        scale = min(1.0, SIZE / max(rows_, columns))
        assert thumbnail.size == (round(columns * scale), round(rows_ * scale)), path.name
        # The same picture as the file's pixels (up to the server's windowing and
        # MONOCHROME1 inversion): strongly correlated, in either sense.
        stored = _pixels(path)
        colour = stored.ndim == 3
        shown = np.asarray(thumbnail.convert("RGB" if colour else "L"), dtype=np.float64)
        channels = [stored[..., c] for c in range(3)] if colour else [stored]
        small = [
            np.asarray(
                Image.fromarray(channel.astype(np.float32), mode="F").resize(
                    thumbnail.size, Image.Resampling.BOX
                )
            )
            for channel in channels
        ]
        expected = np.stack(small, axis=-1) if colour else small[0]
        assert abs(_correlation(shown, expected)) > 0.8, path.name


def test_images_without_pixels_get_no_thumbnail_and_no_error(lake: Path) -> None:
    plan = str(_read(NO_PIXELS, stop_before_pixels=True).SOPInstanceUID)
    read = dicomflow.read_lake(str(lake))
    row = next(r for r in read.instances().to_pylist() if r["SOPInstanceUID"] == plan)
    assert row["render_path"] is None
    assert plan not in str(read.errors().to_pylist())


def test_an_image_the_server_cannot_render_is_an_error_row(lake: Path) -> None:
    errors = dicomflow.read_lake(str(lake)).errors().to_pylist()
    assert [e["code"] for e in errors] == ["not_rendered"]
    assert "HTTP 400" in errors[0]["message"]
    assert errors[0]["source"].endswith(
        str(_read(UNRENDERABLE, stop_before_pixels=True).SOPInstanceUID)
    )


def test_server_thumbnails_need_a_dicomweb_source(tmp_path: Path) -> None:
    spec = tmp_path / "spec.yaml"
    spec.write_text(
        f"name: files\nsource: {{kind: files, urls: ['{PYDICOM_TEST_FILES / 'CT_small.dcm'}']}}\n"
        "operators: [{name: flatten}, {name: server_thumbnails}]\n"
        f"sinks: [{{kind: lake, path: '{tmp_path / 'lake'}'}}]\n"
    )
    done = subprocess.run(
        [sys.executable, "-m", "dicomflow", "run", str(spec), "--no-progress"],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 2
    assert "server_thumbnails asks a DICOMweb source" in done.stderr
