"""Benchmark: C-MOVE ingest from Orthanc, dicomflow against DCMTK's movescu.

Loads N synthetic CT instances (default 2,000 in 10 series, 128×128 16-bit, as
``retrieve.py`` makes them) into an Orthanc started for the run with
``TCP_NODELAY=1`` (without it, each C-STORE Orthanc sends for a C-MOVE waits on a
delayed ACK, about 22 files/s whoever receives; ``--stock-orthanc`` shows it),
which knows two move destinations: DCMTK ``storescp`` and dicomflow. Then times, whole command
against whole command:

* ``movescu`` (``TCP_NODELAY=1``) moving the study to ``storescp`` (started
  beforehand with ``TCP_NODELAY=1``, every transfer syntax accepted, writing
  files to a folder): one STUDY-level C-MOVE;
* ``dicomflow ingest dimse://… -q StudyInstanceUID=… --retrieve move`` (a new
  process: start-up, the local cluster, its own Storage SCP, C-FIND, per-series
  C-MOVEs, then the scan into the lake, metadata only).

Prints files/s for each and the ratio (target: at least 1×).
"""

from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(Path(__file__).parent))

from retrieve import synthesize  # noqa: E402

from dicomflow.connectors.dimse import DimseAddress  # noqa: E402
from dicomflow.connectors.dimse.store import c_store  # noqa: E402
from tests.peers.dcmtk import running_storescp  # noqa: E402
from tests.peers.orthanc import free_port, running_orthanc  # noqa: E402

NODELAY = {**os.environ, "TCP_NODELAY": "1"}


def movescu(port: int, study: str) -> float:
    """Seconds for DCMTK's movescu to move the study to STORESCP."""
    start = time.perf_counter()
    subprocess.run(
        [
            "movescu",
            "-S",
            "-aet",
            "MOVESCU",
            "-aec",
            "ORTHANC",
            "-aem",
            "STORESCP",
            "-k",
            "QueryRetrieveLevel=STUDY",
            "-k",
            f"StudyInstanceUID={study}",
            "127.0.0.1",
            str(port),
        ],
        check=True,
        env=NODELAY,
        capture_output=True,
    )
    return time.perf_counter() - start


def dicomflow_move(url: str, study: str, lake: Path, scp_port: int) -> float:
    """Seconds for the whole ``dicomflow ingest --retrieve move`` command."""
    shutil.rmtree(lake, ignore_errors=True)
    start = time.perf_counter()
    subprocess.run(
        [
            sys.executable,
            "-m",
            "dicomflow",
            "ingest",
            url,
            "-q",
            f"StudyInstanceUID={study}",
            "--out",
            str(lake),
            "--retrieve",
            "move",
            "--move-ae",
            "DICOMFLOW",
            "--move-port",
            str(scp_port),
            "--no-progress",
        ],
        check=True,
        capture_output=True,
    )
    return time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("-n", type=int, default=2000)
    parser.add_argument("--series", type=int, default=10)
    parser.add_argument("--size", type=int, default=128)
    parser.add_argument("--repeat", type=int, default=2, help="Runs of each; the best counts.")
    parser.add_argument(
        "--stock-orthanc",
        action="store_true",
        help="Run Orthanc without TCP_NODELAY=1 (its sends then stall on delayed ACKs).",
    )
    args = parser.parse_args()
    work = Path(tempfile.mkdtemp(prefix="dicomflow-move-"))
    try:
        study = synthesize(work / "data", args.n, args.series, args.size)
        scp_port = free_port()
        moved = work / "storescp"
        with running_storescp(moved, accept_all=True) as storescp_port:
            destinations = {"DICOMFLOW": scp_port, "STORESCP": storescp_port}
            with running_orthanc(
                work / "pacs",
                calling_aets=destinations,
                env=None if args.stock_orthanc else {"TCP_NODELAY": "1"},
            ) as pacs:
                outcomes = c_store(DimseAddress.parse(pacs.url), sorted((work / "data").iterdir()))
                assert all(o.ok for o in outcomes)
                n = len(outcomes)
                theirs, ours = [], []
                for _ in range(args.repeat):
                    shutil.rmtree(moved, ignore_errors=True)
                    moved.mkdir()
                    theirs.append(movescu(pacs.dicom_port, study))
                    assert len(list(moved.iterdir())) == n
                    ours.append(dicomflow_move(pacs.url, study, work / "lake", scp_port))
                    assert len(list((work / "lake" / "_retrieved").rglob("*.dcm"))) == n
        tuned, mine = min(theirs), min(ours)
        print(f"{n} instances of {args.size}x{args.size} in {args.series} series")
        print(f"DCMTK movescu -> storescp, TCP_NODELAY=1 : {n / tuned:7.0f} files/s")
        print(
            f"dicomflow ingest --retrieve move        : {n / mine:7.0f} files/s "
            "(whole command: start-up, C-FIND, C-MOVEs to its SCP, scan into the lake)"
        )
        print(f"ratio vs DCMTK movescu: {tuned / mine:.2f}x")
    finally:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
