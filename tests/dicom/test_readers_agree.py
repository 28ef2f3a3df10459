"""The fast reader and the pydicom-backed reader must agree on every file the fast one takes."""

from __future__ import annotations

from pathlib import Path

import pytest

from dicomflow.dicom.dicomjson import EncodeContext, encode_elements
from dicomflow.dicom.fastread import FastPathUnsupported
from dicomflow.dicom.header import _from_fast, read_fast, read_header_with_pydicom
from dicomflow.errors import DicomReadError
from dicomflow.records import Header
from dicomflow.schemas import column_specs
from tests.conftest import CORPUS, PYDICOM_TEST_FILES, corpus_files, pydicom_files

FILES = [*pydicom_files(), *corpus_files()]
CAPTURE = frozenset(spec.tag for spec in column_specs())


def _id(path: Path) -> str:
    for root, prefix in ((CORPUS, "corpus"), (PYDICOM_TEST_FILES, "pydicom")):
        if path.is_relative_to(root):
            return f"{prefix}/{path.relative_to(root)}"
    return str(path)


def _fast(path: Path) -> Header | None:
    with path.open("rb") as fp:
        try:
            return _from_fast(read_fast(fp, path.stat().st_size))
        except FastPathUnsupported:
            return None


def _careful(path: Path) -> Header:
    with path.open("rb") as fp:
        return read_header_with_pydicom(fp, size=path.stat().st_size)


def _encoded(header: Header) -> tuple[dict, dict, dict]:
    ctx = EncodeContext(source="file:///x", capture_tags=CAPTURE)
    body = encode_elements(header.elements, ctx)
    meta = encode_elements(header.file_meta, EncodeContext(source="file:///x"))
    return body, meta, {tag: c.components for tag, c in ctx.captured.items()}


@pytest.mark.parametrize("path", FILES, ids=[_id(p) for p in FILES])
def test_fast_reader_matches_pydicom_reader(path: Path) -> None:
    fast = _fast(path)
    if fast is None:
        pytest.skip("outside the fast reader's envelope; the pydicom reader handles it")
    try:
        careful = _careful(path)
    except DicomReadError as exc:
        pytest.fail(f"fast reader accepted a file the careful reader rejects: {exc.code}")
    assert _encoded(fast) == _encoded(careful)
    for field in (
        "transfer_syntax_uid",
        "pixel_data_tag",
        "pixel_data_offset",
        "pixel_data_length",
        "is_implicit_vr",
    ):
        assert getattr(fast, field) == getattr(careful, field), field


def test_fast_reader_covers_most_real_files() -> None:
    dicom = [
        p for p in FILES if p.suffix not in (".json", ".txt", ".md", ".tsv", ".gz", ".icc", ".dump")
    ]
    taken = sum(_fast(p) is not None for p in dicom)
    assert taken / len(dicom) > 0.6, f"fast reader took only {taken} of {len(dicom)} files"
