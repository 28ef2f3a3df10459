"""Benchmark: peak memory of ``dicomflow ingest --pixels`` as the input grows.

Target: the peak RSS for 10,000 instances is at most 1.3x that for 1,000 (memory
is bounded by partitions and series, not by the size of the run).

For each size, synthesizes that many CT-like instances (small pixel matrices,
64×64 by default, ``--per-series`` slices per series), then runs
``python -m dicomflow ingest DATA --out LAKE --pixels --no-progress`` in a fresh
process (its own local cluster) and samples the resident set size of its whole
process tree (the client, which also hosts the scheduler and the nannies, and the
worker processes) every ``--interval`` seconds with psutil. The peak is the
largest sum over one sample. Prints, per size, the peak of the sum, the client's
and the workers' peaks, the run time, and finally the ratio against the target.
"""

from __future__ import annotations

import argparse
import re
import shutil
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import psutil

sys.path.insert(0, str(Path(__file__).parent))

from synth import write_ct_series

TARGET = 1.3
MB = 1024**2
SUMMARY = re.compile(r"files: (\d+)  rows: (\d+)  errors: (\d+)")


@dataclass
class Peak:
    """Peak RSS of one run (bytes), sampled over its process tree."""

    total: int = 0  # the largest sum of one sample
    client: int = 0  # the process that runs the client, scheduler and nannies
    workers: int = 0  # the largest sum of the other processes in one sample
    processes: int = 0  # the most processes seen at once
    samples: int = 0
    seconds: float = 0.0
    output: str = ""


def _rss(process: psutil.Process) -> int:
    try:
        return int(process.memory_info().rss)
    except (psutil.NoSuchProcess, psutil.AccessDenied, psutil.ZombieProcess):
        return 0  # gone between listing and reading: it no longer holds memory


def measure(command: list[str], interval: float) -> Peak:
    """Run ``command`` and sample the RSS of its process tree until it exits."""
    peak = Peak()
    started = time.perf_counter()
    with tempfile.TemporaryFile() as log:
        child = subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT)
        root = psutil.Process(child.pid)
        while child.poll() is None:
            try:
                others = root.children(recursive=True)
            except psutil.NoSuchProcess:
                break
            client = _rss(root)
            workers = sum(_rss(p) for p in others)
            peak.total = max(peak.total, client + workers)
            peak.client = max(peak.client, client)
            peak.workers = max(peak.workers, workers)
            peak.processes = max(peak.processes, 1 + len(others))
            peak.samples += 1
            time.sleep(interval)
        child.wait()
        peak.seconds = time.perf_counter() - started
        log.seek(0)
        peak.output = log.read().decode(errors="replace")
    if child.returncode != 0:
        raise SystemExit(f"ingest failed ({child.returncode}):\n{peak.output}")
    return peak


def ingest_command(data: Path, lake: Path, workers: int | None) -> list[str]:
    command = [sys.executable, "-m", "dicomflow", "ingest", str(data), "--out", str(lake)]
    command += ["--pixels", "--no-progress"]
    if workers:
        command += ["--workers", str(workers)]
    return command


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument(
        "--sizes",
        default="1000,10000",
        help="comma-separated instance counts; the first is the base of the ratio",
    )
    parser.add_argument("--size", type=int, default=64, help="rows and columns (default 64)")
    parser.add_argument("--per-series", type=int, default=100, help="slices per series")
    parser.add_argument(
        "--workers",
        type=int,
        default=max(2, len(psutil.Process().cpu_affinity() or [0, 1])),
        help="worker processes for every size (default: one per core, at least 2, so that"
        " every size runs on worker processes; 0 lets dicomflow choose, and it runs small"
        " jobs in its own process, whose peak is then not comparable)",
    )
    parser.add_argument("--interval", type=float, default=0.1, help="seconds between samples")
    parser.add_argument("--keep", type=Path, default=None, help="keep data in this directory")
    args = parser.parse_args()
    sizes = [int(s) for s in args.sizes.split(",")]

    work = args.keep or Path(tempfile.mkdtemp(prefix="dicomflow-membench-"))
    try:
        peaks: dict[int, Peak] = {}
        for n in sizes:
            data = work / f"data-{n}"
            if not data.exists():
                print(f"synthesizing {n} instances ({args.size}x{args.size}) ...", flush=True)
                write_ct_series(data, n, per_series=args.per_series, rows=args.size, cols=args.size)
            lake = work / f"lake-{n}"
            shutil.rmtree(lake, ignore_errors=True)
            peak = measure(ingest_command(data, lake, args.workers), args.interval)
            match = SUMMARY.search(peak.output)
            if match is None or int(match[2]) != n or int(match[3]) != 0:
                raise SystemExit(f"unexpected ingest result:\n{peak.output}")
            peaks[n] = peak
            print(
                f"{n:6d} instances: peak RSS {peak.total / MB:7.1f} MB"
                f" (client {peak.client / MB:6.1f} MB, workers {peak.workers / MB:6.1f} MB,"
                f" {peak.processes} processes, {peak.samples} samples)"
                f" in {peak.seconds:5.1f} s",
                flush=True,
            )
        base = sizes[0]
        for n in sizes[1:]:
            ratio = peaks[n].total / peaks[base].total
            verdict = "meets" if ratio <= TARGET else "MISSES"
            print(
                f"peak RSS ratio {n}/{base}: {ratio:.2f}x ({verdict} the target of at most "
                f"{TARGET}x)"
            )
    finally:
        if args.keep is None:
            shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
