"""Benchmark: ``dicomflow ingest --pixels`` against a naive pydicom + Zarr loop, in one run.

Synthesizes a 400-slice CT series (512×512, 16-bit, a phantom with noise) three
ways: uncompressed, RLE and JPEG 2000 lossless. For each, times:

* baseline: one process, ``pydicom.dcmread(f).pixel_array`` per file, stacked and
  written with the same Zarr codec and chunking (Blosc-LZ4, one frame per chunk);
* dicomflow: ``ingest(pixels=True)`` with defaults on a running local cluster of
  worker processes, which also writes the metadata tables and the geometry.

Prints decoded MB/s for both, the ratio per transfer syntax (with the cluster
already running, and with its start-up added) and the Zarr compression ratio. Then
it times both whole commands, as a user waits for them: ``python benchmarks/pixels.py
--baseline-only SRC OUT`` against ``dicomflow ingest SRC --out LAKE --pixels``, each a
fresh process (imports included, and dicomflow's own choice of running a job this
small in its process or on worker processes).

It also times dicomflow's decode alone, one slice after another in this process, as each
worker decodes: the workers cannot beat the baseline by more than the baseline's time
over that decode time shared among them ("decode bound"), whatever the rest costs; the
share is that shared decode time over dicomflow's run. That bound assumes each worker
decodes as fast as one process alone, so the same decode is also timed in as many
processes as workers, started together, each decoding its share of the slices
(:func:`decode_alone_at_once`): the bound the machine gives, and the share of it. Best
of ``--repeat`` runs per side; dirty pages are flushed (``os.sync``) before each timed
run, so neither side pays for the other's writes. The ratio of each repeat's pair of
runs is printed too (their spread is the machine's noise), and so is what creating a
file costs in the work folder: the naive loop creates one chunk file a slice (dicomflow
one shard file for many slices), and on some virtual machines that costs more than
decoding an uncompressed slice.

Last, with the cluster shut down, it prints what a slice costs on one core (one
process, ``--split-slices`` slices of each series, best of two passes), split into
read, header, decode, encode and write, for the naive loop and for dicomflow's own
steps (see :func:`naive_split` and :func:`dicomflow_split`).
"""

from __future__ import annotations

import argparse
import importlib
import multiprocessing
import os
import queue
import shutil
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from io import BytesIO
from pathlib import Path
from typing import Any

import numcodecs
import numpy as np
import pydicom
import zarr
from pydicom.uid import ExplicitVRLittleEndian, JPEG2000Lossless, RLELossless
from zarr.codecs import BloscCodec

sys.path.insert(0, str(Path(__file__).parent))

from synth import write_phantom_series
from whole_command import dicomflow_ingest, end_to_end, whole

SYNTAXES = {
    "uncompressed": ExplicitVRLittleEndian,
    "rle": RLELossless,
    "j2k-lossless": JPEG2000Lossless,
}


def zarr_write(frames: list[np.ndarray], out: Path) -> None:
    """The naive loop's write: the frames stacked and written with zarr, one frame a chunk."""
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


def baseline(paths: list[Path], out: Path) -> float:
    start = time.perf_counter()
    zarr_write([pydicom.dcmread(p).pixel_array for p in paths], out)
    return time.perf_counter() - start


def decode_alone(paths: list[Path], ready: Callable[[], object] | None = None) -> float:
    """Seconds to decode ``paths`` one after another (headers already read, files in
    memory), the way each worker decodes: a plain monochrome image from its header and
    Pixel Data (:mod:`dicomflow.pixels.plain`), any other through pydicom with the same
    codec plugins, one thread, the Modality LUT applied."""
    from dicomflow.pixels.decode import decode, read_dataset

    steps = OurSteps.find()
    inputs = []
    for path in paths:
        data = path.read_bytes()
        inputs.append((steps.read_header(BytesIO(data), size=len(data), salvage=True), data))
    if ready is not None:
        ready()  # the inputs are read: wait for the others (see decode_alone_at_once)
    start = time.perf_counter()
    for header, data in inputs:
        _decode_as_workers(steps, header, data, decode, read_dataset)
    return time.perf_counter() - start


def decode_alone_at_once(paths: list[Path], processes: int) -> float:
    """Seconds for ``processes`` processes, started together, to decode ``paths`` between
    them as :func:`decode_alone` does (each every ``processes``-th slice): what the machine
    gives two decoders at once, where the decode bound assumes each runs as fast as one
    alone (two cores sharing caches and memory bandwidth may not)."""
    context = multiprocessing.get_context("spawn")  # no fork of a process running a cluster
    messages, go = context.Queue(), context.Event()
    workers = [
        context.Process(target=_decode_share, args=(paths[n::processes], messages, go))
        for n in range(processes)
    ]
    for worker in workers:
        worker.start()
    try:
        for _ in workers:  # each has imported and read its files
            _message(messages, workers)
        go.set()
        return max(_message(messages, workers) for _ in workers)
    finally:
        for worker in workers:
            if not go.is_set():  # one failed before the start: the others wait for nothing
                worker.kill()
            worker.join()


