"""DCMTK as the second peer: dcmqrscp as a query/retrieve archive (C-FIND, C-GET,
ingest, C-MOVE to our storage SCP), and storescp as the C-MOVE destination of Orthanc."""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from datetime import date
from pathlib import Path

import pydicom
import pytest
from pydicom.uid import generate_uid

import dicomflow
from dicomflow.connectors.dimse import DimseAddress, find_table
from dicomflow.connectors.dimse.get import c_get
from dicomflow.connectors.dimse.move import c_move
from dicomflow.connectors.dimse.scp import storage_scp
from tests.conftest import PYDICOM_TEST_FILES, require
from tests.connectors.test_dimse import UPLOADED
from tests.helpers import quiet
from tests.peers.dcmtk import (
    Dcmqrscp,
    dcmtk_binary,
    running_dcmqrscp,
    running_storescp,
    storescu,
)
from tests.peers.orthanc import free_port, orthanc_binary, running_orthanc

# Uncompressed only: dcmqrscp sends an instance over the first context accepted for its
# SOP class and, without codecs, cannot decompress one stored compressed.
LOADED = ["CT_small.dcm", "MR_small.dcm", "rtplan.dcm", "rtdose.dcm"]
TRAILING_PADDING = 0xFFFCFFFC


@dataclass(frozen=True)
class Archive:
    """dcmqrscp loaded with known files; ``scp_port`` is where it sends C-MOVEs for us."""

    server: Dcmqrscp
    scp_port: int
    originals: dict[str, Path]  # SOP Instance UID -> the file loaded

    @property
    def address(self) -> DimseAddress:
        return DimseAddress.parse(self.server.url)

    def read(self, sop_uid: str) -> pydicom.FileDataset:
        with quiet():
            return pydicom.dcmread(self.originals[sop_uid])

    def studies(self) -> set[str]:
        return {str(self.read(uid).StudyInstanceUID) for uid in self.originals}

    def classes(self) -> list[str]:
        return sorted({str(self.read(uid).SOPClassUID) for uid in self.originals})


def _second_ct(folder: Path) -> Path:
    """Another instance of CT_small's series (new SOP Instance UID), so a study has two."""
    ds = pydicom.dcmread(PYDICOM_TEST_FILES / "CT_small.dcm")
    ds.SOPInstanceUID = ds.file_meta.MediaStorageSOPInstanceUID = generate_uid()
    ds.InstanceNumber = 2
    path = folder / "CT_small_2.dcm"
    ds.save_as(path)
    return path


@pytest.fixture(scope="module")
def archive(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Archive]:
    for tool in ("dcmqrscp", "storescu"):
        require(dcmtk_binary(tool) is not None, f"DCMTK's {tool} (Debian package dcmtk)")
    workdir = tmp_path_factory.mktemp("dcmqrscp")
    files = [PYDICOM_TEST_FILES / name for name in LOADED] + [_second_ct(workdir)]
    scp_port = free_port()
    with running_dcmqrscp(workdir, peers={"DICOMFLOW": scp_port, "LOADER": free_port()}) as qr:
        storescu(qr.port, files, called_aet=qr.aet)
        originals = {
            str(pydicom.dcmread(p, stop_before_pixels=True).SOPInstanceUID): p for p in files
        }
        yield Archive(qr, scp_port, originals)


def _same_instance(received: Path, original: pydicom.FileDataset) -> None:
    with quiet():  # pydicom warns about the invalid UIDs of some of its own test files
        ours = pydicom.dcmread(received)
        assert ours.SOPInstanceUID == original.SOPInstanceUID
        if "PixelData" in original:
            assert ours.PixelData == original.PixelData
        original.pop(TRAILING_PADDING, None)  # DCMTK drops it; it carries nothing
        assert ours == original  # every data element, whatever transfer syntax carried it


def test_study_level_find_matches_what_was_loaded(archive: Archive) -> None:
    table = find_table(archive.address, "study", {})
    assert sorted(table.column("StudyInstanceUID").to_pylist()) == sorted(archive.studies())
    rows = {r["StudyInstanceUID"]: r for r in table.to_pylist()}
    for uid in archive.originals:
        ds = archive.read(uid)
        row = rows[ds.StudyInstanceUID]
        assert row["PatientID"] == ds.PatientID
        stated = ds.get("StudyDate")
        assert row["StudyDate"] == (date.fromisoformat(str(stated)) if stated else None)


