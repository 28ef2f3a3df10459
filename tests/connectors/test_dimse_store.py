"""C-STORE SCU against Orthanc and DCMTK's storescp."""

from __future__ import annotations

import shutil
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pydicom
import pytest

from dicomflow.connectors.dimse import DimseAddress
from dicomflow.connectors.dimse.store import c_store
from tests.conftest import PYDICOM_TEST_FILES, require
from tests.peers.dcmtk import running_storescp
from tests.peers.orthanc import free_port, orthanc_binary, running_orthanc

FILES = ["CT_small.dcm", "MR_small_RLE.dcm", "JPEG2000.dcm", "rtplan.dcm", "README.txt"]


def _paths() -> list[Path]:
    return [PYDICOM_TEST_FILES / name for name in FILES]


def test_store_to_orthanc_one_outcome_per_file(tmp_path: Path) -> None:
    require(orthanc_binary() is not None, "Orthanc (Debian package orthanc)")
    with running_orthanc(tmp_path / "pacs") as server:
        outcomes = c_store(DimseAddress.parse(server.url), _paths())
        stored = server.get("/instances")
    by_name = {Path(o.path).name: o for o in outcomes}
    assert all(by_name[n].ok for n in FILES if n != "README.txt")
    assert not by_name["README.txt"].ok and "not sendable" in by_name["README.txt"].message
    assert len(stored) == len(FILES) - 1  # type: ignore[arg-type]


@pytest.fixture
def storescp(tmp_path: Path) -> Iterator[tuple[str, Path]]:
    """DCMTK's storescp accepting only uncompressed syntaxes (so we must transcode)."""
    require(shutil.which("storescp") is not None, "DCMTK's storescp (Debian package dcmtk)")
    out = tmp_path / "received"
    with running_storescp(out) as port:  # returns once it listens
        yield f"dimse://STORESCP@127.0.0.1:{port}", out


def test_store_to_dcmtk_transcodes_what_it_refuses(storescp: tuple[str, Path]) -> None:
    url, out = storescp
    outcomes = c_store(DimseAddress.parse(url), _paths()[:4])
    assert all(o.ok for o in outcomes), [o.message for o in outcomes]
    received = {pydicom.dcmread(p).SOPInstanceUID: p for p in out.iterdir()}
    assert len(received) == 4
    rle = pydicom.dcmread(PYDICOM_TEST_FILES / "MR_small_RLE.dcm")
    ours = pydicom.dcmread(received[rle.SOPInstanceUID])
    assert not ours.file_meta.TransferSyntaxUID.is_compressed  # storescp's default refuses RLE
    assert (ours.pixel_array == rle.pixel_array).all()


def test_cli_send(storescp: tuple[str, Path]) -> None:
    url, out = storescp
    result = subprocess.run(
        [
            sys.executable,
            "-m",
            "dicomflow",
            "send",
            str(PYDICOM_TEST_FILES / "CT_small.dcm"),
            "--to",
            url,
        ],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode == 0, result.stderr
    assert "sent: 1  failed: 0" in result.stdout
    assert len(list(out.iterdir())) == 1


def test_c_move_to_our_own_storage_scp(tmp_path: Path) -> None:
    from dicomflow.connectors.dimse.move import c_move
    from dicomflow.connectors.dimse.scp import storage_scp

    require(orthanc_binary() is not None, "Orthanc (Debian package orthanc)")
    port = free_port()
    with (
        running_orthanc(tmp_path / "pacs", calling_aets={"DICOMFLOW": port}) as server,
        storage_scp("DICOMFLOW", port, tmp_path / "moved") as received,
    ):
        outcomes = c_store(DimseAddress.parse(server.url), _paths()[:4])
        assert all(o.ok for o in outcomes)
        studies = {
            pydicom.dcmread(p, stop_before_pixels=True).StudyInstanceUID for p in _paths()[:4]
        }
        for study in sorted(studies):
            result = c_move(
                DimseAddress.parse(server.url), "study", {"StudyInstanceUID": study}, "DICOMFLOW"
            )
            assert result.failed == 0
    expected = {pydicom.dcmread(p, stop_before_pixels=True).SOPInstanceUID for p in _paths()[:4]}
    assert set(received.received) == expected
    assert all(p.exists() for p in received.received.values())


def test_c_move_to_an_unknown_destination_fails_clearly(tmp_path: Path) -> None:
    from dicomflow.connectors.dimse.association import DimseError
    from dicomflow.connectors.dimse.move import c_move

    require(orthanc_binary() is not None, "Orthanc (Debian package orthanc)")
    with running_orthanc(tmp_path / "pacs") as server:
        c_store(DimseAddress.parse(server.url), _paths()[:1])
        study = pydicom.dcmread(_paths()[0], stop_before_pixels=True).StudyInstanceUID
        with pytest.raises(DimseError, match="C-MOVE"):
            c_move(DimseAddress.parse(server.url), "study", {"StudyInstanceUID": study}, "NOBODY")
