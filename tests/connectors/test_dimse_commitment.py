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
