"""Storage Commitment (N-ACTION, then N-EVENT-REPORT on a new association) with Orthanc."""

from __future__ import annotations

from pathlib import Path

import pydicom

from dicomflow.connectors.dimse import DimseAddress
from dicomflow.connectors.dimse.commitment import request_commitment
from dicomflow.connectors.dimse.store import c_store
from tests.conftest import PYDICOM_TEST_FILES, require
from tests.peers.orthanc import free_port, orthanc_binary, running_orthanc


def test_commitment_reports_every_instance(tmp_path: Path) -> None:
    require(orthanc_binary() is not None, "Orthanc (Debian package orthanc)")
    report_port = free_port()
    stored = [PYDICOM_TEST_FILES / n for n in ("CT_small.dcm", "MR_small.dcm")]
    never_sent = pydicom.dcmread(PYDICOM_TEST_FILES / "rtplan.dcm", stop_before_pixels=True)
    with running_orthanc(tmp_path / "pacs", calling_aets={"DICOMFLOW": report_port}) as server:
        address = DimseAddress.parse(server.url)
        assert all(o.ok for o in c_store(address, stored))
        pairs = []
        for path in stored:
            ds = pydicom.dcmread(path, stop_before_pixels=True)
            pairs.append((str(ds.SOPClassUID), str(ds.SOPInstanceUID)))
        pairs.append((str(never_sent.SOPClassUID), str(never_sent.SOPInstanceUID)))
        result = request_commitment(
            address, pairs, report_port=report_port, report_host="127.0.0.1", timeout=30
        )
    assert result.reported, "Orthanc sent no N-EVENT-REPORT"
    assert result.committed == {uid for _, uid in pairs[:2]}
    assert set(result.failed) == {str(never_sent.SOPInstanceUID)}
    assert result.failed[str(never_sent.SOPInstanceUID)] is not None  # a failure reason code
    assert result.missing == []


def test_cli_send_with_commitment(tmp_path: Path) -> None:
    import subprocess
    import sys

    require(orthanc_binary() is not None, "Orthanc (Debian package orthanc)")
    report_port = free_port()
    with running_orthanc(tmp_path / "pacs", calling_aets={"DICOMFLOW": report_port}) as server:
        result = subprocess.run(
            [
                sys.executable,
                "-m",
                "dicomflow",
                "send",
                str(PYDICOM_TEST_FILES / "CT_small.dcm"),
                str(PYDICOM_TEST_FILES / "MR_small.dcm"),
                "--to",
                server.url,
                "--commit",
                str(report_port),
                "--commit-timeout",
                "30",
            ],
            capture_output=True,
            text=True,
            timeout=120,
        )
    assert result.returncode == 0, result.stderr
    assert "sent: 2  failed: 0" in result.stdout
    assert "committed: 2  failed: 0  unreported: 0" in result.stdout


def _sop_uids(paths: list[Path]) -> set[str]:
    return {str(pydicom.dcmread(p, stop_before_pixels=True).SOPInstanceUID) for p in paths}


def test_an_ingest_that_sends_asks_for_commitment_of_what_it_sent(tmp_path: Path) -> None:
    """``ingest --send dimse://… --commit PORT``: one transaction for the run's sent
    instances; Orthanc reports on a new association and commits every one."""
    import dicomflow

    require(orthanc_binary() is not None, "Orthanc (Debian package orthanc)")
    report_port = free_port()
    files = [PYDICOM_TEST_FILES / n for n in ("CT_small.dcm", "MR_small.dcm", "rtplan.dcm")]
    lake = tmp_path / "lake"
    with running_orthanc(tmp_path / "pacs", calling_aets={"DICOMFLOW": report_port}) as server:
        summary = dicomflow.ingest(
            [str(p) for p in files],
            out=str(lake),
            send_to=server.url,
            commit_port=report_port,
            commit_timeout=30,
            progress=False,
            workers=1,
        )
    assert summary.errors == 0 and summary.error_codes == {}, summary.error_codes
    sent = dicomflow.read_lake(str(lake)).table("sent")
    assert set(sent.column("SOPInstanceUID").to_pylist()) == _sop_uids(files)
    assert set(sent.column("peer").to_pylist()) == {server.url}


def test_instances_a_peer_never_reports_on_are_not_committed_rows(tmp_path: Path) -> None:
    """A peer that cannot reach us with its report (Orthanc does not know our AE): after
    the timeout every sent instance is a ``not_committed`` error row, and keeps its row."""
    import subprocess
    import sys

    import dicomflow

    require(orthanc_binary() is not None, "Orthanc (Debian package orthanc)")
    files = [PYDICOM_TEST_FILES / n for n in ("CT_small.dcm", "MR_small.dcm")]
    lake = tmp_path / "lake"
    with running_orthanc(tmp_path / "pacs") as server:
        done = subprocess.run(
            [
                *(sys.executable, "-m", "dicomflow", "ingest", *map(str, files)),
                *("--out", str(lake), "--send", server.url, "--commit", str(free_port())),
                *("--commit-timeout", "3", "--fail-on-error", "--no-progress"),
            ],
            capture_output=True,
            text=True,
            timeout=180,
        )
    assert done.returncode == 3, done.stdout + done.stderr
    assert "not_committed=2" in done.stdout
    read = dicomflow.read_lake(str(lake))
    errors = read.errors().to_pylist()
    assert sorted(e["code"] for e in errors) == ["not_committed", "not_committed"]
    assert all("no commitment report within 3 s" in e["message"] for e in errors)
    assert set(read.instances().column("SOPInstanceUID").to_pylist()) == _sop_uids(files)