def _message(messages: Any, workers: list[Any]) -> Any:
    """The next message of the decoding processes; an exit if one of them failed, or if
    every one has ended with none left to send."""
    while True:
        try:
            return messages.get(timeout=1)
        except queue.Empty:
            failed = any(w.exitcode not in (None, 0) for w in workers)
            if failed or all(w.exitcode is not None for w in workers):
                raise SystemExit("benchmarks/pixels.py: a decoding process failed") from None


def _decode_share(paths: list[Path], messages: Any, go: Any) -> None:
    """One process of :func:`decode_alone_at_once`: warm up, say so, wait for the word,
    decode, and send the seconds."""
    decode_alone(paths[:1])
    messages.put(decode_alone(paths, ready=lambda: (messages.put("ready"), go.wait())))


def _decode_as_workers(
    steps: OurSteps, header: Any, data: bytes, decode: Any, read_dataset: Any
) -> np.ndarray:
    image = steps.plain_image.of(header)
    pixels = image.read(BytesIO(data)) if image is not None else None
    if pixels is None:
        ds = steps.dataset_from_header(header, BytesIO(data)) or read_dataset(BytesIO(data))
        pixels = decode(ds)
    return pixels.array


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


STEPS = ("read", "header", "decode", "encode", "write")
SPLIT_PASSES = 2


def _required(module: str, name: str) -> Any:
    """``module.name``, or an exit that names it: dicomflow's pixel path is being
    reworked, and a split that quietly timed something else would mislead."""
    try:
        return getattr(importlib.import_module(module), name)
    except (ImportError, AttributeError) as exc:
        raise SystemExit(
            f"benchmarks/pixels.py: {module}.{name} is missing ({exc}); the per-slice split"
            " needs it (point the split at what replaced it)"
        ) from exc


@dataclass(frozen=True)
class OurSteps:
    """dicomflow's functions for one slice's work, looked up when the benchmark starts."""

    read_header: Callable[..., Any]
    pydicom_mode: Callable[..., Any]
    flatten_record: Callable[..., Any]
    row_context: Callable[..., Any]
    source_ref: Callable[..., Any]
    instance_record: Callable[..., Any]
    dataset_from_header: Callable[..., Any]
    plain_image: Any
    chunk_encoder: Callable[[], Callable[[np.ndarray], bytes | None]]
    frames_per_shard: Callable[..., int]
    shard_bytes: Callable[..., bytes | None]

    @classmethod
    def find(cls) -> OurSteps:
        return cls(
            read_header=_required("dicomflow.dicom.header", "read_header"),
            pydicom_mode=_required("dicomflow.dicom.header", "pydicom_mode"),
            flatten_record=_required("dicomflow.operators.flatten", "flatten_record"),
            row_context=_required("dicomflow.dicom.rows", "RowContext"),
            source_ref=_required("dicomflow.records", "SourceRef"),
            instance_record=_required("dicomflow.records", "InstanceRecord"),
            dataset_from_header=_required("dicomflow.pixels.header_dataset", "dataset_from_header"),
            plain_image=_required("dicomflow.pixels.plain", "PlainImage"),
            chunk_encoder=_required("dicomflow.lake.zarr_store", "ChunkEncoder"),
            frames_per_shard=_required("dicomflow.lake.zarr_store", "frames_per_shard"),
            shard_bytes=_required("dicomflow.lake.shards", "shard_bytes"),
        )


@dataclass
class Split:
    """Seconds spent in each step over a run of slices: wall time and process CPU time."""

    wall: dict[str, float]
    cpu: dict[str, float]

    @classmethod
    def empty(cls) -> Split:
        return cls(dict.fromkeys(STEPS, 0.0), dict.fromkeys(STEPS, 0.0))

    def best(self, other: Split) -> Split:
        """Each step's smaller time (the machine's noise only adds)."""
        return Split(
            {step: min(self.wall[step], other.wall[step]) for step in STEPS},
            {step: min(self.cpu[step], other.cpu[step]) for step in STEPS},
        )

    def per(self, slices: int) -> Split:
        return Split(
            {step: seconds / slices for step, seconds in self.wall.items()},
            {step: seconds / slices for step, seconds in self.cpu.items()},
        )


class Clock:
    """Adds the time since the last mark to a step."""

    def __init__(self, split: Split) -> None:
        self.split = split
        self.wall, self.cpu = time.perf_counter(), time.process_time()

    def mark(self, step: str) -> None:
        wall, cpu = time.perf_counter(), time.process_time()
        self.split.wall[step] += wall - self.wall
        self.split.cpu[step] += cpu - self.cpu
        self.wall, self.cpu = wall, cpu


