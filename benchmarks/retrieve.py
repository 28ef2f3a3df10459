"""Benchmark: retrieving a study from Orthanc, whole ``dicomflow ingest`` against DCMTK's getscu.

Loads N synthetic CT instances (default 2,000 in 10 series of 128×128 16-bit, about
35 KB a file; ``--series 1 --size 512`` gives the one-series study of 512² slices)
into an Orthanc started for the run with ``TCP_NODELAY=1`` (``--stock-orthanc``:
without it, each C-STORE Orthanc sends stalls on a delayed ACK, and both clients wait
on that), then times, in the same run, best of ``--repeat``:

* DCMTK ``getscu`` of the study into a folder, with ``TCP_NODELAY=1``;
* the whole ``dicomflow ingest dimse://… -q StudyInstanceUID=…`` command: its imports,
  the IMAGE-level C-FIND that names every expected instance, the C-GETs, the scan into
  the lake and its exit.

Both run as fresh processes in the environment the benchmark started with. Prints
files/s for each and the ratio (getscu's time over dicomflow's).
"""

from __future__ import annotations

import argparse
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from pydicom.dataset import FileMetaDataset
from pydicom.uid import ExplicitVRLittleEndian, generate_uid

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(Path(__file__).parent))

import numpy as np  # noqa: E402
from synth import ct_dataset  # noqa: E402
from whole_command import USER_ENVIRONMENT, whole  # noqa: E402

from dicomflow.connectors.dimse import DimseAddress  # noqa: E402
from dicomflow.connectors.dimse.store import c_store  # noqa: E402
from tests.peers.orthanc import running_orthanc  # noqa: E402


def synthesize(out: Path, n: int, series: int, size: int) -> str:
    out.mkdir(parents=True, exist_ok=True)
    study = generate_uid()
    per_series = max(1, n // series)
    series_uid = frame_of_ref = ""
    for i in range(n):
        if i % per_series == 0:
            series_uid, frame_of_ref = generate_uid(), generate_uid()
        ds = ct_dataset(
            i, study=study, series=series_uid, frame_of_ref=frame_of_ref, rows=size, cols=size
        )
        ds.PixelData = (
            np.random.default_rng(i).integers(0, 1000, (size, size), dtype=np.int16).tobytes()
        )
        meta = FileMetaDataset()
        meta.MediaStorageSOPClassUID = ds.SOPClassUID
        meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID
        meta.TransferSyntaxUID = ExplicitVRLittleEndian
        ds.file_meta = meta
        ds.save_as(out / f"{i:05d}.dcm", enforce_file_format=True)
    return study


def getscu(port: int, study: str, out: Path) -> float:
    """Seconds for ``getscu`` (``TCP_NODELAY=1``) to retrieve the study into ``out``."""
    shutil.rmtree(out, ignore_errors=True)
    out.mkdir(parents=True)
    command = ["getscu", "-S", "-aet", "DICOMFLOW", "-aec", "ORTHANC", "-od", str(out)]
    command += ["-k", "QueryRetrieveLevel=STUDY", "-k", f"StudyInstanceUID={study}"]
    environment = {**USER_ENVIRONMENT, "TCP_NODELAY": "1"}
    start = time.perf_counter()
    subprocess.run(
        [*command, "127.0.0.1", str(port)], check=True, env=environment, capture_output=True
    )
    return time.perf_counter() - start


def dicomflow_ingest(url: str, study: str, lake: Path) -> float:
    """Seconds for the whole ``dicomflow ingest dimse://…`` command."""
    shutil.rmtree(lake, ignore_errors=True)
    command = [sys.executable, "-m", "dicomflow", "ingest", url, "-q", f"StudyInstanceUID={study}"]
    return whole([*command, "--out", str(lake), "--no-progress"])


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
    work = Path(tempfile.mkdtemp(prefix="dicomflow-retrieve-"))
    try:
        study = synthesize(work / "data", args.n, args.series, args.size)
        pacs_env = None if args.stock_orthanc else {"TCP_NODELAY": "1"}
        with running_orthanc(work / "pacs", env=pacs_env) as pacs:
            outcomes = c_store(DimseAddress.parse(pacs.url), sorted((work / "data").iterdir()))
            assert all(o.ok for o in outcomes)
            n = len(outcomes)
            theirs, ours = [], []
            for _ in range(args.repeat):
                theirs.append(getscu(pacs.dicom_port, study, work / "getscu"))
                assert sum(1 for _ in (work / "getscu").rglob("*") if _.is_file()) == n
                ours.append(dicomflow_ingest(pacs.url, study, work / "lake"))
                assert len(list((work / "lake" / "_retrieved").rglob("*.dcm"))) == n
        t, o = min(theirs), min(ours)
        orthanc = "stock Orthanc" if args.stock_orthanc else "Orthanc with TCP_NODELAY=1"
        print(f"{n} instances of {args.size}x{args.size} in {args.series} series, {orthanc}")
        print(f"DCMTK getscu, TCP_NODELAY=1     : {t:6.2f} s {n / t:7.0f} files/s")
        print(f"dicomflow ingest dimse://, whole: {o:6.2f} s {n / o:7.0f} files/s")
        print(f"ratio: {t / o:.2f}x, whole command against whole command")
    finally:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
