"""Benchmark: whole commands, imports and cluster start-up and teardown included.

Each run is a fresh Python process (``python -c``), timed from outside, from its start
to its exit, so it pays for what a ``dicomflow`` command pays: importing, starting a
cluster, the job, stopping the cluster and Python's own exit. The naive loops of
``scan.py`` and ``pixels.py`` run the same way beside them, interleaved, so a noisy
machine disturbs both sides alike.

Cases (``--cases``):

* ``one``: a scan of one file (pydicom's ``CT_small.dcm``) into a lake;
* ``many``: a scan of ``-n`` synthetic CT files (5,000 by default) into a lake;
* ``pixels``: ``run_ingest`` with pixels of ``--slices`` uncompressed 512x512 CT slices
  (800 by default) into a lake.

Ways to run dicomflow (``--modes``):

* ``auto``: ``connect_client(None, None, None, inputs=..., input_bytes=..., pixels=...)``
  decides, as the pipeline compiler will;
* ``in-process``: a cluster inside the command's process, whatever the size;
* ``growing``: ``growing_client()``, a worker thread in the command's process working
  while worker processes for the other cores start and join;
* ``processes``: ``open_client()``, a local cluster of worker processes (what every
  command started before ``connect_client`` chose by size);
* ``warm``: a cluster the user already runs (``--scheduler``): two worker processes the
  benchmark starts once, as a local cluster starts them, and every run of this mode
  joins; its start is not in any command's time, its work is;
* ``cli``: the ``dicomflow`` command itself (``scan``, or ``ingest --pixels``), however it
  is wired at the time; ``cli-warm`` the same command given ``--scheduler`` of the warm
  cluster.

The naive loops import ``scan.py`` and ``pixels.py`` for their ``baseline``, and those
modules import dicomflow, which the loops do not need: the time that import takes in
the loop's process (measured there) is taken off its whole-command time.

Prints each run's whole-command time, the median and best per mode, each mode's ratio
to the naive loop (naive time over dicomflow time, so more is better; the median of
each repeat's ratio, and the range), the phases of the best run (import, cluster
start, job, cluster stop), and whether any worker process outlived its command.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from collections import defaultdict
from pathlib import Path

import psutil
from whole_command import USER_ENVIRONMENT

HERE = Path(__file__).parent

NAIVE_SCAN = """
import json, sys, time
from pathlib import Path
import pandas, pydicom  # what the loop itself needs
started = time.perf_counter()
sys.path.insert(0, {here!r})
from scan import baseline  # also imports dicomflow, which the loop does not need
unneeded = time.perf_counter() - started
paths = [Path(p) for p in json.loads(Path({paths!r}).read_text())]
loop = baseline(paths, Path({out!r}))
print(json.dumps({{"unneeded_import": unneeded, "job": loop}}))
"""

NAIVE_PIXELS = """
import json, sys, time
from pathlib import Path
import numpy, pydicom, zarr  # what the loop itself needs
started = time.perf_counter()
sys.path.insert(0, {here!r})
from pixels import baseline  # also imports dicomflow, which the loop does not need
unneeded = time.perf_counter() - started
paths = [Path(p) for p in json.loads(Path({paths!r}).read_text())]
loop = baseline(paths, Path({out!r}) / "baseline.zarr")
print(json.dumps({{"unneeded_import": unneeded, "job": loop}}))
"""

DICOMFLOW = """
import json, sys, time
started = time.perf_counter()
mode, pixels = {mode!r}, {pixels!r}
from dicomflow.pipelines.cluster import (
    connect_client, default_workers, growing_client, in_process_client, open_client
)
if pixels:
    from dicomflow.pipelines.ingest import IngestOptions, run_ingest
else:
    from dicomflow.pipelines.scan import scan_pipeline
imported = time.perf_counter()
if mode == "auto":
    context = connect_client(
        None, None, None, inputs={inputs!r}, input_bytes={input_bytes!r}, pixels=pixels
    )
elif mode == "in-process":
    context = in_process_client()
