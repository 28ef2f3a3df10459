"""Notebook display: a series' middle slice, contact sheets, and the HTML of lakes,
tables and series, on small series written here with known pixels and windows."""

from __future__ import annotations

import base64
import io
from pathlib import Path

import numpy as np
import pydicom
import pytest
from PIL import Image
from pydicom.dataset import FileDataset, FileMetaDataset
from pydicom.uid import ExplicitVRLittleEndian, generate_uid

import dicomflow
from dicomflow.display import spread
from dicomflow.errors import ConfigError

CT_WINDOW = (40.0, 400.0)
INTERCEPT = -1024.0


def write_series(
    folder: Path,
    *,
    slices: int,
    size: int,
    photometric: str = "MONOCHROME2",
    window: tuple[float, float] | None = CT_WINDOW,
    patient_name: str = "Doe^Jane",
) -> tuple[str, np.ndarray]:
    """A CT-like series (stored values ramp across each slice, one step up per slice);
    returns its Series Instance UID and the modality values, slices first."""
    series_uid, study_uid, frame_uid = generate_uid(), generate_uid(), generate_uid()
    folder.mkdir(parents=True, exist_ok=True)
    stored = np.add.outer(np.arange(slices) * 10, np.arange(size * size).reshape(size, size) * 2)
    stored = stored.astype(np.uint16)
    for k in range(slices):
        meta = FileMetaDataset()
        meta.MediaStorageSOPClassUID = "1.2.840.10008.5.1.4.1.1.2"
        meta.MediaStorageSOPInstanceUID = generate_uid()
        meta.TransferSyntaxUID = ExplicitVRLittleEndian
        ds = FileDataset(str(folder / f"{k}.dcm"), {}, file_meta=meta, preamble=b"\0" * 128)
        ds.SOPClassUID, ds.SOPInstanceUID = (
            meta.MediaStorageSOPClassUID,
            meta.MediaStorageSOPInstanceUID,
        )
        ds.StudyInstanceUID, ds.SeriesInstanceUID = study_uid, series_uid
        ds.FrameOfReferenceUID = frame_uid
        ds.PatientName, ds.PatientID, ds.Modality = patient_name, "P1", "CT"
        ds.InstanceNumber = k + 1
        ds.ImagePositionPatient = [0.0, 0.0, 2.5 * k]
        ds.ImageOrientationPatient = [1.0, 0.0, 0.0, 0.0, 1.0, 0.0]
        ds.PixelSpacing = [0.5, 0.5]
        ds.SliceThickness = 2.5
        ds.Rows = ds.Columns = size
        ds.SamplesPerPixel, ds.PhotometricInterpretation = 1, photometric
        ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 16, 12, 11, 0
        ds.RescaleIntercept, ds.RescaleSlope = INTERCEPT, 1.0
        if window is not None:
            ds.WindowCenter, ds.WindowWidth = window
        ds.PixelData = stored[k].tobytes()
        ds.save_as(folder / f"{k}.dcm", enforce_file_format=True)
    return series_uid, stored.astype(np.float64) + INTERCEPT


@pytest.fixture(scope="module")
def lake(tmp_path_factory: pytest.TempPathFactory) -> dicomflow.Lake:
    root = tmp_path_factory.mktemp("display")
    write_series(root / "src" / "ct", slices=9, size=40)
    write_series(
        root / "src" / "cr",
        slices=3,
        size=8,
        photometric="MONOCHROME1",
        window=None,
        patient_name="<b>Bold</b>",
    )
    (root / "src" / "notes.txt").write_text("not DICOM")
    summary = dicomflow.ingest([str(root / "src")], out=str(root / "lake"), pixels=True)
    assert summary.rows == 12 and summary.errors == 1
    return dicomflow.read_lake(str(root / "lake"))


def series_uid(lake: dicomflow.Lake, frames: int) -> str:
    rows = lake.series().to_pylist()
    return next(r["SeriesInstanceUID"] for r in rows if r["frames"] == frames)


def png_array(png: bytes) -> np.ndarray:
    assert png.startswith(b"\x89PNG\r\n\x1a\n")
    return np.asarray(Image.open(io.BytesIO(png)))


def linear_window(values: np.ndarray, center: float, width: float) -> np.ndarray:
    """PS3.3 C.11.2.1.2.1 to 8 bits, written out independently of dicomflow.render."""
    y = ((values - (center - 0.5)) / (width - 1) + 0.5) * 255
    return np.clip(np.rint(np.clip(y, 0, 255)), 0, 255).astype(np.uint8)


def test_thumbnail_is_the_middle_slice_under_the_stack_window(lake: dicomflow.Lake) -> None:
    uid = series_uid(lake, 9)
    view = dicomflow.view_series(lake, uid)
    expected = write_series_values(9, 40)[4]
    image = png_array(view.thumbnail().png)
    assert image.shape == (240, 240)  # 40 pixels enlarged 6 times: never past 256
    native = png_array(view.thumbnail(size=40).png)
    assert native.dtype == np.uint8 and native.shape == (40, 40)
    np.testing.assert_array_equal(native, linear_window(expected, *CT_WINDOW))
    assert view._repr_png_() == view.thumbnail().png


def write_series_values(slices: int, size: int) -> np.ndarray:
    """The modality values :func:`write_series` writes."""
    stored = np.add.outer(np.arange(slices) * 10, np.arange(size * size).reshape(size, size) * 2)
    return stored.astype(np.uint16).astype(np.float64) + INTERCEPT


