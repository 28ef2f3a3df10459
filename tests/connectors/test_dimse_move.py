"""C-MOVE as an ingest path: our own Storage SCP for the run, against Orthanc (our AE
in its DicomModalities) and DCMTK's dcmqrscp; completeness, resuming by SOP
Instance UID, refused destinations, wrong ports and C-CANCEL on interruption."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pyarrow.parquet as pq
import pydicom
import pytest
import yaml
from pydicom.uid import generate_uid

import dicomflow
from dicomflow.connectors.dimse import DimseAddress
from dicomflow.connectors.dimse.move import MoveDestinationUnknown
from dicomflow.connectors.dimse.store import c_store
from dicomflow.errors import ConfigError
from tests.conftest import PYDICOM_TEST_FILES, require
from tests.connectors.test_dimse import UPLOADED
from tests.helpers import quiet
from tests.peers.dcmtk import dcmtk_binary, running_dcmqrscp, storescu
from tests.peers.orthanc import Orthanc, free_port, orthanc_binary, running_orthanc

OUR_AE = "DICOMFLOW"


@dataclass(frozen=True)
class Pacs:
    """Orthanc holding pydicom's files; it knows ``OUR_AE`` at ``move_port``."""

    server: Orthanc
    move_port: int
    originals: dict[str, Path]  # SOP Instance UID -> the file uploaded


def _uids(paths: list[Path]) -> dict[str, Path]:
    with quiet():
        return {str(pydicom.dcmread(p, stop_before_pixels=True).SOPInstanceUID): p for p in paths}


@pytest.fixture(scope="module")
def pacs(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Pacs]:
    require(orthanc_binary() is not None, "Orthanc (Debian package orthanc)")
    move_port = free_port()
    workdir = tmp_path_factory.mktemp("orthanc-move")
    with running_orthanc(workdir, calling_aets={OUR_AE: move_port, "ELSEWHERE": 9}) as server:
        files = [PYDICOM_TEST_FILES / name for name in UPLOADED]
        assert all(server.upload(p) for p in files)
        yield Pacs(server, move_port, _uids(files))


def _lake_sop_uids(out: Path) -> list[str]:
    table = dicomflow.read_lake(str(out)).instances(columns=["SOPInstanceUID"])
    return sorted(table.column(0).to_pylist())


def _same_instances(out: Path, originals: dict[str, Path]) -> None:
    """Every retrieved file holds the data set that was loaded, element for element."""
    retrieved = {p.stem: p for p in (out / "_retrieved").rglob("*.dcm")}
    assert set(retrieved) == set(originals)
    with quiet():
        for uid, path in retrieved.items():
            ours, theirs = pydicom.dcmread(path), pydicom.dcmread(originals[uid])
            assert ours.SOPInstanceUID == theirs.SOPInstanceUID
            assert ours.get("PixelData") == theirs.get("PixelData")


def _errors(out: Path) -> list[dict[str, object]]:
    folder = out / "errors"
    if not folder.exists():
        return []
    return pq.read_table(folder).to_pylist()


def test_ingest_by_move_from_orthanc(pacs: Pacs, tmp_path: Path, client: object) -> None:
    out = tmp_path / "lake"
    summary = dicomflow.ingest(
        [pacs.server.url],
        out=str(out),
        query={"PatientID": "*"},
        retrieve="move",
        move_ae=OUR_AE,
        move_port=pacs.move_port,
        client=client,
        progress=False,
    )
    assert summary.errors == 0, summary.error_codes
    assert _lake_sop_uids(out) == sorted(pacs.originals)
    _same_instances(out, pacs.originals)


def test_a_partial_series_is_completed_by_uid(pacs: Pacs, tmp_path: Path, client: object) -> None:
    """An interrupted earlier run left part of the lake: only what is missing is moved,
    by SOP Instance UID, and nothing is reported missing."""
    out = tmp_path / "lake"
    options = {
        "out": str(out),
        "query": {"PatientID": "*"},
        "retrieve": "move",
        "move_ae": OUR_AE,
        "move_port": pacs.move_port,
        "client": client,
        "progress": False,
    }
    dicomflow.ingest([pacs.server.url], **options)  # type: ignore[arg-type]
    files = sorted((out / "_retrieved").rglob("*.dcm"))
    removed = files[0]
    kept = {p: p.stat().st_mtime_ns for p in files[1:]}
    removed.unlink()
    summary = dicomflow.ingest([pacs.server.url], **options)  # type: ignore[arg-type]
    assert summary.errors == 0, summary.error_codes
    assert removed.exists()
    assert all(p.stat().st_mtime_ns == mtime for p, mtime in kept.items())  # not moved again


