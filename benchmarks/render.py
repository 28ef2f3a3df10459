"""Benchmark: ``dicomflow ingest --renders`` (256-px PNG thumbnails) against a naive loop.

Synthesizes a 400-slice CT series (512×512, 16-bit, uncompressed; the phantom of
``pixels.py``) and times, in the same run:

* baseline: one process, per file ``pydicom.dcmread(f).pixel_array``, the rescale and
  the file's window in numpy, a Pillow thumbnail of 256 px and a PNG save;
* dicomflow with the cluster up: ``dicomflow.ingest(..., operators=[RenderOperator()])``
  on a running local cluster (which also writes the ``instances`` table);
* both whole commands, end to end: ``python benchmarks/render.py --baseline-only …``
  against ``dicomflow ingest SRC --out LAKE --renders``, each a fresh process (imports,
  cluster start and stop included).

Prints thumbnails/s for each and the ratios. Best of ``--repeat`` runs per side.
"""

from __future__ import annotations

import argparse
import os
import shutil
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import pydicom
from PIL import Image

sys.path.insert(0, str(Path(__file__).parent))

from whole_command import dicomflow_ingest, end_to_end, whole

SIZE = 256


def naive_thumbnails(paths: list[Path], out: Path) -> float:
    """The baseline loop; returns its seconds."""
    out.mkdir(parents=True, exist_ok=True)
    start = time.perf_counter()
    for path in paths:
        ds = pydicom.dcmread(path)
        values = ds.pixel_array * float(ds.RescaleSlope) + float(ds.RescaleIntercept)
        center, width = float(ds.WindowCenter), float(ds.WindowWidth)
        low = center - width / 2
        scaled = np.clip((values - low) / width * 255.0, 0, 255).astype(np.uint8)
        image = Image.fromarray(scaled)
        image.thumbnail((SIZE, SIZE), Image.Resampling.LANCZOS)
        image.save(out / f"{path.stem}.png")
    return time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("-n", type=int, default=400, help="slices (default 400)")
    parser.add_argument("--repeat", type=int, default=2)
    parser.add_argument("--workers", type=int, default=None)
    parser.add_argument("--baseline-only", nargs=2, metavar=("SRC", "OUT"), default=None)
    args = parser.parse_args()
    if args.baseline_only:
        src, out = map(Path, args.baseline_only)
        naive_thumbnails(sorted(src.glob("*.dcm")), out)
        return

    from synth import write_phantom_series

    import dicomflow
    from dicomflow.pipelines.cluster import open_client

    work = Path(tempfile.mkdtemp(prefix="dicomflow-renderbench-"))
    try:
        data = work / "series"
        paths = write_phantom_series(data, args.n, size=512)
        for path in paths:  # the naive loop needs a window: give the series a soft-tissue one
            ds = pydicom.dcmread(path)
            ds.WindowCenter, ds.WindowWidth = 40, 400
            ds.save_as(path)
        print(f"{args.n} CT slices of 512x512 -> {SIZE}-px PNG thumbnails; best of {args.repeat}")
        base, ours = [], []
        start = time.perf_counter()
        with open_client(workers=args.workers) as client:
            startup = time.perf_counter() - start
            for _ in range(args.repeat):
                shutil.rmtree(work / "naive", ignore_errors=True)
                os.sync()
                base.append(naive_thumbnails(paths, work / "naive"))
                shutil.rmtree(work / "lake", ignore_errors=True)
                os.sync()
                start = time.perf_counter()
                summary = dicomflow.ingest(
                    [str(data)],
                    out=str(work / "lake"),
                    client=client,
                    progress=False,
                    operators=[dicomflow.RenderOperator()],
                )
                ours.append(time.perf_counter() - start)
                assert summary.rows == args.n and summary.errors == 0, summary
        assert len(list((work / "lake" / "renders").rglob("*.png"))) == args.n
        b, o = min(base), min(ours)
        print(f"local cluster start-up: {startup:.1f} s")
        print(
            f"cluster up:  baseline {args.n / b:6.1f}/s | dicomflow {args.n / o:6.1f}/s "
            f"(ratio {b / o:.2f}x)"
        )
        here = Path(__file__).resolve()
        whole_base, whole_ours = [], []
        for _ in range(args.repeat):
            shutil.rmtree(work / "naive", ignore_errors=True)
            naive = [sys.executable, str(here), "--baseline-only", str(data), str(work / "naive")]
            whole_base.append(whole(naive))
            shutil.rmtree(work / "lake", ignore_errors=True)
            ours = dicomflow_ingest(data, work / "lake", "--renders", workers=args.workers)
            whole_ours.append(whole(ours))
        print(end_to_end(args.n, min(whole_base), min(whole_ours)))
    finally:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
