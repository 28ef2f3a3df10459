"""A file damaged in or after its Pixel Data keeps its header: ``scan`` writes its row, with
the damage named in ``warnings``, and the row's values are what pydicom reads before
Pixel Data (``dcmread(path, stop_before_pixels=True)``)."""

from __future__ import annotations

import io
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pydicom
import pytest

from dicomflow.dicom.header import DamagedHeader, read_header
from dicomflow.errors import ErrorCode, MalformedDicomError
from tests.conftest import PYDICOM_TEST_FILES
from tests.helpers import flatten_path, quiet

SEQUENCE_DELIMITER = b"\xfe\xff\xdd\xe0\x00\x00\x00\x00"  # (FFFE,E0DD), length 0: PS3.5 A.4


def _pixel_value(path: Path) -> tuple[int, int]:
    """Where pydicom says the Pixel Data value starts, and its length as stored."""
    with quiet():
        ds = pydicom.dcmread(path, defer_size=1)
    raw = ds.get_item("PixelData", keep_deferred=True)
    return raw.value_tell, raw.length


def _cut_in_pixels(name: str) -> bytes:
    """The file cut in the middle of its (native, defined length) Pixel Data value."""
    path = PYDICOM_TEST_FILES / name
    start, length = _pixel_value(path)
    return path.read_bytes()[: start + length // 2]


def _cut_in_trailing(name: str) -> bytes:
    """The file cut inside the elements stored after its Pixel Data."""
    path = PYDICOM_TEST_FILES / name
    start, length = _pixel_value(path)
    data = path.read_bytes()
    assert len(data) > start + length + 8, "the file has elements after Pixel Data"
    return data[: start + length + (len(data) - start - length) // 2]


def _no_delimiter(name: str) -> bytes:
    """Encapsulated Pixel Data without its sequence delimiter (the file's last 8 bytes)."""
    data = (PYDICOM_TEST_FILES / name).read_bytes()
    assert data.endswith(SEQUENCE_DELIMITER), "Pixel Data is the file's last element"
    return data[: -len(SEQUENCE_DELIMITER)]


def _cut_in_fragment(name: str) -> bytes:
    """Encapsulated Pixel Data cut in the middle of its fragments."""
    path = PYDICOM_TEST_FILES / name
    start, _ = _pixel_value(path)
    data = path.read_bytes()
    return data[: start + (len(data) - start) // 2]


DAMAGED: dict[str, tuple[Callable[[str], bytes], str, str]] = {
    "explicit-le-cut-in-pixels.dcm": (_cut_in_pixels, "CT_small.dcm", "pixel data truncated"),
    "implicit-le-cut-in-pixels.dcm": (
        _cut_in_pixels,
        "MR_small_implicit.dcm",
        "pixel data truncated",
    ),
    "big-endian-cut-in-pixels.dcm": (
        _cut_in_pixels,
        "MR_small_bigendian.dcm",
        "pixel data truncated",
    ),
    "cut-after-pixels.dcm": (
        _cut_in_trailing,
        "CT_small.dcm",
        "elements after pixel data truncated",
    ),
    "j2k-no-delimiter.dcm": (_no_delimiter, "JPEG2000.dcm", "pixel data truncated"),
    "j2k-cut-in-fragment.dcm": (_cut_in_fragment, "JPEG2000.dcm", "pixel data truncated"),
}


@pytest.fixture(scope="module")
def damaged(tmp_path_factory: pytest.TempPathFactory) -> Path:
    folder = tmp_path_factory.mktemp("damaged")
    for name, (damage, original, _) in DAMAGED.items():
        (folder / name).write_bytes(damage(original))
    return folder


def _stop_before_pixels(path: Path) -> pydicom.Dataset:
    with quiet():
        return pydicom.dcmread(path, stop_before_pixels=True)


def _run_cli(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "dicomflow", *args], capture_output=True, text=True, timeout=300
    )


@pytest.fixture(scope="module")
def scanned(damaged: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    lake = tmp_path_factory.mktemp("lake")
    result = _run_cli("scan", str(damaged), "--out", str(lake), "--workers", "1")
    assert result.returncode == 0, result.stderr
    return lake


def _rows(lake: Path) -> dict[str, dict]:
    table = pa.concat_tables(
        pq.read_table(p) for p in sorted((lake / "instances").glob("*.parquet"))
    )
    return {Path(row["source"]).name: row for row in table.to_pylist()}


@pytest.mark.parametrize("name", list(DAMAGED))
def test_cli_scan_keeps_the_row_of_a_file_damaged_at_pixel_data(
    damaged: Path, scanned: Path, name: str
) -> None:
    rows = _rows(scanned)
    assert name in rows, f"{name} lost its row"
    row = rows[name]
    expected = _stop_before_pixels(damaged / name)
    assert row["SOPInstanceUID"] == expected.SOPInstanceUID
    assert row["Rows"] == expected.Rows and row["Columns"] == expected.Columns
    assert row["Modality"] == expected.Modality
    assert row["has_pixel_data"] is True
    assert DAMAGED[name][2] in row["warnings"]


def test_cli_scan_writes_no_error_row_for_them(scanned: Path) -> None:
    errors = list((scanned / "errors").glob("*.parquet"))
    sources = [s for p in errors for s in pq.read_table(p).column("source").to_pylist()]
    assert sources == []
    assert len(_rows(scanned)) == len(DAMAGED)


def test_every_cut_after_pixel_data_starts_keeps_the_header(tmp_path: Path) -> None:
    source = PYDICOM_TEST_FILES / "CT_small.dcm"
    data = source.read_bytes()
    start, _ = _pixel_value(source)
    path = tmp_path / "cut.dcm"
    for cut in range(start, len(data), 211):
        path.write_bytes(data[:cut])
        row, error = flatten_path(path)
        assert error is None and row is not None, cut
        assert row["SOPInstanceUID"] == _stop_before_pixels(path).SOPInstanceUID
        assert "pixel data truncated" in row["warnings"], cut


@pytest.mark.parametrize("name", list(DAMAGED))
def test_salvaged_header_has_the_elements_pydicom_reads_before_pixel_data(
    damaged: Path, name: str
) -> None:
    path = damaged / name
    data = path.read_bytes()
    header = read_header(io.BytesIO(data), size=len(data), salvage=True)
    assert isinstance(header, DamagedHeader)
    assert header.damage == DAMAGED[name][2]
    expected = _stop_before_pixels(path)
    # Everything before Pixel Data, nothing after it (lost with the damage).
    assert [e.tag for e in header.elements] == [int(elem.tag) for elem in expected]
    original = PYDICOM_TEST_FILES / DAMAGED[name][1]
    assert (header.pixel_data_offset, header.pixel_data_length or 0xFFFFFFFF) == _pixel_value(
        original
    )


@pytest.mark.parametrize("name", list(DAMAGED))
def test_without_salvage_the_damage_is_still_an_error(damaged: Path, name: str) -> None:
    """The de-identifier reads strictly: it must never rewrite a damaged file."""
    data = (damaged / name).read_bytes()
    with pytest.raises(MalformedDicomError) as info:
        read_header(io.BytesIO(data), size=len(data))
    assert info.value.code == ErrorCode.TRUNCATED


def _pydicom_decodes(path: Path) -> bool:
    with quiet():
        try:
            _ = pydicom.dcmread(path).pixel_array
        except Exception:
            return False
    return True


@pytest.fixture(scope="module")
def ingested(damaged: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    lake = tmp_path_factory.mktemp("pixels-lake")
    result = _run_cli("ingest", str(damaged), "--out", str(lake), "--pixels", "--workers", "1")
    assert result.returncode == 0, result.stderr
    return lake


def _errors(lake: Path) -> list[dict]:
    parts = sorted((lake / "errors").glob("*.parquet"))
    return [row for p in parts for row in pq.read_table(p).to_pylist()]


@pytest.mark.parametrize("name", list(DAMAGED))
def test_ingest_pixels_keeps_the_row_when_the_image_cannot_be_decoded(
    damaged: Path, ingested: Path, name: str
) -> None:
    """The pixel stage's fault costs only its own outputs: the ``instances`` row stays
    (the fault named in ``warnings``) and the stage writes its own error row."""
    row = _rows(ingested).get(name)
    assert row is not None, f"{name} lost its row"
    assert row["SOPInstanceUID"] == _stop_before_pixels(damaged / name).SOPInstanceUID
    own_errors = [e for e in _errors(ingested) if Path(e["source"]).name == name]
    if _pydicom_decodes(damaged / name):
        assert row["zarr_path"] is not None and own_errors == []
    else:
        assert row["zarr_path"] is None
        assert [e["stage"] for e in own_errors] == ["write_pixels"]
        assert f"write_pixels: {own_errors[0]['code']}" in row["warnings"]