def naive_split(paths: list[Path], out: Path) -> Split:
    """The naive loop's steps: read = the file's bytes; header = ``pydicom.dcmread`` of them
    (pydicom's whole parse); decode = ``.pixel_array``; encode = zarr's Blosc codec
    (numcodecs' Blosc, as configured in :func:`zarr_write`) on each frame alone; write =
    :func:`zarr_write` of the frames (which encodes them again) less that encode time:
    the rest of what zarr's write costs, its bookkeeping and one chunk file a slice."""
    split = Split.empty()
    codec = numcodecs.Blosc(cname="lz4", clevel=5, shuffle=numcodecs.Blosc.BITSHUFFLE)
    frames = []
    clock = Clock(split)
    for path in paths:
        data = path.read_bytes()
        clock.mark("read")
        ds = pydicom.dcmread(BytesIO(data))
        clock.mark("header")
        frames.append(ds.pixel_array)
        clock.mark("decode")
        codec.encode(frames[-1])
        clock.mark("encode")
    zarr_write(frames, out)
    clock.mark("write")
    split.wall["write"] -= split.wall["encode"]
    split.cpu["write"] -= split.cpu["encode"]
    return split


def dicomflow_split(paths: list[Path], out: Path, steps: OurSteps) -> Split:
    """dicomflow's steps for a slice, as its tasks run them: read = the file's bytes;
    header = the header reader, then flatten into the ``instances`` row; decode = a plain
    monochrome image decoded from that header and its Pixel Data, any other through
    pydicom's dataset built from the header (:func:`dicomflow.pixels.decode.decode`),
    the Modality LUT applied; encode = the lake's chunk
    encoder, frame by frame; write = the encoded frames assembled into the stack's
    shards (as many frames a shard as the lake puts in one) and each shard written to a
    new file in ``out``."""
    from dicomflow.pixels.decode import decode, read_dataset

    split = Split.empty()
    out.mkdir(parents=True)
    context = steps.row_context("split", datetime.now(UTC))
    memo: dict[Any, Any] = {}  # as flatten keeps one per batch
    encode = steps.chunk_encoder()
    chunks: list[bytes | None] = []
    with steps.pydicom_mode(pydicom.config.WARN):  # as the flatten operator reads
        clock = Clock(split)
        for path in paths:
            data = path.read_bytes()
            clock.mark("read")
            header = steps.read_header(BytesIO(data), size=len(data), salvage=True)
            record = steps.instance_record(steps.source_ref(str(path), len(data)), header=header)
            steps.flatten_record(record, context, memo)
            clock.mark("header")
            array = _decode_as_workers(steps, header, data, decode, read_dataset)
            clock.mark("decode")
            chunks += [encode(array[frame : frame + 1]) for frame in range(len(array))]
            clock.mark("encode")
        per_shard = steps.frames_per_shard((len(chunks), *array.shape[1:]), array.dtype)
        for number, first in enumerate(range(0, len(chunks), per_shard)):
            shard = steps.shard_bytes(chunks[first : first + per_shard])
            if shard is not None:
                (out / f"c.{number}.0.0").write_bytes(shard)
        clock.mark("write")
    return split


def per_slice_split(paths: list[Path], work: Path, steps: OurSteps) -> dict[str, Split]:
    """Each side's split over ``paths`` (after one slice each to warm up), best of
    ``SPLIT_PASSES`` passes, in seconds per slice."""
    naive_split(paths[:1], work / "warm.zarr")
    dicomflow_split(paths[:1], work / "warm", steps)
    best: dict[str, Split] = {}
    for attempt in range(SPLIT_PASSES):
        for side, run in (
            ("naive", lambda out: naive_split(paths, out)),
            ("dicomflow", lambda out: dicomflow_split(paths, out, steps)),
        ):
            out = work / f"split-{side}-{attempt}"
            os.sync()
            split = run(out)
            best[side] = split if side not in best else best[side].best(split)
            shutil.rmtree(out, ignore_errors=True)
    shutil.rmtree(work / "warm.zarr", ignore_errors=True)
    shutil.rmtree(work / "warm", ignore_errors=True)
    return {side: split.per(len(paths)) for side, split in best.items()}


