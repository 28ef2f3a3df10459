"""Benchmark: ``dicomflow scan`` against a naive pydicom + pandas loop, in one run.

Synthesizes N CT-like files (512×512, 16-bit, ~110 header elements with
sequences and private tags), then times:

* baseline: one process, ``pydicom.dcmread(f)`` per file, a dict of the same
  typed columns, ``pandas.DataFrame(rows).to_parquet``;
* dicomflow end to end: ``run_scan`` with defaults (it chooses where to run: for 5,000
  files, a growing cluster; its start-up included), which additionally stores every
  element as DICOM JSON;
* dicomflow with the cluster up: ``run_scan`` on a local cluster of worker processes
  started beforehand (its start-up not included).

Each side runs ``--repeat`` times (default 3), the baseline and the end-to-end runs
alternating, and the best time counts: shared machines are noisy, and the best run is
the one least disturbed.
Prints files/s for both and the ratio, end to end (cluster start-up included)
and for the pipeline alone (cluster already up).
"""

from __future__ import annotations

import argparse
import shutil
import sys
import tempfile
import time
from pathlib import Path

import pandas as pd
import pydicom

sys.path.insert(0, str(Path(__file__).parent))

from synth import write_ct_series

from dicomflow.api import run_scan
from dicomflow.pipelines.cluster import open_client
from dicomflow.schemas import column_specs


def baseline(paths: list[Path], out: Path) -> float:
    """The naive loop; returns seconds."""
    keywords = [spec.keyword for spec in column_specs()]
    start = time.perf_counter()
    rows = []
    for path in paths:
        ds = pydicom.dcmread(path)
        row = {"source": str(path)}
        for keyword in keywords:
            value = ds.get(keyword) if keyword in ds else ds.file_meta.get(keyword)
            row[keyword] = None if value is None else str(value)
        rows.append(row)
    pd.DataFrame(rows).to_parquet(out / "baseline.parquet")
    return time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("-n", type=int, default=5000, help="number of files (default 5000)")
    parser.add_argument("--workers", type=int, default=None)
    parser.add_argument("--repeat", type=int, default=3, help="runs per side; best counts")
    parser.add_argument("--keep", type=Path, default=None, help="keep data in this directory")
    args = parser.parse_args()

    work = args.keep or Path(tempfile.mkdtemp(prefix="dicomflow-bench-"))
    data = work / "data"
    try:
        if not data.exists():
            print(f"synthesizing {args.n} files in {data} ...", flush=True)
            write_ct_series(data, args.n)
        paths = sorted(data.rglob("*.dcm"))[: args.n]
        lake = work / "lake"
        base_runs, total_runs, pipeline_runs = [], [], []
        for _ in range(args.repeat):
            base_runs.append(baseline(paths, work))
            shutil.rmtree(lake, ignore_errors=True)
            start = time.perf_counter()  # start-up included: dicomflow's own choice
            summary = run_scan([str(data)], out=str(lake), workers=args.workers, progress=False)
            total_runs.append(time.perf_counter() - start)
            assert summary.rows == len(paths), (summary.rows, len(paths))
        # Afterwards: an active client would be the one the runs above joined.
        with open_client(workers=args.workers, pixels=False) as client:
            for _ in range(args.repeat):
                shutil.rmtree(lake, ignore_errors=True)
                summary = run_scan([str(data)], out=str(lake), client=client, progress=False)
                pipeline_runs.append(summary.seconds)
                assert summary.rows == len(paths), (summary.rows, len(paths))
        n = len(paths)
        base_rate = n / min(base_runs)
        total_rate, pipeline_rate = n / min(total_runs), n / min(pipeline_runs)
        print(f"files: {n}, best of {args.repeat} runs each")
        print(f"baseline (pydicom loop + pandas)      : {base_rate:7.0f} files/s")
        print(f"dicomflow scan, end to end            : {total_rate:7.0f} files/s")
        print(f"dicomflow scan, cluster already up    : {pipeline_rate:7.0f} files/s")
        print(f"ratio end to end: {total_rate / base_rate:.2f}x")
        print(f"ratio cluster up: {pipeline_rate / base_rate:.2f}x")
    finally:
        if args.keep is None:
            shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