def test_image_level_find_matches_what_was_loaded(archive: Archive) -> None:
    table = find_table(archive.address, "image", {})
    assert sorted(table.column("SOPInstanceUID").to_pylist()) == sorted(archive.originals)
    for row in table.to_pylist():
        ds = archive.read(row["SOPInstanceUID"])
        assert row["StudyInstanceUID"] == ds.StudyInstanceUID
        assert row["SeriesInstanceUID"] == ds.SeriesInstanceUID
    ct = archive.read(next(u for u, p in archive.originals.items() if p.name == "CT_small.dcm"))
    study = find_table(archive.address, "image", {"StudyInstanceUID": ct.StudyInstanceUID})
    expected = {
        u for u in archive.originals if archive.read(u).StudyInstanceUID == ct.StudyInstanceUID
    }
    assert set(study.column("SOPInstanceUID").to_pylist()) == expected and len(expected) == 2
    wildcard = find_table(archive.address, "study", {"PatientID": f"{ct.PatientID[:2]}*"})
    assert wildcard.column("StudyInstanceUID").to_pylist() == [ct.StudyInstanceUID]


def test_c_get_brings_every_instance_unchanged(archive: Archive, tmp_path: Path) -> None:
    received: dict[str, Path] = {}
    for study in sorted(archive.studies()):
        result = c_get(
            archive.address,
            "study",
            {"StudyInstanceUID": study},
            tmp_path / "got",
            sop_classes=archive.classes(),
        )
        assert result.status == 0 and result.failed == 0
        received.update(result.received)
    assert set(received) == set(archive.originals)
    for uid, path in received.items():
        _same_instance(path, archive.read(uid))


def test_ingest_from_dcmqrscp(archive: Archive, tmp_path: Path, client: object) -> None:
    """dcmqrscp returns no SOP Class UID from an IMAGE-level C-FIND."""
    out = tmp_path / "lake"
    summary = dicomflow.ingest(
        [archive.server.url],
        out=str(out),
        query={"PatientID": "*"},
        client=client,
        progress=False,
        pixels=True,
    )
    assert summary.errors == 0, summary.error_codes
    sop_uids = dicomflow.read_lake(str(out)).instances(columns=["SOPInstanceUID"]).column(0)
    assert sorted(sop_uids.to_pylist()) == sorted(archive.originals)
    retrieved = {p.stem: p for p in (out / "_retrieved").rglob("*.dcm")}
    assert set(retrieved) == set(archive.originals)
    for uid, path in retrieved.items():
        _same_instance(path, archive.read(uid))


def test_c_move_from_dcmqrscp_to_our_storage_scp(archive: Archive, tmp_path: Path) -> None:
    with storage_scp("DICOMFLOW", archive.scp_port, tmp_path / "moved") as received:
        for study in sorted(archive.studies()):
            result = c_move(archive.address, "study", {"StudyInstanceUID": study}, "DICOMFLOW")
            assert result.status == 0 and result.failed == 0 and result.completed >= 1
    assert set(received.received) == set(archive.originals)
    for uid, path in received.received.items():
        _same_instance(path, archive.read(uid))


def test_orthanc_moves_studies_to_storescp(tmp_path: Path) -> None:
    require(orthanc_binary() is not None, "Orthanc (Debian package orthanc)")
    require(dcmtk_binary("storescp") is not None, "DCMTK's storescp (Debian package dcmtk)")
    originals = {
        str(pydicom.dcmread(PYDICOM_TEST_FILES / n).SOPInstanceUID): PYDICOM_TEST_FILES / n
        for n in UPLOADED
    }
    out = tmp_path / "storescp"
    with (
        running_storescp(out, accept_all=True) as port,
        running_orthanc(tmp_path / "pacs", calling_aets={"STORESCP": port}) as server,
    ):
        assert all(server.upload(p) for p in originals.values())
        address = DimseAddress.parse(server.url)
        studies = {str(pydicom.dcmread(p).StudyInstanceUID) for p in originals.values()}
        moved = 0
        for study in sorted(studies):
            result = c_move(address, "study", {"StudyInstanceUID": study}, "STORESCP")
            assert result.status == 0 and result.failed == 0
            moved += result.completed
    assert moved == len(originals)
    with quiet():
        arrived = {str(pydicom.dcmread(p).SOPInstanceUID): p for p in out.iterdir()}
    assert set(arrived) == set(originals)
    for uid, path in arrived.items():
        _same_instance(path, pydicom.dcmread(originals[uid]))
