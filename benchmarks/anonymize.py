"""Benchmark: ``dicomflow ingest --anonymize --dicom`` against a naive dicom-anonymizer loop.

Synthesizes N CT instances (default 2,000 slices of 256×256 int16, ~110 header
elements with names, dates, UIDs, sequences and private tags; 100 slices per
patient/study/series), then, in one process, times:

* baseline: one process, ``dicomanonymizer.anonymize_dicom_file(in, out)`` per
  file (dicom-anonymizer 2.x, its default PS3.15 rules, private tags deleted),
  each output written into a folder;
* dicomflow: ``ingest(pixels=False, anonymize=AnonymizeSettings(…, write_dicom=True))``
  on a local cluster (default 2 workers): every input de-identified with the
  basic profile and written under ``<lake>/dicom``, then the instances table
  (plus DICOM JSON) made from the de-identified files.

Before any number is printed, every run is checked: the baseline wrote N files,
dicomflow wrote N DICOM files and N instance rows with no error rows, and the
original patient names appear in neither output (every dicomflow row, a sample of
the baseline files), and dicomflow's own de-identification proof passed (its share of
each run is printed).

Each side runs ``--repeat`` times (default 3), alternating, and the best run
counts. Each dicomflow repeat starts a fresh cluster and ingests twice: the
first run on cold workers plus the cluster's start-up and shutdown is "end to
end"; the second, on the same (warm) cluster, is "cluster already up".
"""

from __future__ import annotations

import argparse
import shutil
import sys
import tempfile
import time
from pathlib import Path

import pydicom
from dicomanonymizer import simpledicomanonymizer
from dicomanonymizer.simpledicomanonymizer import anonymize_dicom_file

sys.path.insert(0, str(Path(__file__).parent))

from synth import write_ct_series

import dicomflow
from dicomflow.anonymize.config import deidentifier
from dicomflow.anonymize.keys import SecretKey
from dicomflow.api import AnonymizeSettings
from dicomflow.pipelines.cluster import open_client
from dicomflow.pipelines.pipeline import RunSummary

KEY = SecretKey(b"dicomflow-benchmark-key-not-secret" * 2)


def baseline(paths: list[Path], data: Path, out: Path) -> float:
    """The naive loop, mirroring the input tree under ``out``; returns seconds."""
    shutil.rmtree(out, ignore_errors=True)
    simpledicomanonymizer.dictionary.clear()  # its UID map; as in a fresh process
    start = time.perf_counter()
    for path in paths:
        target = out / path.relative_to(data)
        target.parent.mkdir(parents=True, exist_ok=True)
        anonymize_dicom_file(str(path), str(target))
    return time.perf_counter() - start


def ingest(data: Path, lake: Path, client: object) -> tuple[float, RunSummary]:
    shutil.rmtree(lake, ignore_errors=True)
    settings = AnonymizeSettings(deidentifier(key=KEY), write_dicom=True)
    start = time.perf_counter()
    summary = dicomflow.ingest(
        [str(data)], out=str(lake), pixels=False, anonymize=settings, client=client, progress=False
    )
    return time.perf_counter() - start, summary


def check_baseline(out: Path, n: int, names: set[str]) -> None:
    files = sorted(out.rglob("*.dcm"))
    assert len(files) == n, f"baseline wrote {len(files)} files, expected {n}"
    for path in files[:: max(1, n // 20)]:
        assert str(pydicom.dcmread(path).get("PatientName", "")) not in names, path


def check_dicomflow(summary: RunSummary, lake: Path, n: int, names: set[str]) -> None:
    assert summary.files == n and summary.errors == 0, (summary.files, summary.errors)
    files = sorted((lake / "dicom").rglob("*.dcm"))
    assert len(files) == n, f"dicomflow wrote {len(files)} DICOM files, expected {n}"
    instances = dicomflow.read_lake(str(lake)).instances(["source", "PatientName"])
    assert instances.num_rows == n, f"dicomflow wrote {instances.num_rows} rows, expected {n}"
    assert not names & set(instances.column("PatientName").to_pylist())
    assert all(s.startswith(str(lake / "dicom")) for s in instances.column("source").to_pylist())


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("-n", type=int, default=2000, help="number of instances (default 2000)")
    parser.add_argument("--size", type=int, default=256, help="rows = columns (default 256)")
    parser.add_argument("--workers", type=int, default=2, help="local cluster workers (default 2)")
    parser.add_argument("--repeat", type=int, default=3, help="runs per side; best counts")
    parser.add_argument("--keep", type=Path, default=None, help="keep data in this directory")
    args = parser.parse_args()

    work = args.keep or Path(tempfile.mkdtemp(prefix="dicomflow-anonbench-"))
    data = work / "data"
    try:
        if not data.exists():
            print(f"synthesizing {args.n} {args.size}x{args.size} files in {data} ...", flush=True)
            write_ct_series(data, args.n, rows=args.size, cols=args.size)
        paths = sorted(data.rglob("*.dcm"))[: args.n]
        n = len(paths)
        names = {str(pydicom.dcmread(p, stop_before_pixels=True).PatientName) for p in paths}
        lake, out = work / "lake", work / "baseline"
        base_runs, total_runs, up_runs, overheads = [], [], [], []
        proofs: list[tuple[float, float]] = []  # (proof seconds, run seconds), warm runs
        for _ in range(args.repeat):
            base_runs.append(baseline(paths, data, out))
            check_baseline(out, n, names)
            start = time.perf_counter()
            with open_client(workers=args.workers) as client:
                startup = time.perf_counter() - start
                cold, summary = ingest(data, lake, client)
                check_dicomflow(summary, lake, n, names)
                warm, summary = ingest(data, lake, client)
                check_dicomflow(summary, lake, n, names)
                assert summary.proof is not None and summary.proof.passed, summary.proof
                proofs.append((summary.proof.seconds, warm))
                closing = time.perf_counter()
            overheads.append(startup + time.perf_counter() - closing)
            total_runs.append(cold + overheads[-1])
            up_runs.append(warm)
        base, total, up = min(base_runs), min(total_runs), min(up_runs)
        print(
            f"instances: {n} ({args.size}x{args.size} int16, {len(names)} patients), "
            f"{args.workers} workers, best of {args.repeat} runs each; outputs checked"
        )
        for label, seconds in (
            ("baseline (dicom-anonymizer loop)     ", base),
            ("dicomflow --anonymize, end to end    ", total),
            ("dicomflow --anonymize, cluster up    ", up),
        ):
            print(f"{label}: {n / seconds:7.0f} instances/s ({seconds / n * 1e3:5.2f} ms each)")
        print(f"local cluster start-up + shutdown: {min(overheads):.1f} s (in 'end to end')")
        proof_s, run_s = min(proofs, key=lambda p: p[1])
        assert summary.proof is not None
        print(
            f"de-identification proof (inside every dicomflow run): {proof_s:.2f} s of "
            f"{run_s:.2f} s ({proof_s / run_s:.0%}), {summary.proof.values_checked} values, "
            f"{summary.proof.outputs_scanned} outputs, {summary.proof.bytes_scanned / 1e6:.1f} MB"
        )
        print(f"ratio end to end: {base / total:.2f}x")
        print(f"ratio cluster up: {base / up:.2f}x")
    finally:
        if args.keep is None:
            shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
