"""Every real file we were given is accounted for, and what we store agrees with pydicom.

Parametrized over pydicom's bundled test files and (in CI) every file of the
shared corpus, with readable ids.
"""

from __future__ import annotations

import base64
from pathlib import Path

import pytest
from pydicom.dataset import Dataset
from pydicom.multival import MultiValue

from dicomflow.errors import ErrorCode
from dicomflow.schemas import column_specs
from tests.conftest import CORPUS, PYDICOM_TEST_FILES, corpus_files, corpus_manifest, pydicom_files
from tests.helpers import flatten_path, pydicom_read, pydicom_typed, quiet, stored_json

CORPUS_FILES = corpus_files()
ALL_FILES = [*pydicom_files(), *CORPUS_FILES]


def _id(path: Path) -> str:
    for root, prefix in ((CORPUS, "corpus"), (PYDICOM_TEST_FILES, "pydicom")):
        if path.is_relative_to(root):
            return f"{prefix}/{path.relative_to(root)}"
    return str(path)


@pytest.fixture(params=ALL_FILES or [None], ids=[_id(p) for p in ALL_FILES] or ["none"])
def dicom_file(request: pytest.FixtureRequest) -> Path:
    path = request.param
    if path is None or path.is_relative_to(CORPUS):
        from tests.conftest import require

        require(CORPUS.exists(), f"the shared corpus at {CORPUS}")
    return path


def test_every_file_is_a_row_or_an_error_row(dicom_file: Path) -> None:
    row, error = flatten_path(dicom_file)
    assert (row is None) != (error is None)
    if error is not None:
        assert error.code in set(ErrorCode)
        assert error.message
        # Messages never echo values: nothing from the file's text may appear.
        assert str(dicom_file.name) not in error.message


def test_typed_columns_equal_pydicom(dicom_file: Path) -> None:
    row, _ = flatten_path(dicom_file)
    ds = pydicom_read(dicom_file)
    if row is None or ds is None:
        pytest.skip("not read by both dicomflow and pydicom")
    mismatches = {}
    for spec in column_specs():
        expected = pydicom_typed(ds, spec)
        if row[spec.keyword] != expected:
            mismatches[spec.keyword] = (row[spec.keyword], expected)
    assert not mismatches


def _rebuild(key: str, stored_element: dict) -> object:
    """pydicom's value for one stored element, or the stored strings if pydicom rejects them."""
    if "InlineBinary" in stored_element and stored_element["vr"] in ("DS", "IS"):
        # a non-conformant number (an IS of "1A") is kept as its bytes: compare the text
        text = base64.b64decode(stored_element["InlineBinary"]).decode("latin-1")
        values = [v.strip(" \x00") for v in text.split("\\")]
        return values[0] if len(values) == 1 else values
    with quiet():
        try:
            rebuilt = Dataset.from_json({key: stored_element}, bulk_data_uri_handler=lambda *_: b"")
            return rebuilt[int(key, 16)].value
        except ValueError:
            # pydicom cannot load a non-conformant number (an IS of "1A") from JSON; we
            # keep the original string, which must then equal what the file holds.
            return stored_element.get("Value")


def _comparable(ds: Dataset, stored: dict, path: str = "") -> list[str]:
    """Element-by-element differences between ``ds`` and ``Dataset.from_json(stored)``."""
    problems = []
    with quiet():
        elements = list(ds)
    for elem in elements:
        key = f"{elem.tag:08X}"
        where = f"{path}{key}"
        if key not in stored:
            problems.append(f"{where} missing")
            continue
        if "BulkDataURI" in stored[key]:
            continue
        if elem.VR == "SQ":
            items = stored[key].get("Value", [])
            if len(elem.value) != len(items):
                problems.append(f"{where} item count")
                continue
            for i, item in enumerate(elem.value):
                problems += _comparable(item, items[i], f"{where}/{i}/")
            continue
        with quiet():
            original = elem.value
        other = _rebuild(key, stored[key])
        if isinstance(other, list) and not isinstance(original, list | MultiValue):
            other = other[0] if len(other) == 1 else other
        if original != other and not (not original and not other):
            problems.append(f"{where} {elem.VR} differs")
    return problems


def test_stored_header_round_trips_through_from_json(dicom_file: Path) -> None:
    row, _ = flatten_path(dicom_file)
    ds = pydicom_read(dicom_file)
    if row is None or ds is None:
        pytest.skip("not read by both dicomflow and pydicom")
    assert _comparable(ds, stored_json(row)) == []


def _charset_files() -> list[Path]:
    rows = corpus_manifest()
    wanted = ("ISO 2022", "GB18030", "ISO_IR 144", "ISO_IR 127", "ISO_IR 192", "ISO 2022 IR 149")
    return [CORPUS / r["relative_path"] for r in rows if any(w in r["notes"] for w in wanted)]


CHARSET_FILES = _charset_files()


@pytest.mark.integration
@pytest.mark.parametrize(
    "path", CHARSET_FILES or [None], ids=[_id(p) for p in CHARSET_FILES] or ["none"]
)
def test_character_sets_decode_like_pydicom(path: Path | None) -> None:
    from tests.conftest import require

    require(path is not None and path.exists(), "the shared corpus character-set samples")
    assert path is not None
    row, error = flatten_path(path)
    assert error is None
    ds = pydicom_read(path)
    assert ds is not None
    stored = stored_json(row)
    checked = 0
    for elem in ds:
        if elem.VR not in ("PN", "LO", "SH", "ST", "LT", "UT", "UC") or not elem.value:
            continue
        value = stored[f"{elem.tag:08X}"]["Value"]
        if elem.VR == "PN":
            names = elem.value if elem.VM > 1 else [elem.value]
            for name, ours in zip(names, value, strict=True):
                for group in ("alphabetic", "ideographic", "phonetic"):
                    assert (ours or {}).get(group.capitalize(), "") == getattr(name, group)
        else:
            expected = list(elem.value) if elem.VM > 1 else [elem.value]
            assert value == expected
        checked += 1
    assert checked > 0
