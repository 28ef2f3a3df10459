"""Benchmark: ``dicomflow ingest --sr`` against a naive loop over highdicom's parser.

Copies every SR document of the shared corpus (24 files: TID 1500 reports from
highdicom and dcmqi, DCMTK and pydicom samples, CT, projection X-ray, mammography and
NM dose reports; 11,000 content items in all) ``--copies`` times into one folder, and
times, in the same run:

* baseline: one process, per file ``pydicom.dcmread`` and highdicom's parser:
  ``highdicom.sr.srread`` for the classes it reads (Enhanced, Comprehensive and
  Comprehensive 3D SR), ``highdicom.sr.ContentSequence.from_sequence`` on the content
  of the others; documents highdicom refuses still count, at the time they took;
* dicomflow with the cluster up: ``dicomflow.ingest(..., operators=[SrOperator()])``
  on a running local cluster (which also writes ``instances``, ``sr_content`` and
  ``measurements``);
* both whole commands, end to end: ``python benchmarks/sr.py --baseline-only SRC``
  against ``dicomflow ingest SRC --out LAKE --sr``, each a fresh process (imports,
  cluster start and stop included).

Prints documents/s for each and the ratios. Best of ``--repeat`` runs per side.
"""

from __future__ import annotations

import argparse
import os
import shutil
import sys
import tempfile
import time
import warnings
from pathlib import Path

import pydicom

sys.path.insert(0, str(Path(__file__).parent))

from whole_command import dicomflow_ingest, end_to_end, whole

CORPUS = Path(
    os.environ.get("DICOMFLOW_CORPUS", Path(__file__).resolve().parents[2] / "shared" / "corpus")
)
SR_PREFIX = "1.2.840.10008.5.1.4.1.1.88."
HIGHDICOM_CLASSES = {
    "1.2.840.10008.5.1.4.1.1.88.22",  # Enhanced SR
    "1.2.840.10008.5.1.4.1.1.88.33",  # Comprehensive SR
    "1.2.840.10008.5.1.4.1.1.88.34",  # Comprehensive 3D SR
}


def corpus_sr() -> list[Path]:
    rows = (CORPUS / "MANIFEST.tsv").read_text().splitlines()[1:]
    return [CORPUS / r.split("\t")[0] for r in rows if r.split("\t")[5].startswith(SR_PREFIX)]


def naive_parse(paths: list[Path]) -> tuple[float, int]:
    """The baseline loop; returns its seconds and how many documents highdicom refused."""
    import highdicom as hd

    refused = 0
    start = time.perf_counter()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        for path in paths:
            ds = pydicom.dcmread(path)
            try:
                if ds.SOPClassUID in HIGHDICOM_CLASSES:
                    hd.sr.srread(path)
                else:
                    hd.sr.ContentSequence.from_sequence(ds.ContentSequence, is_root=False)
            except (AttributeError, ValueError, IndexError, RuntimeError):
                refused += 1
    return time.perf_counter() - start, refused


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--copies", type=int, default=10, help="copies of each document")
    parser.add_argument("--repeat", type=int, default=2)
    parser.add_argument("--workers", type=int, default=None)
    parser.add_argument("--baseline-only", metavar="SRC", default=None)
    args = parser.parse_args()
    if args.baseline_only:
        naive_parse(sorted(Path(args.baseline_only).glob("*.dcm")))
        return
    if not (CORPUS / "MANIFEST.tsv").exists():
        sys.exit(f"the shared corpus is not at {CORPUS} (set DICOMFLOW_CORPUS)")

    import dicomflow
    from dicomflow.pipelines.cluster import open_client

    work = Path(tempfile.mkdtemp(prefix="dicomflow-srbench-"))
    try:
        data = work / "reports"
        data.mkdir()
        for copy in range(args.copies):
            for number, path in enumerate(corpus_sr()):
                shutil.copy(path, data / f"{copy:03d}-{number:02d}.dcm")
        paths = sorted(data.glob("*.dcm"))
        n = len(paths)
        print(f"{n} SR documents ({args.copies} copies of the corpus's); best of {args.repeat}")
        base, ours = [], []
        start = time.perf_counter()
        with open_client(workers=args.workers) as client:
            startup = time.perf_counter() - start
            for _ in range(args.repeat):
                seconds, refused = naive_parse(paths)
                base.append(seconds)
                shutil.rmtree(work / "lake", ignore_errors=True)
                os.sync()
                start = time.perf_counter()
                summary = dicomflow.ingest(
                    [str(data)],
                    out=str(work / "lake"),
                    client=client,
                    progress=False,
                    operators=[dicomflow.SrOperator()],
                )
                ours.append(time.perf_counter() - start)
                assert summary.rows == n and summary.errors == 0, summary
        items = dicomflow.read_lake(str(work / "lake")).table("sr_content").num_rows
        b, o = min(base), min(ours)
        print(f"highdicom refused {refused} of {n} documents (timed all the same)")
        print(f"dicomflow wrote {items} sr_content rows")
        print(f"local cluster start-up: {startup:.1f} s")
        print(
            f"cluster up:  baseline {n / b:6.1f}/s | dicomflow {n / o:6.1f}/s (ratio {b / o:.2f}x)"
        )
        here = Path(__file__).resolve()
        whole_base, whole_ours = [], []
        for _ in range(args.repeat):
            whole_base.append(whole([sys.executable, str(here), "--baseline-only", str(data)]))
            shutil.rmtree(work / "lake", ignore_errors=True)
            ours = dicomflow_ingest(data, work / "lake", "--sr", workers=args.workers)
            whole_ours.append(whole(ours))
        print(end_to_end(n, min(whole_base), min(whole_ours)))
    finally:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
