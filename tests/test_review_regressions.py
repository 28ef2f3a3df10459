"""Inputs that once went missing or were misread: each must now be a row or an error row."""

from __future__ import annotations

import io
import json
import struct
from pathlib import Path

import fsspec
import pytest

from dicomflow.connectors.files import FilesConnector
from dicomflow.dicom.dicomjson import EncodeContext, encode_json
from dicomflow.dicom.header import read_header
from dicomflow.urls import redact_url
from tests.helpers import flatten_path


def _element(tag: int, vr: str, value: bytes) -> bytes:
    group, number = tag >> 16, tag & 0xFFFF
    if vr in ("OB", "OW", "SQ", "UN", "UT", "SV", "UV"):
        return struct.pack("<HH2sHL", group, number, vr.encode(), 0, len(value)) + value
    return struct.pack("<HH2sH", group, number, vr.encode(), len(value)) + value


def _file(*elements: bytes, syntax: bytes = b"1.2.840.10008.1.2.1\0") -> bytes:
    body = (
        _element(0x00020002, "UI", b"1.2.840.10008.5.1.4.1.1.7\0")
        + _element(0x00020003, "UI", b"1.2.3.4\0")
        + _element(0x00020010, "UI", syntax)
    )
    group_length = _element(0x00020000, "UL", struct.pack("<L", len(body)))
    return b"\0" * 128 + b"DICM" + group_length + body + b"".join(elements)


def _keys_once(text: str) -> list[str]:
    keys: list[str] = []
    json.loads(text, object_pairs_hook=lambda pairs: keys.extend(k for k, _ in pairs) or {})
    return keys


def test_repeated_tags_give_unique_json_keys() -> None:
    data = _file(_element(0x00080060, "CS", b"CT"), _element(0x00080060, "CS", b"MR"))
    header = read_header(io.BytesIO(data), size=len(data))
    text = encode_json(header.elements, EncodeContext("file:///x"))
    keys = [k for k in _keys_once(text) if k != "vr" and k != "Value"]
    assert keys.count("00080060") == 1
    assert json.loads(text)["00080060"]["Value"] == ["MR"]  # pydicom keeps the last


def test_sv_uses_a_four_byte_length() -> None:
    value = struct.pack("<q", -5)
    data = _file(_element(0x0008040C, "SV", value))
    header = read_header(io.BytesIO(data), size=len(data))
    text = encode_json(header.elements, EncodeContext("file:///x"))
    assert json.loads(text) == {"0008040C": {"vr": "SV", "Value": [-5]}}


def test_corrupt_deflate_is_one_error_row_not_a_lost_partition(tmp_path: Path) -> None:
    bad = tmp_path / "bad.dcm"
    bad.write_bytes(_file(syntax=b"1.2.840.10008.1.2.1.99\0") + b"\xff\xff garbage" * 8)
    row, error = flatten_path(bad)
    assert row is None and error is not None and error.code == "malformed"


def test_keys_with_hash_and_question_marks_are_distinct_inputs() -> None:
    fs = fsspec.filesystem("memory")
    data = _file(_element(0x00080060, "CS", b"CT"))
    names = ["a#1.dcm", "a#2.dcm", "b?x.dcm", "c.dcm"]
    for name in names:
        fs.pipe_file(f"/review/{name}", data)
    try:
        connector = FilesConnector(("memory:///review/",))
        refs = connector.query().refs
        assert len(refs) == len(names)
        records = list(connector.fetch(refs))
        assert all(r.error is None for r in records), [r.error for r in records]
    finally:
        fs.rm("/review", recursive=True)


def test_literal_file_names_with_glob_characters(tmp_path: Path) -> None:
    path = tmp_path / "scan[1].dcm"
    path.write_bytes(_file(_element(0x00080060, "CS", b"CT")))
    refs = FilesConnector((str(path),)).query().refs
    assert [r.url for r in refs] == [str(path)]


def test_a_pattern_matching_nothing_is_reported(tmp_path: Path) -> None:
    listing = FilesConnector((str(tmp_path / "*.nothing"),)).query()
    assert listing.refs == [] and len(listing.failures) == 1


@pytest.mark.parametrize(
    ("url", "shown"),
    [
        ("https://user:pw@host/x.dcm?sig=1", "https://host/x.dcm"),
        ("s3://bucket/a#1.dcm", "s3://bucket/a#1.dcm"),
        ("dimse://PACS@host:104", "dimse://PACS@host:104"),
        ("/local/path.dcm", "/local/path.dcm"),
    ],
)
def test_display_urls_drop_only_secrets(url: str, shown: str) -> None:
    assert redact_url(url) == shown
