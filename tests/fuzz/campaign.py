"""Run mutants through dicomflow as a user would, and measure what they cost.

``python -m tests.fuzz.campaign --count 5000`` (``make fuzz``) writes that many
mutants of the corpus, then runs, each a fresh command on two worker processes:

- ``dicomflow scan MUTANTS --out LAKE``
- ``dicomflow ingest MUTANTS --out LAKE --pixels``
- ``dicomflow ingest MUTANTS --out LAKE --anonymize --key-env … --dicom``

and checks, for each: exit 0 (every input is a row or an error row, which the
command itself verifies), every mutant named by a row or an error row of the lake,
no worker process replaced (a worker that died), and no file written outside the
lake. Then one process reads, flattens and decodes each mutant alone
(:func:`per_file_costs`) and reports the worst file's time and memory. It prints
the counts and the wall time of each command; the CI test runs a fixed 500.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import subprocess
import sys
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

import psutil

REPO = Path(__file__).resolve().parents[2]
CORPUS = REPO.parent / "shared" / "corpus"
SEED_BYTES = 300_000  # seeds up to this size keep a campaign quick
KEY_ENV = "DICOMFLOW_FUZZ_KEY"


def seeds() -> list[Path]:
    """The corpus files a campaign derives from (sorted: the same seeds every time)."""
    return sorted(p for p in CORPUS.rglob("*.dcm") if p.stat().st_size <= SEED_BYTES)


@dataclass
class CommandResult:
    """What one command did: exit code, wall time, processes seen and their peaks."""

    name: str
    returncode: int
    seconds: float
    stderr: str
    worker_deaths: int
    peak_rss: int  # the largest resident set of any one process of the command's tree
    sources: set[str] = field(default_factory=set)  # names the lake's rows and errors give
    rows: int = 0  # rows and error rows in all
    error_codes: Counter[str] = field(default_factory=Counter)


def _tree(process: psutil.Process) -> list[psutil.Process]:
    try:
        return [process, *process.children(recursive=True)]
    except psutil.NoSuchProcess:
        return []


def run_command(name: str, command: list[str], env: dict[str, str]) -> CommandResult:
    """Run ``command``, sampling its process tree: a worker replaced by its nanny shows
    as more processes seen in all than were ever alive at once."""
    start = time.perf_counter()
    child = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=env)
    root = psutil.Process(child.pid)
    seen: set[int] = set()
    most = peak = 0
    while child.poll() is None:
        alive = _tree(root)
        pids = {p.pid for p in alive}
        seen |= pids
        most = max(most, len(pids))
        for process in alive:
            with contextlib.suppress(psutil.NoSuchProcess):
                peak = max(peak, process.memory_info().rss)
        time.sleep(0.05)
    _, stderr = child.communicate()
    return CommandResult(
        name,
        child.returncode,
        time.perf_counter() - start,
        stderr.decode("utf-8", "replace")[-4000:],
        max(0, len(seen) - most),
        peak,
    )


def lake_sources(lake: Path) -> tuple[set[str], Counter[str], int]:
    """File names the lake's ``instances`` and ``errors`` rows name, the error codes, and
    how many rows and error rows there are."""
    import dicomflow

    read = dicomflow.read_lake(str(lake))
    sources = read.instances(columns=["source"]).column(0).to_pylist()
    errors = read.errors().to_pylist()
    names = {s.rsplit("/", 1)[-1] for s in sources}
    names |= {str(e["source"]).rsplit("/", 1)[-1] for e in errors}
    return names, Counter(str(e["code"]) for e in errors), len(sources) + len(errors)


def shown(name: bytes) -> str:
    """A file name as rows show it (bytes that are not UTF-8 escaped)."""
    return name.decode("utf-8", "backslashreplace")


def files_outside(root: Path, before: set[str], allowed: tuple[Path, ...]) -> list[str]:
    """Files under ``root`` that were not there ``before`` and lie outside ``allowed``."""
    now = {os.fsdecode(os.path.join(d, f)) for d, _, fs in os.walk(os.fsencode(root)) for f in fs}
    prefixes = tuple(str(a) + os.sep for a in allowed)
    return sorted(p for p in now - before if not p.startswith(prefixes))


def run_campaign(mutants: Path, work: Path, workers: int = 2) -> list[CommandResult]:
    """The three commands over ``mutants``, each into its own lake under ``work``."""
    env = {**os.environ, KEY_ENV: "0" * 64}
    base = [sys.executable, "-m", "dicomflow"]
    common = ["--no-progress", "--workers", str(workers)]
    commands = {
        "scan": [*base, "scan", str(mutants), "--out", str(work / "scan"), *common],
        "ingest --pixels": [
            *base,
            "ingest",
            str(mutants),
            "--out",
            str(work / "pixels"),
            "--pixels",
            *common,
        ],
        "ingest --anonymize --dicom": [
            *base,
            "ingest",
            str(mutants),
            "--out",
            str(work / "anonymize"),
            "--anonymize",
            "--key-env",
            KEY_ENV,
            "--dicom",
            *common,
        ],
    }
    results = []
    for name, command in commands.items():
        result = run_command(name, command, env)
        lake = Path(command[command.index("--out") + 1])
        if (lake / "_ledger").exists():
            result.sources, result.error_codes, result.rows = lake_sources(lake)
        results.append(result)
    return results


def per_file_costs(mutants: Path) -> list[tuple[str, float, int]]:
    """Each mutant read, flattened and decoded alone in one child process (after one
    warm-up file, so imports count for none): (name, seconds, bytes), worst time first.
    The bytes are the larger of the file's peak of traced allocations (Python objects
    and NumPy arrays, ``tracemalloc``) and the growth of the process's peak RSS (native
    buffers, once they pass every earlier file's peak)."""
    code = (
        "import json, os, resource, sys, time, tracemalloc\n"
        "from tests.fuzz.campaign import one_file\n"
        "names = sorted(os.listdir(os.fsencode(sys.argv[1])))\n"
        "one_file(os.path.join(os.fsencode(sys.argv[1]), names[0]))  # imports, warm-up\n"
        "tracemalloc.start()\n"
        "out = []\n"
        "for name in names:\n"
        "    path = os.path.join(os.fsencode(sys.argv[1]), name)\n"
        "    before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss\n"
        "    tracemalloc.reset_peak()\n"
        "    base = tracemalloc.get_traced_memory()[0]\n"
        "    start = time.perf_counter()\n"
        "    one_file(path)\n"
        "    seconds = time.perf_counter() - start\n"
        "    traced = tracemalloc.get_traced_memory()[1] - base\n"
        "    grown = (resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - before) * 1024\n"
        "    out.append((os.fsdecode(name), seconds, max(traced, grown)))\n"
        "print(json.dumps(out))\n"
    )
    result = subprocess.run(
        [sys.executable, "-c", code, str(mutants)],
        capture_output=True,
        text=True,
        cwd=REPO,
        timeout=3600,
        check=True,
    )
    costs = [tuple(row) for row in json.loads(result.stdout)]
    return sorted(costs, key=lambda row: -row[1])  # type: ignore[return-value]


