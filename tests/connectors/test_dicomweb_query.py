"""``dicomflow query`` of a DICOMweb server (QIDO-RS) against a real Orthanc: every level,
typed like the DIMSE query of the same Orthanc (the peer oracle), the files themselves
read by pydicom as the other oracle, cohorts, universal matching, and a server that
answers with HTML."""

from __future__ import annotations

import csv
import subprocess
import sys
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pyarrow.parquet as pq
import pydicom
import pytest
from pydicom.uid import generate_uid

import dicomflow
from tests.conftest import PYDICOM_TEST_FILES, require
from tests.helpers import ct_series
from tests.peers.orthanc import Orthanc, orthanc_binary, running_orthanc

SLICES = 4


def _files(root: Path) -> list[Path]:
    """A four-slice CT series, MR_small, rtplan, and a study without a Patient ID."""
    paths = ct_series(root, SLICES)
    for name in ("MR_small.dcm", "rtplan.dcm"):
        paths.append(root / name)
        paths[-1].write_bytes((PYDICOM_TEST_FILES / name).read_bytes())
    anonymous = pydicom.dcmread(PYDICOM_TEST_FILES / "MR_small.dcm")
    anonymous.PatientID = ""
    anonymous.StudyInstanceUID, anonymous.SeriesInstanceUID = generate_uid(), generate_uid()
    anonymous.SOPInstanceUID = anonymous.file_meta.MediaStorageSOPInstanceUID = generate_uid()
    paths.append(root / "no_patient_id.dcm")
    anonymous.save_as(paths[-1], enforce_file_format=True)
    return paths


@pytest.fixture(scope="module")
def files(tmp_path_factory: pytest.TempPathFactory) -> list[Path]:
    return _files(tmp_path_factory.mktemp("qido") / "src")


@pytest.fixture(scope="module")
def orthanc(tmp_path_factory: pytest.TempPathFactory, files: list[Path]) -> Iterator[Orthanc]:
    require(orthanc_binary() is not None, "Orthanc (Debian package orthanc)")
    with running_orthanc(tmp_path_factory.mktemp("orthanc"), dicomweb=True) as server:
        for path in files:
            assert server.upload(path)
        yield server


def _uids(files: list[Path], keyword: str) -> set[str]:
    return {str(pydicom.dcmread(p, stop_before_pixels=True)[keyword].value) for p in files}


def _column(table: object, name: str) -> list[object]:
    return table.column(name).to_pylist()  # type: ignore[attr-defined]


def test_every_level_finds_what_the_files_hold(orthanc: Orthanc, files: list[Path]) -> None:
    studies = dicomflow.query(orthanc.dicomweb, level="study")
    assert set(_column(studies, "StudyInstanceUID")) == _uids(files, "StudyInstanceUID")
    assert set(_column(studies, "kind")) == {"query:study"}
    mr = dicomflow.query(orthanc.dicomweb, level="series", keys={"Modality": "MR"})
    mr_files = [p for p in files if pydicom.dcmread(p).Modality == "MR"]
    assert set(_column(mr, "SeriesInstanceUID")) == _uids(mr_files, "SeriesInstanceUID")
    ct_study = next(iter(_uids(files[:1], "StudyInstanceUID")))
    slices = dicomflow.query(
        orthanc.dicomweb, level="instance", keys={"StudyInstanceUID": ct_study}
    )
    assert set(_column(slices, "SOPInstanceUID")) == _uids(files[:SLICES], "SOPInstanceUID")
    limited = dicomflow.query(orthanc.dicomweb, level="instance", limit=2)
    assert limited.num_rows == 2


def test_a_dicomweb_query_is_typed_like_the_dimse_query_of_the_same_archive(
    orthanc: Orthanc,
) -> None:
    keys = ("StudyInstanceUID", "PatientID", "StudyDate", "AccessionNumber")
    web = dicomflow.query(orthanc.dicomweb, level="study", return_keys=keys[1:])
    dimse = dicomflow.query(orthanc.url, level="study", return_keys=keys[1:])
    for key in keys:
        assert web.schema.field(key).type == dimse.schema.field(key).type, key

    def rows(table: object) -> set[tuple[object, ...]]:
        return set(zip(*(_column(table, k) for k in keys), strict=True))

    assert rows(web) == rows(dimse) and len(rows(web)) == 4


def test_a_lone_star_matches_studies_without_the_attribute(
    orthanc: Orthanc, files: list[Path]
) -> None:
    everything = dicomflow.query(orthanc.dicomweb, level="study", keys={"PatientID": "*"})
    assert set(_column(everything, "StudyInstanceUID")) == _uids(files, "StudyInstanceUID")


def test_the_command_line_writes_parquet_and_takes_a_cohort(
    orthanc: Orthanc, files: list[Path], tmp_path: Path
) -> None:
    out = tmp_path / "series.parquet"
    command = [sys.executable, "-m", "dicomflow", "query", orthanc.dicomweb, "--level", "series"]
    done = subprocess.run(
        [*command, "-q", "Modality=MR", "--out", str(out)],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 0, done.stderr
    assert "matches: 2" in done.stdout and pq.read_table(out).num_rows == 2
    chosen = sorted(_uids([files[0], files[SLICES]], "StudyInstanceUID"))
    cohort = tmp_path / "cohort.csv"
    with cohort.open("w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(["StudyInstanceUID", "note"])
        writer.writerows([uid, "x"] for uid in chosen)
    done = subprocess.run(
        [*command, "--cohort", str(cohort), "--out", str(out)],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 0, done.stderr
    assert sorted(_column(pq.read_table(out), "StudyInstanceUID")) == chosen


class _HtmlPage(BaseHTTPRequestHandler):
    """A web server that is not DICOMweb: a login page, 200 OK, for every request."""

    def do_GET(self) -> None:
        body = b"<html><body>Please log in</body></html>"
        self.send_response(200)
        self.send_header("Content-Type", "text/html")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args: object) -> None:
        pass


def test_a_server_answering_html_is_a_clear_error(tmp_path: Path) -> None:
    server = ThreadingHTTPServer(("127.0.0.1", 0), _HtmlPage)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        url = f"dicomweb+http://127.0.0.1:{server.server_address[1]}/dicom-web"
        out = tmp_path / "t.parquet"
        done = subprocess.run(
            [sys.executable, "-m", "dicomflow", "query", url, "--out", str(out)],
            capture_output=True,
            text=True,
            timeout=120,
        )
    finally:
        server.shutdown()
        server.server_close()
    assert done.returncode == 1, done.stderr
    assert "query failed: QIDO-RS search: the server's answer is not JSON" in done.stderr
    assert "Traceback" not in done.stderr and not out.exists()
