"""Reading headers: content sniffing, bad input of every kind, and reading only what is needed."""

from __future__ import annotations

import io
import struct
from pathlib import Path

import pydicom
import pytest
from pydicom.data import get_testdata_file

from dicomflow.dicom.header import read_header, read_header_with_pydicom
from dicomflow.errors import ErrorCode, MalformedDicomError, NotDicomError
from tests.helpers import flatten_path

CT_SMALL = Path(get_testdata_file("CT_small.dcm"))
JPEG2K = Path(get_testdata_file("examples_jpeg2k.dcm"))


class CountingReader(io.BytesIO):
    """A file object that counts the bytes handed out, like a remote file would."""

    def __init__(self, data: bytes) -> None:
        super().__init__(data)
        self.bytes_read = 0

    def read(self, n: int | None = -1) -> bytes:
        chunk = super().read(n)
        self.bytes_read += len(chunk)
        return chunk


def _read(data: bytes):  # type: ignore[no-untyped-def]
    return read_header(io.BytesIO(data), size=len(data))


def test_dicom_is_recognised_by_content_not_extension(tmp_path: Path) -> None:
    renamed = tmp_path / "no_extension_at_all"
    renamed.write_bytes(CT_SMALL.read_bytes())
    row, error = flatten_path(renamed)
    assert error is None and row is not None
    assert row["Modality"] == "CT"


@pytest.mark.parametrize(
    ("content", "code"),
    [
        (b"", ErrorCode.EMPTY_FILE),
        (b"hello, this is a text file\n" * 20, ErrorCode.NOT_DICOM),
        (bytes(range(256)) * 4, ErrorCode.NOT_DICOM),
        (b"%PDF-1.4\n" + b"\x00" * 300, ErrorCode.NOT_DICOM),
        (b"\x00" * 128 + b"DICN" + b"\x00" * 64, ErrorCode.NOT_DICOM),
    ],
    ids=["empty", "text", "random-bytes", "pdf", "bad-magic"],
)
def test_non_dicom_content_is_rejected_with_a_code(content: bytes, code: ErrorCode) -> None:
    with pytest.raises(NotDicomError) as info:
        _read(content)
    assert info.value.code == code


def test_every_truncation_of_a_file_is_an_error_or_a_row_never_a_crash() -> None:
    data = CT_SMALL.read_bytes()
    pixel_start = _read(data).pixel_data_offset
    assert pixel_start is not None
    outcomes = set()
    for cut in range(132, len(data), 97):
        try:
            header = _read(data[:cut])
        except MalformedDicomError as exc:
            outcomes.add(exc.code)
            continue
        # A cut before Pixel Data may leave a shorter but well-formed header; never after.
        assert cut < pixel_start, "a file cut after Pixel Data starts must not pass as complete"
        assert header.pixel_data_tag is None
    assert ErrorCode.TRUNCATED in outcomes


@pytest.mark.parametrize(
    "cut", [100, 1000, 30000], ids=["in-trailing", "in-pixels", "early-pixels"]
)
def test_a_file_cut_after_its_header_is_truncated(cut: int) -> None:
    data = CT_SMALL.read_bytes()  # 32768 bytes of Pixel Data, then 138 bytes of elements
    with pytest.raises(MalformedDicomError) as info:
        _read(data[:-cut])
    assert info.value.code == ErrorCode.TRUNCATED


def _nested_sequences(depth: int) -> bytes:
    """An explicit VR LE file with one sequence nested ``depth`` levels deep (undefined lengths)."""
    meta = pydicom.dataset.FileMetaDataset()
    meta.TransferSyntaxUID = pydicom.uid.ExplicitVRLittleEndian
    meta.MediaStorageSOPClassUID = "1.2.840.10008.5.1.4.1.1.7"
    meta.MediaStorageSOPInstanceUID = "1.2.3.4"
    ds = pydicom.Dataset()
    ds.file_meta = meta
    ds.SOPInstanceUID = "1.2.3.4"
    buffer = io.BytesIO()
    ds.save_as(buffer, enforce_file_format=True)
    sq_open = struct.pack("<HH2sHL", 0x0040, 0xA730, b"SQ", 0, 0xFFFFFFFF)
    item_open = struct.pack("<HHL", 0xFFFE, 0xE000, 0xFFFFFFFF)
    item_close = struct.pack("<HHL", 0xFFFE, 0xE00D, 0)
    sq_close = struct.pack("<HHL", 0xFFFE, 0xE0DD, 0)
    body = (sq_open + item_open) * depth + (item_close + sq_close) * depth
    return buffer.getvalue() + body


def test_hostile_nesting_becomes_too_deep_without_crashing() -> None:
    with pytest.raises(MalformedDicomError) as info:
        _read(_nested_sequences(5000))
    assert info.value.code == ErrorCode.TOO_DEEP


def test_hostile_nesting_through_the_operator_is_an_error_row(tmp_path: Path) -> None:
    path = tmp_path / "deep.dcm"
    path.write_bytes(_nested_sequences(5000))
    row, error = flatten_path(path)
    assert row is None and error is not None
    assert error.code == ErrorCode.TOO_DEEP


def test_reasonable_nesting_is_read_in_full(tmp_path: Path) -> None:
    path = tmp_path / "nested.dcm"
    path.write_bytes(_nested_sequences(20))
    row, error = flatten_path(path)
    assert error is None and row is not None
    assert '"0040A730"' in row["dicom_json"]


def _big_ct() -> bytes:
    ds = pydicom.dcmread(CT_SMALL)
    ds.Rows = ds.Columns = 512
    ds.PixelData = bytes(512 * 512 * 2)
    buffer = io.BytesIO()
    ds.save_as(buffer)
    return buffer.getvalue()


@pytest.mark.parametrize("reader", ["fast", "pydicom"])
def test_only_header_bytes_are_read_before_pixel_data(reader: str) -> None:
    data = _big_ct()
    counting = CountingReader(data)
    if reader == "fast":
        header = read_header(counting, size=len(data))
    else:
        header = read_header_with_pydicom(counting, size=len(data))
    assert header.pixel_data_tag == 0x7FE00010
    assert header.pixel_data_length == 512 * 512 * 2
    assert header.pixel_data_offset is not None
    assert data[header.pixel_data_offset - 12 : header.pixel_data_offset - 8] == b"\xe0\x7f\x10\x00"
    assert counting.bytes_read < 64 * 1024 < len(data) // 8


def test_encapsulated_fragments_are_skipped_not_read() -> None:
    data = JPEG2K.read_bytes()
    reader = CountingReader(data)
    header = read_header(reader, size=len(data))
    assert header.pixel_data_length is None  # encapsulated: undefined length
    assert reader.bytes_read < len(data) // 4


def test_elements_after_pixel_data_are_kept(tmp_path: Path) -> None:
    trailing = struct.pack("<HH2sH", 0xFFFC, 0xFFFC, b"OB", 0) + struct.pack("<L", 4) + b"\0" * 4
    path = tmp_path / "padded.dcm"
    path.write_bytes(CT_SMALL.read_bytes() + trailing)
    row, error = flatten_path(path)
    assert error is None and row is not None
    assert '"FFFCFFFC"' in row["dicom_json"]
    assert row["warnings"] == []