def one_file(path: bytes) -> None:
    """What a reading task does with one input: its header, its row, and its image
    decoded and encoded as its stack's chunks (:func:`encoded_rows`, nothing written)."""
    import warnings
    from datetime import UTC, datetime

    from dicomflow.connectors.files import FilesConnector
    from dicomflow.lake.layout import LakeLayout
    from dicomflow.operators.flatten import Flatten
    from dicomflow.pipelines.series_tasks import encoded_rows
    from dicomflow.pixels.series_writer import PixelOptions
    from dicomflow.records import Batch, RunContext, SourceRef

    name = os.fsdecode(path)
    ref = SourceRef(name, os.path.getsize(path))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        context = RunContext("fuzz", datetime.now(UTC))
        batch = Batch(tuple(FilesConnector((name,)).fetch([ref])), context)
        encoded_rows(time.time(), batch, (Flatten(),), PixelOptions(LakeLayout("unused-lake")))


def main() -> None:
    from tests.fuzz.mutants import write_mutants

    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--count", type=int, default=5000)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--work", type=Path, default=Path("fuzz-out"))
    args = parser.parse_args()
    mutants = args.work / "mutants"
    start = time.perf_counter()
    manifest = write_mutants(seeds(), mutants, args.count, seed=args.seed)
    elapsed = time.perf_counter() - start
    print(f"{len(manifest)} mutants of {len(seeds())} corpus files in {elapsed:.1f} s")
    print(dict(Counter(manifest.values())))
    names = {shown(n) for n in os.listdir(os.fsencode(mutants))}
    results = run_campaign(mutants, args.work)
    for result in results:
        missing = (
            len(names) - result.rows if "anonymize" in result.name else len(names - result.sources)
        )
        print(
            f"{result.name:28s} exit {result.returncode}  {result.seconds:6.1f} s "
            f"({len(names) / result.seconds:5.1f} files/s)  worker deaths {result.worker_deaths}"
            f"  unaccounted {missing}  peak RSS {result.peak_rss / 2**20:.0f} MiB"
        )
        print(f"{'':28s} error codes {dict(result.error_codes.most_common())}")
    corpus = run_command(
        "scan of the seeds",
        [
            sys.executable,
            "-m",
            "dicomflow",
            "scan",
            *map(str, seeds()),
            "--out",
            str(args.work / "corpus-scan"),
            "--no-progress",
            "--workers",
            "2",
        ],
        dict(os.environ),
    )
    mutant_scan = next(r for r in results if r.name == "scan")
    per_mutant = mutant_scan.seconds / len(names)
    per_seed = corpus.seconds / len(seeds())
    print(
        f"scan per file: mutants {per_mutant * 1e3:.1f} ms, corpus {per_seed * 1e3:.1f} ms"
        f" ({per_mutant / per_seed:.2f}x; at most 3x allowed)"
    )
    worst = per_file_costs(mutants)
    by_memory = max(worst, key=lambda row: row[2])
    print(f"worst file by time: {worst[0][0]} {worst[0][1]:.2f} s")
    print(f"worst file by memory: {by_memory[0]} +{by_memory[2] / 2**20:.0f} MiB")


if __name__ == "__main__":
    main()
