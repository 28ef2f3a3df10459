"""Queries as users mean them, against Orthanc: a lone ``*`` is universal matching
(PS3.4 C.2.2.2.4), so studies without a Patient ID match ``PatientID=*``; and
``--query-level`` chooses where the C-FIND is made, for ``query`` and for ingest."""

from __future__ import annotations

import subprocess
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pyarrow.parquet as pq
import pydicom
import pytest
from pydicom.uid import generate_uid

import dicomflow
from dicomflow.connectors.dimse import DimseAddress, find_table
from dicomflow.connectors.dimse.find import query_dataset
from dicomflow.connectors.peers import DimsePeer
from tests.conftest import PYDICOM_TEST_FILES, require
from tests.helpers import quiet
from tests.peers.orthanc import Orthanc, orthanc_binary, running_orthanc

# (source file, PatientID: None removes the element, "" leaves it empty, instances)
STUDIES = {
    "with-id-ct": ("CT_small.dcm", "PAT1", 2),
    "with-id-mr": ("MR_small.dcm", "PAT2", 1),
    "no-id-ct": ("CT_small.dcm", None, 2),
    "empty-id-mr": ("MR_small.dcm", "", 1),
}


@dataclass(frozen=True)
class Archive:
    server: Orthanc
    instances: dict[str, set[str]]  # study name -> SOP Instance UIDs
    study_uids: dict[str, str]  # study name -> Study Instance UID

    @property
    def address(self) -> DimseAddress:
        return DimseAddress.parse(self.server.url)

    def uids(self, *names: str) -> list[str]:
        return sorted(set().union(*(self.instances[n] for n in names)))


def _study(folder: Path, name: str) -> tuple[str, list[Path]]:
    source, patient_id, count = STUDIES[name]
    with quiet():
        ds = pydicom.dcmread(PYDICOM_TEST_FILES / source)
    ds.StudyInstanceUID, ds.SeriesInstanceUID = generate_uid(), generate_uid()
    ds.PatientName = f"DOE^{name.upper()}"
    if patient_id is None:
        del ds.PatientID
    else:
        ds.PatientID = patient_id
    paths = []
    for number in range(count):
        ds.SOPInstanceUID = ds.file_meta.MediaStorageSOPInstanceUID = generate_uid()
        path = folder / f"{name}-{number}.dcm"
        ds.save_as(path)
        paths.append(path)
    return str(ds.StudyInstanceUID), paths


@pytest.fixture(scope="module")
def archive(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Archive]:
    require(orthanc_binary() is not None, "Orthanc (Debian package orthanc)")
    workdir = tmp_path_factory.mktemp("orthanc-universal")
    with running_orthanc(workdir / "pacs") as server:
        instances, studies = {}, {}
        for name in STUDIES:
            studies[name], paths = _study(workdir, name)
            assert all(server.upload(p) for p in paths)
            with quiet():
                instances[name] = {str(pydicom.dcmread(p).SOPInstanceUID) for p in paths}
        yield Archive(server, instances, studies)


def test_a_lone_star_is_sent_as_universal_matching() -> None:
    assert query_dataset("study", {"PatientID": "*"}).PatientID == ""
    assert query_dataset("study", {"PatientID": "PAT*"}).PatientID == "PAT*"
    nested = query_dataset("study", {"ProcedureCodeSequence.CodeValue": "*"})
    assert nested.ProcedureCodeSequence[0].CodeValue == ""


def test_patient_id_star_matches_studies_without_a_patient_id(archive: Archive) -> None:
    table = find_table(archive.address, "study", {"PatientID": "*"})
    assert sorted(table.column("StudyInstanceUID").to_pylist()) == sorted(
        archive.study_uids.values()
    )
    some = find_table(archive.address, "study", {"PatientID": "PAT*"})
    assert sorted(some.column("StudyInstanceUID").to_pylist()) == sorted(
        archive.study_uids[n] for n in ("with-id-ct", "with-id-mr")
    )


def test_ingest_with_patient_id_star_brings_every_instance(
    archive: Archive, tmp_path: Path, client: object
) -> None:
    out = tmp_path / "lake"
    summary = dicomflow.ingest(
        [archive.server.url], out=str(out), query={"PatientID": "*"}, client=client, progress=False
    )
    assert summary.errors == 0, summary.error_codes
    table = dicomflow.read_lake(str(out)).instances(columns=["SOPInstanceUID"])
    assert sorted(table.column(0).to_pylist()) == archive.uids(*STUDIES)


@pytest.mark.parametrize(
    ("level", "query", "expected"),
    [
        ("image", {"PatientID": "*"}, tuple(STUDIES)),
        ("study", {"PatientID": "*"}, tuple(STUDIES)),
        ("study", {"PatientID": "PAT1"}, ("with-id-ct",)),
        ("study", {"PatientName": "DOE^NO-ID*"}, ("no-id-ct",)),
        ("series", {"Modality": "MR"}, ("with-id-mr", "empty-id-mr")),
        ("patient", {"PatientID": "PAT2"}, ("with-id-mr",)),
        ("patient", {"PatientName": "DOE^WITH*"}, ("with-id-ct", "with-id-mr")),
    ],
    ids=lambda v: v if isinstance(v, str) else None,
)
def test_the_ingest_plan_queries_at_the_level_asked(
    archive: Archive, level: str, query: dict[str, str], expected: tuple[str, ...]
) -> None:
    peer = DimsePeer(archive.address, query_level=level)  # type: ignore[arg-type]
    planned = sorted(uid for r in peer.plan(query) for uid in r.instances)
    assert planned == archive.uids(*expected)


def test_ingest_and_query_take_query_level(archive: Archive, tmp_path: Path) -> None:
    out = tmp_path / "lake"
    ran = subprocess.run(
        [
            sys.executable,
            "-m",
            "dicomflow",
            "ingest",
            archive.server.url,
            "-q",
            "Modality=MR",
            "--query-level",
            "series",
            "--out",
            str(out),
            "--workers",
            "1",
        ],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert ran.returncode == 0, ran.stderr[-2000:]
    table = dicomflow.read_lake(str(out)).instances(columns=["SOPInstanceUID"])
    assert sorted(table.column(0).to_pylist()) == archive.uids("with-id-mr", "empty-id-mr")
    found = tmp_path / "series.parquet"
    ran = subprocess.run(
        [
            sys.executable,
            "-m",
            "dicomflow",
            "query",
            archive.server.url,
            "--query-level",
            "patient",
            "-q",
            "PatientID=*",
            "--out",
            str(found),
        ],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert ran.returncode == 0, ran.stderr[-2000:]
    patients = pq.read_table(found).column("PatientID").to_pylist()
    assert {"PAT1", "PAT2"} <= set(patients)
