"""Benchmark: ``dicomflow ingest --pixels`` against a naive pydicom + Zarr loop, in one run.

Synthesizes a 400-slice CT series (512×512, 16-bit, a phantom with noise) three
ways: uncompressed, RLE and JPEG 2000 lossless. For each, times:

* baseline: one process, ``pydicom.dcmread(f).pixel_array`` per file, stacked and
  written with the same Zarr codec and chunking (Blosc-LZ4, one frame per chunk);
* dicomflow: ``ingest(pixels=True)`` with defaults on a local cluster (start-up
  included), which also writes the metadata tables and the geometry.

Prints decoded MB/s for both, the ratio per transfer syntax (with the cluster
already running, and end to end with its start-up added) and the Zarr
compression ratio. It also times dicomflow's decode alone, one slice after another
in this process, as each worker decodes: the workers cannot beat the baseline by
more than the baseline's time over that decode time shared among them ("decode
bound"), whatever the rest costs. Best of ``--repeat`` runs per side; dirty pages are
flushed (``os.sync``) before each timed run, so neither side pays for the other's writes.
The ratio of each repeat's pair of runs is printed too (their spread is the machine's
noise), and so is what creating a file costs in the work folder: both sides create one
chunk file a slice, and on some virtual machines that costs more than decoding an
uncompressed slice.
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
import zarr
from pydicom.dataset import FileMetaDataset
from pydicom.uid import ExplicitVRLittleEndian, JPEG2000Lossless, RLELossless, generate_uid
from zarr.codecs import BloscCodec

sys.path.insert(0, str(Path(__file__).parent))

from synth import ct_dataset

import dicomflow
from dicomflow.pipelines.cluster import open_client
from dicomflow.pixels.decode import decode, read_dataset

SYNTAXES = {
    "uncompressed": ExplicitVRLittleEndian,
    "rle": RLELossless,
    "j2k-lossless": JPEG2000Lossless,
}


def phantom(index: int, size: int) -> np.ndarray:
    """A body-like ellipse with organs and noise: compressible, like real CT."""
    y, x = np.mgrid[:size, :size]
    centre = size / 2
    body = ((x - centre) / (0.42 * size)) ** 2 + ((y - centre) / (0.32 * size)) ** 2 <= 1
    organ = ((x - centre * 0.8) / (0.1 * size)) ** 2 + ((y - centre) / (0.08 * size)) ** 2 <= 1
    image = np.full((size, size), -1000, np.int16)
    image[body] = 40
    image[organ] = 60 + index % 7
    noise = np.random.default_rng(index).integers(-15, 16, (size, size), dtype=np.int16)
    return image + noise * body


def write_series(out: Path, n: int, syntax: str, size: int) -> list[Path]:
    out.mkdir(parents=True, exist_ok=True)
    study, series, frame_of_ref = generate_uid(), generate_uid(), generate_uid()
    paths = []
    for i in range(n):
        ds = ct_dataset(
            i, study=study, series=series, frame_of_ref=frame_of_ref, rows=size, cols=size
        )
        ds.PixelData = phantom(i, size).tobytes()
        ds.BitsStored, ds.HighBit = 12, 11  # as most CT scanners store
        meta = FileMetaDataset()
        meta.MediaStorageSOPClassUID = ds.SOPClassUID
        meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID
        meta.TransferSyntaxUID = ExplicitVRLittleEndian
        ds.file_meta = meta
        if SYNTAXES[syntax] != ExplicitVRLittleEndian:
            ds.compress(SYNTAXES[syntax])
        path = out / f"{i:04d}.dcm"
        ds.save_as(path, enforce_file_format=True)
        paths.append(path)
    return paths


def baseline(paths: list[Path], out: Path) -> float:
    start = time.perf_counter()
    frames = [pydicom.dcmread(p).pixel_array for p in paths]
    volume = np.stack(frames)
    array = zarr.create_array(
        str(out),
        shape=volume.shape,
        chunks=(1, *volume.shape[1:]),
        dtype=volume.dtype,
        compressors=[BloscCodec(cname="lz4", clevel=5, shuffle="bitshuffle")],
        overwrite=True,
    )
    array[:] = volume
    return time.perf_counter() - start


def decode_alone(paths: list[Path]) -> float:
    """Seconds to decode ``paths`` one after another (files already parsed), the way each
    worker decodes: the same codec plugins, one thread, the Modality LUT applied."""
    datasets = []
    for path in paths:
        with path.open("rb") as fp:
            datasets.append(read_dataset(fp))
    start = time.perf_counter()
    for ds in datasets:
        decode(ds)
    return time.perf_counter() - start


def file_creation(folder: Path, count: int = 200) -> float:
    """Seconds to create one empty file in a new folder under ``folder``."""
    probe = Path(tempfile.mkdtemp(dir=folder))
    start = time.perf_counter()
    for number in range(count):
        (probe / str(number)).touch()
    elapsed = time.perf_counter() - start
    shutil.rmtree(probe)
    return elapsed / count


def stored_bytes(path: Path) -> int:
    """Bytes of the chunk files (named ``c.<z>.0.0`` in dicomflow's stacks, kept under
    ``c/`` by zarr's default key encoding)."""
    return sum(
        p.stat().st_size
        for p in path.rglob("*")
        if p.is_file() and (p.name.startswith("c.") or "c" in p.relative_to(path).parts)
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("-n", type=int, default=400, help="slices (default 400)")
    parser.add_argument("--size", type=int, default=512)
    parser.add_argument("--repeat", type=int, default=2)
    parser.add_argument("--workers", type=int, default=None)
    args = parser.parse_args()
    work = Path(tempfile.mkdtemp(prefix="dicomflow-pixbench-"))
    decoded_mb = args.n * args.size * args.size * 2 / 1e6
    try:
        print(
            f"{args.n} slices of {args.size}x{args.size} int16 = {decoded_mb:.0f} MB decoded;"
            f" best of {args.repeat}"
        )
        start = time.perf_counter()
        with open_client(workers=args.workers) as client:
            startup = time.perf_counter() - start
            workers = len(client.scheduler_info()["workers"])
            print(f"local cluster start-up: {startup:.1f} s (added to 'end to end')")
            for syntax in SYNTAXES:
                data = work / syntax
                paths = write_series(data, args.n, syntax, args.size)
                base, ours, alone = [], [], []
                lake = work / f"lake-{syntax}"
                creation = file_creation(work)
                for _ in range(args.repeat):
                    os.sync()  # neither side pays for flushing the other's writes
                    base.append(baseline(paths, work / "baseline.zarr"))
                    shutil.rmtree(lake, ignore_errors=True)
                    os.sync()
                    start = time.perf_counter()
                    summary = dicomflow.ingest(
                        [str(data)], out=str(lake), client=client, progress=False, pixels=True
                    )
                    ours.append(time.perf_counter() - start)
                    assert summary.rows == args.n and summary.errors == 0
                    alone.append(decode_alone(paths))
                compression = decoded_mb * 1e6 / stored_bytes(lake / "pixels.zarr")
                b, o, d = min(base), min(ours), min(alone)
                pairs = sorted(x / y for x, y in zip(base, ours, strict=True))
                print(
                    f"{syntax:13s} baseline {decoded_mb / b:6.1f} MB/s | dicomflow "
                    f"{decoded_mb / o:6.1f} MB/s (ratio {b / o:.2f}x), end to end "
                    f"{decoded_mb / (o + startup):6.1f} MB/s (ratio {b / (o + startup):.2f}x)"
                    f" | zarr compression {compression:.1f}:1"
                )
                print(
                    f"{'':13s} decode alone {d / args.n * 1e3:5.2f} ms a slice on one core:"
                    f" decode bound on {workers} workers {b / (d / workers):.2f}x"
                )
                print(
                    f"{'':13s} each repeat's ratio {pairs[0]:.2f}-{pairs[-1]:.2f}x; creating a"
                    f" file here {creation * 1e6:.0f} us (one a slice on each side)"
                )
    finally:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