elif mode == "growing":
    context = growing_client(default_workers(), pixels=pixels)
elif mode == "warm":
    context = connect_client(None, {scheduler!r}, None, inputs={inputs!r}, pixels=pixels)
else:
    context = open_client()
with context as client:
    up = time.perf_counter()
    if pixels:
        summary = run_ingest(
            client, [{source!r}], out={out!r}, options=IngestOptions(pixels=True), progress=False
        )
    else:
        summary = scan_pipeline([{source!r}], out={out!r}).run(client, progress=False)
    done = time.perf_counter()
    workers = list(client.scheduler_info()["workers"])
stopped = time.perf_counter()
assert summary.rows == {inputs!r} and summary.errors == 0, (summary.rows, summary.errors)
print(json.dumps({{
    "import": imported - started, "start": up - imported, "job": done - up,
    "stop": stopped - done, "workers": len(workers),
    "kind": "in-process" if workers[0].startswith("inproc") else "processes or growing",
}}))
"""


def worker_processes(since: float) -> list[psutil.Process]:
    """Worker processes (multiprocessing children) started after ``since``."""
    found = []
    for process in psutil.process_iter(["cmdline", "create_time"]):
        cmdline = " ".join(process.info["cmdline"] or [])
        if process.info["create_time"] >= since and "multiprocessing" in cmdline:
            found.append(process)
    return found


def run(code: str | None, argv: list[str] | None = None) -> tuple[float, dict[str, float]]:
    """Whole-command seconds of ``python -c code`` (or of ``argv``), what it reported,
    and how many worker processes outlived it (``leftover``)."""
    since = time.time() - 0.01
    command = [sys.executable, "-c", code] if code is not None else argv or []
    start = time.perf_counter()
    result = subprocess.run(
        command, capture_output=True, text=True, check=False, env=USER_ENVIRONMENT
    )
    seconds = time.perf_counter() - start
    if result.returncode != 0:
        raise SystemExit(f"{command[:2]} failed:\n{result.stderr[-3000:]}")
    lines = result.stdout.strip().splitlines()
    report: dict[str, float] = json.loads(lines[-1]) if code is not None and lines else {}
    time.sleep(0.2)  # a worker being stopped has this long to be gone
    report["leftover"] = len(worker_processes(since))
    return seconds, report


def case_runs(
    case: str,
    source: Path,
    paths: list[Path],
    work: Path,
    modes: list[str],
    scheduler: str | None = None,
) -> dict[str, tuple[str | None, list[str] | None]]:
    """The command for each side of a case: naive and each mode."""
    pixels = case == "pixels"
    listing = work / f"{case}-paths.json"
    listing.write_text(json.dumps([str(p) for p in paths]))
    lake = work / f"lake-{case}"
    naive = NAIVE_PIXELS if pixels else NAIVE_SCAN
    commands: dict[str, tuple[str | None, list[str] | None]] = {
        "naive": (naive.format(here=str(HERE), paths=str(listing), out=str(work)), None)
    }
    for mode in modes:
        if mode in ("cli", "cli-warm"):
            cli = [str(Path(sys.executable).parent / "dicomflow")]
            cli += ["ingest", str(source), "--pixels"] if pixels else ["scan", str(source)]
            cli += ["--out", str(lake), "--no-progress"]
            if mode == "cli-warm":
                cli += ["--scheduler", str(scheduler)]
            commands[mode] = (None, cli)
            continue
        code = DICOMFLOW.format(
            mode=mode,
            pixels=pixels,
            inputs=len(paths),
            input_bytes=sum(p.stat().st_size for p in paths),
            source=str(source),
            out=str(lake),
            scheduler=scheduler,
        )
        commands[mode] = (code, None)
    return commands


def prepare(case: str, work: Path, n: int, slices: int) -> tuple[Path, list[Path]]:
    """The input of a case (kept in ``work`` between runs of this benchmark)."""
    sys.path.insert(0, str(HERE))
    if case == "one":
        from pydicom.data import get_testdata_file

        path = Path(str(get_testdata_file("CT_small.dcm")))
        return path, [path]
    if case == "many":
        from synth import write_ct_series

        data = work / f"ct-{n}"
        if not data.exists():
            print(f"synthesizing {n} files in {data} ...", flush=True)
            write_ct_series(data, n)
        return data, sorted(data.rglob("*.dcm"))[:n]
    from synth import write_phantom_series

    data = work / f"slices-{slices}"
    if not data.exists():
        print(f"synthesizing {slices} slices in {data} ...", flush=True)
        write_phantom_series(data, slices, size=512)
    return data, sorted(data.rglob("*.dcm"))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--cases", default="one,many,pixels")
    parser.add_argument("--modes", default="auto,in-process,growing,processes")
    parser.add_argument("-n", type=int, default=5000, help="files of the 'many' case")
    parser.add_argument("--slices", type=int, default=800, help="slices of the 'pixels' case")
    parser.add_argument("--repeat", type=int, default=3, help="runs per side")
    parser.add_argument("--keep", type=Path, default=None, help="keep data in this directory")
    args = parser.parse_args()
    modes = args.modes.split(",")
    work = args.keep or Path(tempfile.mkdtemp(prefix="dicomflow-startup-"))
    work.mkdir(parents=True, exist_ok=True)
    print(f"{os.cpu_count()} cores; best and median of {args.repeat} runs a side")
    with contextlib.ExitStack() as stack:
        scheduler = None
        if {"warm", "cli-warm"} & set(modes):
            from dicomflow.pipelines.cluster import open_client

            warm = stack.enter_context(open_client(pixels="pixels" in args.cases))
            scheduler = warm.scheduler.address
        run_cases(args, modes, work, scheduler)


def run_cases(
    args: argparse.Namespace, modes: list[str], work: Path, scheduler: str | None
) -> None:
    """Each case, each side ``--repeat`` times, interleaved; then its summary."""
    try:
        for case in args.cases.split(","):
            source, paths = prepare(case, work, args.n, args.slices)
            commands = case_runs(case, source, paths, work, modes, scheduler)
            times: dict[str, list[float]] = defaultdict(list)
            reports: dict[str, list[dict[str, float]]] = defaultdict(list)
            for _ in range(args.repeat):
                for side, (code, argv) in commands.items():
                    shutil.rmtree(work / f"lake-{case}", ignore_errors=True)
                    os.sync()  # no side pays for flushing another's writes
                    seconds, report = run(code, argv)
                    seconds -= report.get("unneeded_import", 0.0)
                    times[side].append(seconds)
                    reports[side].append(report)
            summarize(case, len(paths), times, reports)
    finally:
        if args.keep is None:
            shutil.rmtree(work, ignore_errors=True)


def summarize(
    case: str,
    inputs: int,
    times: dict[str, list[float]],
    reports: dict[str, list[dict[str, float]]],
) -> None:
    naive = times["naive"]
    print(f"\n{case}: {inputs} input{'s' if inputs != 1 else ''}")
    for side, runs in times.items():
        best = min(runs)
        line = (
            f"  {side:10s} whole {best:6.2f} s best, {statistics.median(runs):6.2f} median"
            f" ({', '.join(f'{r:.2f}' for r in runs)})"
        )
        report = reports[side][runs.index(best)]
        if side != "naive":
            ratios = sorted(n / r for n, r in zip(naive, runs, strict=True))
            line += f" | ratio {statistics.median(ratios):.2f}x ({ratios[0]:.2f}-{ratios[-1]:.2f})"
        if "start" in report:
            line += (
                f" | {report['kind']}, {report['workers']:.0f} workers: import"
                f" {report['import']:.2f} start {report['start']:.2f} job {report['job']:.2f}"
                f" stop {report['stop']:.2f}"
            )
        elif "job" in report:
            line += f" | loop {report['job']:.2f}"
        leftover = sum(r["leftover"] for r in reports[side])
        if leftover:
            line += f" | {leftover} worker processes outlived their command"
        print(line, flush=True)


if __name__ == "__main__":
    main()
