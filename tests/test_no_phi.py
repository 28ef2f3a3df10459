"""Bad input never puts patient data into messages, warnings or logs."""

from __future__ import annotations

import io
import logging
from pathlib import Path

import pydicom
import pytest
from pydicom.data import get_testdata_file

from dicomflow.api import run_scan, scan_errors
from tests.helpers import flatten_path

NAME = "Zebulon^Quartermaine"
PATIENT_ID = "PID-77123-XQ"
BAD_DATE = "20231345"
BAD_WEIGHT = "abc"


def _phi_file(tmp_path: Path) -> Path:
    ds = pydicom.dcmread(get_testdata_file("CT_small.dcm"))
    ds.PatientName = NAME
    ds.PatientID = PATIENT_ID
    ds.PatientBirthDate = "19990101"
    ds.PatientWeight = "77.7"
    buffer = io.BytesIO()
    ds.save_as(buffer)
    # pydicom refuses to write invalid values, so corrupt them in the bytes (same lengths)
    data = buffer.getvalue().replace(b"19990101", BAD_DATE.encode())
    data = data.replace(b"77.7", f"{BAD_WEIGHT} ".encode())
    path = tmp_path / "phi.dcm"
    path.write_bytes(data)
    return path


def _secrets() -> list[str]:
    return [NAME, "Zebulon", "Quartermaine", PATIENT_ID, BAD_DATE, BAD_WEIGHT]


def test_invalid_values_become_null_with_a_warning_naming_only_the_attribute(
    tmp_path: Path,
) -> None:
    row, error = flatten_path(_phi_file(tmp_path))
    assert error is None and row is not None
    assert row["PatientBirthDate"] is None
    assert row["PatientWeight"] is None
    assert row["PatientName"] == NAME
    assert "PatientBirthDate: invalid DA value" in row["warnings"]
    assert "PatientWeight: invalid DS value" in row["warnings"]
    for secret in _secrets():
        assert secret not in " ".join(row["warnings"])


def test_truncated_phi_file_error_and_logs_carry_no_phi(
    tmp_path: Path, client: object, caplog: pytest.LogCaptureFixture
) -> None:
    full = _phi_file(tmp_path).read_bytes()
    cut_inside_header = full.index(PATIENT_ID.encode()) + 4
    (tmp_path / "cut.dcm").write_bytes(full[:cut_inside_header])
    (tmp_path / "phi.dcm").unlink()
    with caplog.at_level(logging.DEBUG):
        summary = run_scan([str(tmp_path)], client=client, progress=False)
    assert summary.errors == 1
    errors = scan_errors(summary).to_pylist()
    text = str(errors) + caplog.text
    for secret in _secrets():
        assert secret not in text
