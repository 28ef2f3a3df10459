"""File names that are not valid UTF-8: read under their real name, shown escaped.

POSIX file names are bytes. Python hands a name that is not valid UTF-8 over with
each undecodable byte as a lone surrogate, which no UTF-8 writer accepts; such a
name once failed the whole run. The oracle for the shown name is the standard
library's own ``backslashreplace`` of the name's bytes.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pyarrow.parquet as pq
import pytest

from dicomflow.api import read_lake

pytestmark = pytest.mark.integration

CT = "pydicom__pydicom/test_files/CT_small.dcm"
BAD = b"bad\xff\xfe.dcm"
BAD_GARBAGE = b"junk\xff.dcm"


def shown(path: bytes) -> str:
    """The name a row shows for ``path``: undecodable bytes as ``\\xNN``."""
    return path.decode("utf-8", "backslashreplace")


def run_cli(*args: str | bytes) -> subprocess.CompletedProcess[bytes]:
    return subprocess.run(
        [sys.executable, "-m", "dicomflow", *args], capture_output=True, timeout=300
    )


@pytest.fixture()
def inputs(tmp_path: Path, corpus: Path) -> bytes:
    """A folder with one valid name and two undecodable ones (one not DICOM at all)."""
    folder = os.fsencode(tmp_path / "in")
    os.mkdir(folder)
    shutil.copyfile(corpus / CT, os.path.join(folder, b"good.dcm"))
    shutil.copyfile(corpus / CT, os.path.join(folder, BAD))
    with open(os.path.join(folder, BAD_GARBAGE), "wb") as fh:
        fh.write(b"not a DICOM file at all" * 20)
    return folder


@pytest.mark.parametrize(
    "command",
    [["scan"], ["ingest", "--pixels"], ["ingest", "--anonymize", "--key-file", "KEY"]],
    ids=["scan", "ingest-pixels", "ingest-anonymize"],
)
def test_undecodable_names_are_read_and_shown_escaped(
    inputs: bytes, tmp_path: Path, command: list[str]
) -> None:
    key = tmp_path / "key"
    key.write_text("k" * 32)
    out = tmp_path / "lake"
    args = [str(key) if a == "KEY" else a for a in command]
    result = run_cli(*args, inputs, "--out", str(out), "--no-progress")
    assert result.returncode == 0, result.stderr.decode(errors="replace")[-2000:]
    assert b"UnicodeEncodeError" not in result.stderr

    lake = read_lake(str(out))
    instances = lake.instances()
    assert instances.num_rows == 2  # the valid file and the undecodable copy of it
    (error,) = lake.errors().to_pylist()  # the file that is not DICOM
    if "--anonymize" in command:  # a de-identified run shows inputs by pseudonym only
        assert error["source"].startswith("deid://")
    else:
        assert error["source"] == shown(os.path.join(inputs, BAD_GARBAGE))
        sources = sorted(instances.column("source").to_pylist())
        assert sources == sorted(
            [shown(os.path.join(inputs, BAD)), shown(os.path.join(inputs, b"good.dcm"))]
        )
    if "--pixels" in command:
        assert all(instances.column("zarr_path").to_pylist())
    for part in out.rglob("*.parquet"):  # every part is valid UTF-8 Parquet
        pq.read_table(part)

    again = run_cli(*args, inputs, "--out", str(out), "--no-progress")
    assert again.returncode == 0
    assert read_lake(str(out)).instances().num_rows == 2  # the rerun duplicated nothing
