"""One input's bad value never fails its neighbours' rows, and never reaches a log.

A Transfer Syntax UID written with the VR OD carries bytes where a UID belongs.
Once, those bytes (which may hold a patient's name) failed the Arrow table of the
whole partition, every input became an ``internal`` error row, and the worker log
printed the bytes once per retry.
"""

from __future__ import annotations

import logging
import shutil
import struct
import subprocess
import sys
from datetime import UTC, date, datetime
from pathlib import Path
from typing import Any

import pyarrow as pa
import pytest
from distributed import Client

from dicomflow.api import read_lake
from dicomflow.dicom.rows import rows_to_table
from dicomflow.pipelines.pipeline import TaskFailed, task
from dicomflow.schemas import instances_schema
from tests.conftest import corpus_manifest

CT = "pydicom__pydicom/test_files/CT_small.dcm"
NEIGHBOURS = ("pydicom__pydicom/test_files/MR_small.dcm", "pydicom__pydicom/test_files/rtdose.dcm")
SECRET = b"SECRET^PATIENT"
OD_VALUE = b"\xff" + SECRET + b"\xfe"  # not UTF-8, 16 bytes: a whole number of OD values
TRANSFER_SYNTAX_UI = b"\x02\x00\x10\x00UI"
GROUP_LENGTH_UL = b"\x02\x00\x00\x00UL"


def with_od_transfer_syntax(data: bytes) -> bytes:
    """``data`` (an explicit VR little endian file meta) with its Transfer Syntax UID
    element written twice as OD holding ``OD_VALUE``: the repeated element makes the
    fast reader hand the file to pydicom, which keeps the last one as bytes."""
    at = data.index(TRANSFER_SYNTAX_UI, 128)
    (length,) = struct.unpack_from("<H", data, at + 6)
    od = b"\x02\x00\x10\x00OD\x00\x00" + struct.pack("<I", len(OD_VALUE)) + OD_VALUE
    out = data[:at] + od + od + data[at + 8 + length :]
    group = out.index(GROUP_LENGTH_UL, 128)
    (meta_length,) = struct.unpack_from("<I", out, group + 8)
    grown = meta_length + 2 * len(od) - (8 + length)
    return out[: group + 8] + struct.pack("<I", grown) + out[group + 12 :]


@pytest.fixture()
def inputs(tmp_path: Path, corpus: Path) -> Path:
    folder = tmp_path / "in"
    folder.mkdir()
    for name in NEIGHBOURS:
        shutil.copyfile(corpus / name, folder / Path(name).name)
    (folder / "od.dcm").write_bytes(with_od_transfer_syntax((corpus / CT).read_bytes()))
    return folder


@pytest.mark.integration
def test_a_bad_transfer_syntax_costs_only_its_own_value(inputs: Path, tmp_path: Path) -> None:
    out = tmp_path / "lake"
    result = subprocess.run(
        [sys.executable, "-m", "dicomflow", "scan", str(inputs), "--out", str(out)],
        capture_output=True,
        timeout=300,
    )
    assert result.returncode == 0, result.stderr[-2000:]
    assert SECRET not in result.stdout + result.stderr
    assert b"\\xffSECRET" not in result.stdout + result.stderr

    lake = read_lake(str(out))
    assert lake.errors().num_rows == 0
    rows = {Path(r["source"]).name: r for r in lake.instances().to_pylist()}
    assert sorted(rows) == sorted(["od.dcm", *(Path(n).name for n in NEIGHBOURS)])
    bad = rows["od.dcm"]
    assert bad["transfer_syntax_uid"] is None
    assert any("TransferSyntaxUID" in w for w in bad["warnings"])
    assert bad["SOPInstanceUID"]  # the rest of the header is read
    manifest = {r["relative_path"]: r for r in corpus_manifest()}
    for name in NEIGHBOURS:
        row = rows[Path(name).name]
        assert row["transfer_syntax_uid"] == manifest[name]["transfer_syntax_uid"]
        assert row["warnings"] == []


def _row(**values: Any) -> dict[str, Any]:
    """A minimal ``instances`` row (the non-nullable provenance) plus ``values``."""
    row: dict[str, Any] = {
        "source": "/in/x.dcm",
        "kind": "instance",
        "schema_version": "1",
        "run_id": "r",
        "scanned_at": datetime(2024, 1, 1, tzinfo=UTC),
        "warnings": ["an earlier warning"],
    }
    return {**row, **values}


# One value that does not fit, for each kind of column type of the schema.
MISFITS = [
    ("transfer_syntax_uid", b"\xff" + SECRET),  # string: bytes that are not UTF-8
    ("PatientName", "A\udcffB"),  # string: a lone surrogate
    ("Rows", "not a number"),  # uint16
    ("Rows", 70000),  # uint16, out of range
    ("InstanceNumber", 2**70),  # int64, out of range
    ("StudyDate", "20240101"),  # date32: text, not a date
    ("ImageType", ["ORIGINAL", 3]),  # list<string>: an item of another type
    ("PixelSpacing", "0.5\\0.5"),  # list<double>: a string, not a list
    ("number_of_frames", object()),  # int64: no Arrow value at all
]


@pytest.mark.parametrize(
    ("column", "value"), MISFITS, ids=[f"{c}-{i}" for i, (c, _) in enumerate(MISFITS)]
)
def test_a_value_that_does_not_fit_becomes_null_with_a_warning(column: str, value: Any) -> None:
    schema = instances_schema()
    assert column in schema.names
    good = _row(StudyDate=date(2024, 1, 2), Rows=512, transfer_syntax_uid="1.2.840.10008.1.2.1")
    bad = _row(**{column: value})
    table = rows_to_table([good, bad, good])
    assert table.schema == schema
    assert table.num_rows == 3
    first, second, third = table.to_pylist()
    assert second[column] is None
    assert second["warnings"][0] == "an earlier warning"
    assert [w for w in second["warnings"] if column in w]  # names the column...
    assert not [w for w in second["warnings"] if "SECRET" in w or "\\x" in w]  # ...no value
    assert first == third
    assert first["warnings"] == ["an earlier warning"]
    assert first["Rows"] == 512 and first["StudyDate"] == date(2024, 1, 2)


def test_a_non_nullable_column_still_fails() -> None:
    """A provenance value is the program's own: a misfit there is a bug, not a file's."""
    with pytest.raises(pa.ArrowInvalid):
        rows_to_table([_row(run_id=b"\xff")])


def _fails_with(value: bytes) -> None:
    raise ValueError(f"could not convert {value!r}")


def test_a_failed_task_leaves_without_its_message(caplog: pytest.LogCaptureFixture) -> None:
    """Dask logs a failed task's exception text, once per attempt: a third-party
    exception leaves a task as its type name only."""
    with (
        Client(processes=False, n_workers=1, threads_per_worker=1, dashboard_address=None) as c,
        caplog.at_level(logging.DEBUG),
    ):
        future = c.compute(task(_fails_with, SECRET, key="dicomflow-test-fails"), retries=1)
        with pytest.raises(TaskFailed) as failed:
            future.result()
    assert failed.value.failed == "ValueError"
    assert SECRET.decode() not in str(failed.value)
    assert failed.value.__cause__ is None
    assert "ValueError" in caplog.text  # the failure is still told...
    assert SECRET.decode() not in caplog.text  # ...without its value
