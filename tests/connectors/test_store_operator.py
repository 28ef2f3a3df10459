"""The ``store`` operator in a pipeline: ingest sends what it writes to a PACS (Orthanc)."""

from __future__ import annotations

from pathlib import Path

import pyarrow.parquet as pq
import pydicom

from dicomflow.anonymize.keys import SecretKey
from dicomflow.api import AnonymizeSettings, deidentifier, ingest
from tests.conftest import PYDICOM_TEST_FILES, require
from tests.peers.orthanc import free_port, orthanc_binary, running_orthanc

FILES = ["CT_small.dcm", "MR_small.dcm", "rtplan.dcm"]


def _orthanc_uids(server: object) -> set[str]:
    uids = set()
    for instance in server.get("/instances"):  # type: ignore[attr-defined]
        tags = server.get(f"/instances/{instance}/simplified-tags")  # type: ignore[attr-defined]
        uids.add(tags["SOPInstanceUID"])
    return uids


def test_ingest_anonymize_send_stores_only_deidentified_instances(
    tmp_path: Path, client: object
) -> None:
    require(orthanc_binary() is not None, "Orthanc (Debian package orthanc)")
    src = tmp_path / "src"
    src.mkdir()
    for name in FILES:
        (src / name).write_bytes((PYDICOM_TEST_FILES / name).read_bytes())
    originals = {
        str(pydicom.dcmread(src / n, stop_before_pixels=True).SOPInstanceUID) for n in FILES
    }
    settings = AnonymizeSettings(deidentifier(key=SecretKey(b"s" * 40)), write_dicom=True)
    with running_orthanc(tmp_path / "pacs") as server:
        summary = ingest(
            [str(src)],
            out=str(tmp_path / "lake"),
            pixels=False,
            client=client,
            anonymize=settings,
            send_to=server.url,
        )
        stored = _orthanc_uids(server)
    assert summary.rows == len(FILES) and summary.errors == 0
    lake_uids = set(
        pq.read_table(tmp_path / "lake" / "instances").column("SOPInstanceUID").to_pylist()
    )
    assert stored == lake_uids
    assert not stored & originals


def test_unreachable_peer_gives_not_stored_rows(tmp_path: Path, client: object) -> None:
    summary = ingest(
        [str(PYDICOM_TEST_FILES / "CT_small.dcm")],
        out=str(tmp_path / "lake"),
        pixels=False,
        client=client,
        send_to=f"dimse://NOBODY@127.0.0.1:{free_port()}",
    )
    # The send failed, not the instance: it keeps its row, the fault in its warnings.
    assert summary.rows == 1 and summary.errors == 1 and summary.accounted
    errors = pq.read_table(tmp_path / "lake" / "errors").to_pylist()
    assert errors[0]["code"] == "not_stored" and errors[0]["stage"] == "store"
    (row,) = pq.read_table(tmp_path / "lake" / "instances").to_pylist()
    assert row["warnings"] == ["store: not_stored"]
