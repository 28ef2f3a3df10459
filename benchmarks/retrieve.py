"""Benchmark: retrieving a study from Orthanc, dicomflow against DCMTK's getscu.

Loads N synthetic CT instances (default 2,000 in 10 series, 128×128 16-bit so
each file is about 35 KB) into an Orthanc started for the run, then times, in
the same run:

* DCMTK ``getscu`` into a folder, with ``TCP_NODELAY=1`` (the strong baseline)
  and with stock settings;
* ``dicomflow.ingest(dimse://…, query=StudyInstanceUID)``, metadata only, with
  default parallelism (C-FIND, per-series C-GETs, then the scan into the lake);
* C-MOVE of the study to dicomflow's own Storage SCP.

Prints files/s for each and the ratio against the tuned DCMTK figure.
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

from pydicom.dataset import FileMetaDataset
from pydicom.uid import ExplicitVRLittleEndian, generate_uid

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(Path(__file__).parent))

import numpy as np  # noqa: E402
from synth import ct_dataset  # noqa: E402

import dicomflow  # noqa: E402
from dicomflow.connectors.dimse import DimseAddress  # noqa: E402
from dicomflow.connectors.dimse.move import c_move  # noqa: E402
from dicomflow.connectors.dimse.scp import storage_scp  # noqa: E402
from dicomflow.connectors.dimse.store import c_store  # noqa: E402
from dicomflow.pipelines.cluster import open_client  # noqa: E402
from tests.peers.orthanc import free_port, running_orthanc  # noqa: E402


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


def getscu(port: int, study: str, out: Path, nodelay: bool) -> float:
    shutil.rmtree(out, ignore_errors=True)
    out.mkdir(parents=True)
    env = {**os.environ}
    if nodelay:
        env["TCP_NODELAY"] = "1"
    else:
        env.pop("TCP_NODELAY", None)
    start = time.perf_counter()
    subprocess.run(
        [
            "getscu",
            "-S",
            "-aet",
            "DICOMFLOW",
            "-aec",
            "ORTHANC",
            "-od",
            str(out),
            "-k",
            "QueryRetrieveLevel=STUDY",
            "-k",
            f"StudyInstanceUID={study}",
            "127.0.0.1",
            str(port),
        ],
        check=True,
        env=env,
        capture_output=True,
    )
    return time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("-n", type=int, default=2000)
    parser.add_argument("--series", type=int, default=10)
    parser.add_argument("--size", type=int, default=128)
    args = parser.parse_args()
    work = Path(tempfile.mkdtemp(prefix="dicomflow-retrieve-"))
    try:
        study = synthesize(work / "data", args.n, args.series, args.size)
        scp_port = free_port()
        with running_orthanc(work / "pacs", calling_aets={"DICOMFLOW": scp_port}) as pacs:
            address = DimseAddress.parse(pacs.url)
            outcomes = c_store(address, sorted((work / "data").iterdir()))
            assert all(o.ok for o in outcomes)
            n = len(outcomes)
            tuned = getscu(pacs.dicom_port, study, work / "getscu", nodelay=True)
            stock = getscu(pacs.dicom_port, study, work / "getscu", nodelay=False)
            with open_client() as client:
                lake = work / "lake"
                start = time.perf_counter()
                summary = dicomflow.ingest(
                    [pacs.url],
                    out=str(lake),
                    pixels=False,
                    query={"StudyInstanceUID": study},
                    client=client,
                    progress=False,
                )
                ours = time.perf_counter() - start
                assert summary.rows == n, (summary.rows, n)
            with storage_scp("DICOMFLOW", scp_port, work / "moved") as received:
                start = time.perf_counter()
                c_move(address, "study", {"StudyInstanceUID": study}, "DICOMFLOW")
                moved = time.perf_counter() - start
                assert len(received.received) == n
        print(f"{n} instances of {args.size}x{args.size} in {args.series} series")
        print(f"DCMTK getscu, TCP_NODELAY=1  : {n / tuned:7.0f} files/s")
        print(f"DCMTK getscu, stock settings : {n / stock:7.0f} files/s")
        print(
            f"dicomflow ingest dimse://    : {n / ours:7.0f} files/s "
            f"(C-FIND + C-GET + scan into the lake)"
        )
        print(f"dicomflow C-MOVE to own SCP  : {n / moved:7.0f} files/s")
        print(f"ratio vs tuned DCMTK: {tuned / ours:.2f}x")
    finally:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