def test_cli_and_yaml_build_the_same_move_spec(pacs: Pacs, tmp_path: Path) -> None:
    out = tmp_path / "lake"
    command = [
        sys.executable,
        "-m",
        "dicomflow",
        "ingest",
        pacs.server.url,
        "-q",
        "PatientID=*",
        "--out",
        str(out),
        "--retrieve",
        "move",
        "--move-ae",
        OUR_AE,
        "--move-port",
        str(pacs.move_port),
        "--query-level",
        "study",
    ]
    printed = subprocess.run(
        [*command, "--print-spec"], capture_output=True, text=True, timeout=60, check=True
    ).stdout
    source = yaml.safe_load(printed)["source"]
    assert source["retrieve"] == "move" and source["move_ae"] == OUR_AE
    assert source["move_port"] == pacs.move_port and source["query_level"] == "study"
    spec = tmp_path / "spec.yaml"
    spec.write_text(printed)
    ran = subprocess.run(
        [sys.executable, "-m", "dicomflow", "run", str(spec)],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert ran.returncode == 0, ran.stderr[-2000:]
    assert _lake_sop_uids(out) == sorted(pacs.originals)


def test_move_needs_a_destination() -> None:
    from dicomflow.api import ingest_spec
    from dicomflow.pipelines.compiler import compile_spec

    with pytest.raises(ConfigError, match="move_ae and move_port"):
        ingest_spec(
            ["dimse://PACS@127.0.0.1:104"], out="lake", query={"PatientID": "*"}, retrieve="move"
        )
    spec = ingest_spec(
        ["dimse://PACS@127.0.0.1:104"],
        out="lake",
        query={"PatientID": "*"},
        retrieve="move",
        move_ae="A\\B",
        move_port=104,
    )
    with pytest.raises(ConfigError, match="AE title"):
        compile_spec(spec)


def test_an_unknown_move_ae_is_a_clear_error(pacs: Pacs, tmp_path: Path) -> None:
    """Orthanc 1.10 fails a move to a destination it does not know with 0xC000 (not
    0xA801, which dcmqrscp sends): every instance becomes a not_retrieved row, and the
    log names the destination and the status."""
    started = time.monotonic()
    out = tmp_path / "lake"
    ran = subprocess.run(
        [
            sys.executable,
            "-m",
            "dicomflow",
            "ingest",
            pacs.server.url,
            "-q",
            "PatientID=*",
            "--out",
            str(out),
            "--retrieve",
            "move",
            "--move-ae",
            "NOBODY",
            "--move-port",
            str(free_port()),
            "--fail-on-error",
        ],
        capture_output=True,
        text=True,
        timeout=180,
    )
    assert ran.returncode == 3, ran.stderr[-2000:]
    assert "failed the C-MOVE to 'NOBODY' with nothing moved" in ran.stderr
    assert "0xC000" in ran.stderr
    assert time.monotonic() - started < 120
    assert {r["code"] for r in _errors(out)} == {"not_retrieved"}
    assert len(_errors(out)) == len(pacs.originals)


def test_a_destination_on_the_wrong_port_gives_not_retrieved_rows(
    pacs: Pacs, tmp_path: Path, client: object
) -> None:
    """Orthanc knows ELSEWHERE at a port where nobody listens: its sub-operations fail,
    our SCP receives nothing, and every instance becomes a not_retrieved row, quickly."""
    out = tmp_path / "lake"
    started = time.monotonic()
    summary = dicomflow.ingest(
        [pacs.server.url],
        out=str(out),
        query={"PatientID": "*"},
        retrieve="move",
        move_ae="ELSEWHERE",
        move_port=free_port(),
        client=client,
        progress=False,
    )
    assert time.monotonic() - started < 120
    assert summary.error_codes == {"not_retrieved": len(pacs.originals)}
    rows = _errors(out)
    assert sorted(str(r["source"]).rsplit("=", 1)[1] for r in rows) == sorted(pacs.originals)
    assert {r["code"] for r in rows} == {"not_retrieved"}


def test_ingest_by_move_from_dcmqrscp(tmp_path: Path, client: object) -> None:
    """dcmqrscp sends to the host and port its HostTable gives our AE title; an AE title
    it does not list is refused (0xA801) with a clear error."""
    for tool in ("dcmqrscp", "storescu"):
        require(dcmtk_binary(tool) is not None, f"DCMTK's {tool} (Debian package dcmtk)")
    names = ["CT_small.dcm", "MR_small.dcm", "rtplan.dcm", "rtdose.dcm"]
    files = [PYDICOM_TEST_FILES / n for n in names]
    move_port = free_port()
    with running_dcmqrscp(tmp_path / "qr", peers={OUR_AE: move_port, "LOADER": free_port()}) as qr:
        storescu(qr.port, files, called_aet=qr.aet)
        out = tmp_path / "lake"
        summary = dicomflow.ingest(
            [qr.url],
            out=str(out),
            query={"PatientID": "*"},
            query_level="study",
            retrieve="move",
            move_ae=OUR_AE,
            move_port=move_port,
            client=client,
            progress=False,
        )
        assert summary.errors == 0, summary.error_codes
        originals = _uids(files)
        assert _lake_sop_uids(out) == sorted(originals)
        _same_instances(out, originals)
        with pytest.raises(MoveDestinationUnknown, match="0xA801"):
            dicomflow.ingest(
                [qr.url],
                out=str(tmp_path / "lake2"),
                query={"PatientID": "*"},
                retrieve="move",
                move_ae="STRANGER",
                move_port=free_port(),
                client=client,
                progress=False,
            )


def _many_instances(folder: Path, count: int) -> list[Path]:
    """``count`` copies of CT_small in one series (new SOP Instance UIDs), 512x512."""
    import numpy as np

    folder.mkdir(parents=True, exist_ok=True)
    with quiet():
        ds = pydicom.dcmread(PYDICOM_TEST_FILES / "CT_small.dcm")
    ds.StudyInstanceUID, ds.SeriesInstanceUID = generate_uid(), generate_uid()
    ds.Rows = ds.Columns = 512
    ds.PixelData = np.zeros((512, 512), dtype=np.int16).tobytes()
    paths = []
    for number in range(count):
        ds.SOPInstanceUID = ds.file_meta.MediaStorageSOPInstanceUID = generate_uid()
        ds.InstanceNumber = number + 1
        path = folder / f"{number:04d}.dcm"
        ds.save_as(path)
        paths.append(path)
    return paths


def test_sigterm_cancels_the_move_in_flight(tmp_path: Path) -> None:
    """SIGTERM of a run in the middle of a C-MOVE sends C-CANCEL: Orthanc ends the move
    with status 0xFE00 (cancelled), and the run exits promptly without every instance."""
    require(orthanc_binary() is not None, "Orthanc (Debian package orthanc)")
    count = 800
    files = _many_instances(tmp_path / "data", count)
    move_port = free_port()
    with running_orthanc(tmp_path / "pacs", calling_aets={OUR_AE: move_port}) as server:
        outcomes = c_store(DimseAddress.parse(server.url), files)
        assert all(o.ok for o in outcomes)
        out = tmp_path / "lake"
        process = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "dicomflow",
                "-v",
                "ingest",
                server.url,
                "-q",
                "PatientID=*",
                "--out",
                str(out),
                "--retrieve",
                "move",
                "--move-ae",
                OUR_AE,
                "--move-port",
                str(move_port),
                "--max-associations",
                "1",
            ],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            env={**os.environ, "PYTHONUNBUFFERED": "1"},
        )
        try:
            deadline = time.monotonic() + 120
            while not any((out / "_retrieved").rglob("*.dcm")):
                assert process.poll() is None, process.communicate()[1][-2000:]
                assert time.monotonic() < deadline, "nothing arrived"
                time.sleep(0.02)
            process.send_signal(signal.SIGTERM)
            stopped = time.monotonic()
            _, stderr = process.communicate(timeout=60)
        finally:
            if process.poll() is None:
                process.kill()
                process.communicate()
        assert time.monotonic() - stopped < 30
        assert process.returncode != 0
        assert "cancelled 1 C-MOVE(s) in flight" in stderr, stderr[-3000:]
        assert "status 0xFE00" in stderr, stderr[-3000:]
        arrived = list((out / "_retrieved").rglob("*.dcm"))
        assert 0 < len(arrived) < count
