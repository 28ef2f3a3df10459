"""Benchmark: C-FIND queries per second for a cohort CSV, with and without a reused
association.

Loads N studies (default 500, one small CT instance each, each with its own Accession
Number) into an Orthanc started for the run with ``TCP_NODELAY=1``, writes a cohort CSV
of their accession numbers, then, in the same run:

* DCMTK ``findscu`` once per accession (the baseline a shell script would be: one
  process and one association per query, ``TCP_NODELAY=1``);
* dicomflow's C-FIND on a new association per query (no reuse);
* dicomflow's cohort C-FIND: every query on one association (``find_cohort``, what
  ``dicomflow query --cohort`` and ``ingest --cohort`` do);
* the whole ``dicomflow query dimse://… --cohort cohort.csv --out t.parquet`` command.

Prints queries/s for each and the ratios.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(Path(__file__).parent))

from pydicom.dataset import FileMetaDataset  # noqa: E402
from pydicom.uid import ExplicitVRLittleEndian, generate_uid  # noqa: E402
from synth import ct_dataset  # noqa: E402

from dicomflow.connectors.dimse import DimseAddress  # noqa: E402
from dicomflow.connectors.dimse.find import c_find, find_cohort  # noqa: E402
from tests.peers.orthanc import running_orthanc  # noqa: E402

NODELAY = {**os.environ, "TCP_NODELAY": "1"}


def synthesize(folder: Path, studies: int) -> list[str]:
    """One 16×16 CT instance in each of ``studies`` studies; their accession numbers."""
    folder.mkdir(parents=True, exist_ok=True)
    accessions = []
    for i in range(studies):
        ds = ct_dataset(
            i, study=generate_uid(), series=generate_uid(), frame_of_ref=generate_uid(),
            rows=16, cols=16,
        )  # fmt: skip
        ds.AccessionNumber = f"ACC{i:06d}"
        ds.PixelData = bytes(16 * 16 * 2)
        meta = FileMetaDataset()
        meta.MediaStorageSOPClassUID = ds.SOPClassUID
        meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID
        meta.TransferSyntaxUID = ExplicitVRLittleEndian
        ds.file_meta = meta
        ds.save_as(folder / f"{i:05d}.dcm", enforce_file_format=True)
        accessions.append(ds.AccessionNumber)
    return accessions


def timed(run: object) -> float:
    start = time.perf_counter()
    run()  # type: ignore[operator]
    return time.perf_counter() - start


def findscu_each(port: int, accessions: list[str]) -> None:
    for accession in accessions:
        subprocess.run(
            [
                *("findscu", "-S", "-aet", "FINDSCU", "-aec", "ORTHANC"),
                *("-k", "QueryRetrieveLevel=STUDY", "-k", f"AccessionNumber={accession}"),
                *("-k", "StudyInstanceUID", "127.0.0.1", str(port)),
            ],
            check=True,
            env=NODELAY,
            capture_output=True,
        )


def dicomflow_each(address: DimseAddress, accessions: list[str]) -> None:
    for accession in accessions:
        found = list(c_find(address, "study", {"AccessionNumber": accession}))
        assert len(found) == 1, accession


def dicomflow_cohort(address: DimseAddress, accessions: list[str]) -> None:
    table = find_cohort(address, "study", "AccessionNumber", accessions)
    assert table.num_rows == len(accessions), table.num_rows


def dicomflow_command(url: str, cohort: Path, out: Path) -> None:
    subprocess.run(
        [
            *(sys.executable, "-m", "dicomflow", "query", url, "--level", "study"),
            *("--cohort", str(cohort), "--out", str(out)),
        ],
        check=True,
        capture_output=True,
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("-n", "--studies", type=int, default=500)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        accessions = synthesize(work / "studies", args.studies)
        cohort = work / "cohort.csv"
        cohort.write_text("AccessionNumber\n" + "\n".join(accessions) + "\n")
        with running_orthanc(work / "orthanc", env=NODELAY) as orthanc:
            for path in sorted((work / "studies").iterdir()):
                assert orthanc.upload(path)
            address = DimseAddress.parse(orthanc.url)
            n = len(accessions)
            results = {
                "findscu, one process and association a query": timed(
                    lambda: findscu_each(orthanc.dicom_port, accessions)
                ),
                "dicomflow, a new association a query": timed(
                    lambda: dicomflow_each(address, accessions)
                ),
                "dicomflow, one association for the cohort": timed(
                    lambda: dicomflow_cohort(address, accessions)
                ),
                "dicomflow query --cohort (whole command)": timed(
                    lambda: dicomflow_command(orthanc.url, cohort, work / "t.parquet")
                ),
            }
    baseline = results["findscu, one process and association a query"]
    print(f"{n} accession numbers, one C-FIND each (STUDY level), Orthanc on loopback")
    for name, seconds in results.items():
        print(f"  {name:48s} {n / seconds:8.1f} queries/s  {baseline / seconds:6.2f}x findscu")
    pooled = results["dicomflow, one association for the cohort"]
    fresh = results["dicomflow, a new association a query"]
    print(f"  reusing the association: {fresh / pooled:.2f}x the queries/s of a new one each")


if __name__ == "__main__":
    main()