def test_monochrome1_without_window_is_stretched_and_inverted(lake: dicomflow.Lake) -> None:
    view = dicomflow.view_series(lake, series_uid(lake, 3))
    image = png_array(view.thumbnail(size=8).png)
    values = write_series_values(3, 8)[1]
    stretched = (values - values.min()) / (values.max() - values.min())
    np.testing.assert_array_equal(image, np.rint((1 - stretched) * 255).astype(np.uint8))
    assert image[0, 0] == 255 and image[-1, -1] == 0


def test_small_images_are_enlarged_by_whole_pixels(lake: dicomflow.Lake) -> None:
    view = dicomflow.view_series(lake, series_uid(lake, 3))
    small = png_array(view.thumbnail(size=8).png)
    big = png_array(view.thumbnail(size=64).png)
    assert big.shape == (64, 64)
    np.testing.assert_array_equal(big[::8, ::8], small)


def test_contact_sheet_lays_out_every_slice_in_a_grid(lake: dicomflow.Lake) -> None:
    uid = series_uid(lake, 9)
    sheet = dicomflow.contact_sheet(lake, uid, columns=4, size=40)
    assert (sheet.height, sheet.width) == (3 * 42 - 2, 4 * 42 - 2)
    plain = dicomflow.view_series(lake, uid).contact_sheet(columns=4, size=40, labels=False)
    image = png_array(plain.png)
    values = write_series_values(9, 40)
    for k in range(9):
        top, left = (k // 4) * 42, (k % 4) * 42
        tile = image[top : top + 40, left : left + 40]
        np.testing.assert_array_equal(tile, linear_window(values[k], *CT_WINDOW))
    assert not image[:, 40:42].any()  # the gaps between tiles stay black
    assert sheet._repr_png_() == sheet.png


def test_contact_sheet_of_a_long_series_samples_it_evenly() -> None:
    assert spread(5, 48) == [0, 1, 2, 3, 4]
    picked = spread(400, 48)
    assert len(picked) == 48 and picked[0] == 0 and picked[-1] == 399
    assert picked == sorted(set(picked))


def test_picture_saves_its_png(lake: dicomflow.Lake, tmp_path: Path) -> None:
    sheet = dicomflow.contact_sheet(lake, series_uid(lake, 3), size=16)
    sheet.save(tmp_path / "sheet.png")
    assert (tmp_path / "sheet.png").read_bytes() == sheet.png


def test_series_html_has_its_facts_and_middle_slice(lake: dicomflow.Lake) -> None:
    uid = series_uid(lake, 9)
    view = dicomflow.view_series(lake, uid)
    html = view._repr_html_()
    assert uid in html and "[9, 40, 40]" in html and "[2.5, 0.5, 0.5]" in html
    encoded = html.split('src="data:image/png;base64,')[1].split('"')[0]
    assert base64.b64decode(encoded) == view.thumbnail().png
    volume = view.open()
    assert volume.dims == ("z", "y", "x") and volume.attrs["zarr_path"] in html


def test_unknown_series_and_slices_are_refused(lake: dicomflow.Lake) -> None:
    with pytest.raises(ConfigError):
        dicomflow.view_series(lake, "1.2.3.4")
    view = dicomflow.view_series(lake, series_uid(lake, 3))
    with pytest.raises(ConfigError):
        view.thumbnail(index=3)
    with pytest.raises(ConfigError):
        view.contact_sheet(columns=0)


def test_lake_html_counts_tables_modalities_errors_and_runs(lake: dicomflow.Lake) -> None:
    html = lake._repr_html_()
    assert "<td>instances</td><td>12</td>" in html
    assert "<td>series</td><td>2</td>" in html
    assert "<td>errors</td><td>1</td>" in html
    assert "<td>CT</td><td>12</td>" in html
    assert "<td>not_dicom</td><td>1</td>" in html
    assert "latest runs" in html and "<td>ingest</td>" in html


def test_table_html_shows_columns_and_escaped_first_rows(lake: dicomflow.Lake) -> None:
    table = lake["instances"]
    assert table.num_rows == 12
    assert table.to_arrow(columns=["PatientID"]).num_rows == 12
    assert table.schema.names == lake.dataset("instances").schema.names
    html = table._repr_html_()
    assert "<b>instances</b>: 12 rows" in html and "dicom_json" in html  # listed, not shown
    assert "<b>Bold</b>" not in html  # header values are text, never markup
    assert list(table.to_pandas(columns=["Modality"]).Modality.unique()) == ["CT"]
    with pytest.raises(KeyError):
        lake["no_such_table"]


def test_every_cell_is_escaped() -> None:
    from dicomflow.lake.html import cell_text, html_table

    html = html_table(("<h>",), [("<script>alert(1)</script>",), ("x" * 500,)])
    assert "<script>" not in html and "&lt;script&gt;" in html and "&lt;h&gt;" in html
    assert len(cell_text("x" * 500)) == 80 and cell_text(None) == ""


def test_a_pydicom_written_file_reads_back(tmp_path: Path) -> None:
    uid, values = write_series(tmp_path / "s", slices=2, size=4)
    ds = pydicom.dcmread(tmp_path / "s" / "1.dcm")
    assert ds.SeriesInstanceUID == uid
    np.testing.assert_array_equal(ds.pixel_array + INTERCEPT, values[1])