def print_splits(splits: dict[str, dict[str, Split]], slices: int) -> None:
    print(
        f"\na slice on one core, ms (one process, {slices} slices of each series, best of"
        f" {SPLIT_PASSES} passes):"
    )
    print(f"{'':13s} {'':9s}" + "".join(f"{s:>8s}" for s in (*STEPS, "sum", "cpu")))
    for syntax, sides in splits.items():
        for number, (side, split) in enumerate(sides.items()):
            cells = [*split.wall.values(), sum(split.wall.values()), sum(split.cpu.values())]
            label = syntax if number == 0 else ""
            print(f"{label:13s} {side:9s}" + "".join(f"{c * 1e3:8.2f}" for c in cells))
    print(
        "naive: header = pydicom.dcmread of the bytes, decode = .pixel_array, encode = the"
        " Blosc codec alone, write = zarr's write of the frames less that encode.\n"
        "dicomflow: header = header reader + flatten, decode = a plain monochrome image"
        " from the header and its Pixel Data, any other through pydicom's dataset built"
        " from the header (Modality LUT applied), encode = the lake's chunk encoder,"
        " write = the shards assembled and written (a file a shard).\n"
        "cpu = the process's CPU time for the slice (above the sum: more than one thread)."
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("-n", type=int, default=400, help="slices (default 400)")
    parser.add_argument("--size", type=int, default=512)
    parser.add_argument("--repeat", type=int, default=2)
    parser.add_argument("--workers", type=int, default=None)
    parser.add_argument(
        "--split-slices",
        type=int,
        default=50,
        help="slices of each series in the per-slice split on one core (0: no split)",
    )
    parser.add_argument(
        "--baseline-only",
        nargs=2,
        metavar=("SRC", "OUT"),
        help="run only the naive loop over SRC/*.dcm into the Zarr array OUT (the whole"
        " baseline command that the benchmark times)",
    )
    args = parser.parse_args()
    if args.baseline_only:
        src, out = map(Path, args.baseline_only)
        baseline(sorted(src.glob("*.dcm")), out)
        return

    import dicomflow
    from dicomflow.pipelines.cluster import open_client

    steps = OurSteps.find() if args.split_slices else None  # fail now, not after the runs
    work = Path(tempfile.mkdtemp(prefix="dicomflow-pixbench-"))
    series: dict[str, list[Path]] = {}
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
            print(f"local cluster start-up: {startup:.1f} s (added in 'cluster start added')")
            for syntax in SYNTAXES:
                data = work / syntax
                paths = write_phantom_series(
                    data, args.n, size=args.size, transfer_syntax=SYNTAXES[syntax]
                )
                series[syntax] = paths
                base, ours, alone, at_once = [], [], [], []
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
                    at_once.append(decode_alone_at_once(paths, workers))
                compression = decoded_mb * 1e6 / stored_bytes(lake / "pixels.zarr")
                b, o, d, m = min(base), min(ours), min(alone), min(at_once)
                pairs = sorted(x / y for x, y in zip(base, ours, strict=True))
                print(
                    f"{syntax:13s} baseline {decoded_mb / b:6.1f} MB/s | dicomflow "
                    f"{decoded_mb / o:6.1f} MB/s (ratio {b / o:.2f}x), cluster start added "
                    f"{decoded_mb / (o + startup):6.1f} MB/s (ratio {b / (o + startup):.2f}x)"
                    f" | zarr compression {compression:.1f}:1"
                )
                print(
                    f"{'':13s} decode alone {d / args.n * 1e3:5.2f} ms a slice on one core:"
                    f" decode bound on {workers} workers {b / (d / workers):.2f}x (share"
                    f" {d / workers / o:.2f}); {workers} processes decoding at once"
                    f" {b / m:.2f}x (share {m / o:.2f})"
                )
                print(
                    f"{'':13s} each repeat's ratio {pairs[0]:.2f}-{pairs[-1]:.2f}x; creating a"
                    f" file here {creation * 1e6:.0f} us (the naive loop creates one a slice)"
                )
        print(
            "\nwhole commands, each a fresh process (imports, and dicomflow's choice of an"
            " in-process or a process cluster, included):"
        )
        here = Path(__file__).resolve()
        for syntax, paths in series.items():
            whole_base, whole_ours = [], []
            for _ in range(args.repeat):
                shutil.rmtree(work / "baseline.zarr", ignore_errors=True)
                naive = [sys.executable, str(here), "--baseline-only", str(paths[0].parent)]
                whole_base.append(whole([*naive, str(work / "baseline.zarr")]))
                lake = work / f"lake-{syntax}"
                shutil.rmtree(lake, ignore_errors=True)
                whole_ours.append(whole(dicomflow_ingest(paths[0].parent, lake, "--pixels")))
            print(f"{syntax:13s} {end_to_end(args.n, min(whole_base), min(whole_ours))}")
        if steps is not None:  # with the cluster shut down: one process alone
            splits = {
                syntax: per_slice_split(paths[: args.split_slices], work, steps)
                for syntax, paths in series.items()
            }
            print_splits(splits, min(args.split_slices, args.n))
    finally:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
