"""Benchmark: how many files or objects one series of pixels becomes, and what writing
it asks of an S3 server.

Synthesizes one CT series (``-n`` slices, 400 by default, of 512×512 uncompressed:
the phantom of :mod:`synth`) and ingests it with pixels twice, each run with its own
local cluster, as a user would:

* into a local lake: counts the files under ``pixels.zarr`` (the lake holds only
  this series), the Zarr metadata documents (``zarr.json``) apart from the data
  (chunk or shard) files;
* into a bucket lake (``s3://…``) on moto's S3 server, started here on loopback:
  counts the requests the server answered during the run, by S3 operation, those
  on the pixel stacks' keys (under ``pixels.zarr/``, or listing that prefix) apart,
  and the objects under ``pixels.zarr/`` afterwards.

Requests are counted at the server, not in dicomflow: moto's WSGI application is
served as ``ThreadedMotoServer`` serves it, behind a wrapper that notes each
request's method, path and query. dicomflow is used only through
``dicomflow.ingest`` and ``dicomflow.read_lake``, so the script measures any
version: ``PYTHONPATH=/path/to/checkout`` measures that checkout (the script prints
which ``dicomflow`` it imported; local workers inherit the path).
"""

from __future__ import annotations

import argparse
import logging
import shutil
import sys
import tempfile
import threading
import time
from collections import Counter
from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs

import s3fs
from moto.server import DomainDispatcherApplication, MotoRequestHandler, create_backend_app
from werkzeug.serving import make_server

sys.path.insert(0, str(Path(__file__).parent))

from synth import write_phantom_series

import dicomflow

BUCKET = "lakes"
LAKE_KEY = "bench"  # the lake is s3://lakes/bench
PIXELS = "pixels.zarr"
METADATA = "zarr.json"


@dataclass(frozen=True)
class Request:
    """One request the server answered (no headers, no body)."""

    method: str
    path: str  # /bucket/key, percent-decoded
    query: str
    copy: bool  # PUT with x-amz-copy-source
    length: int  # request body bytes

    @property
    def key(self) -> str:
        return self.path.lstrip("/").partition("/")[2]

    @property
    def params(self) -> dict[str, list[str]]:
        return parse_qs(self.query, keep_blank_values=True)

    @property
    def operation(self) -> str:
        """The S3 operation, as far as method, key and query tell it."""
        params, key, method = self.params, self.key, self.method
        if method == "PUT":
            if "partNumber" in params:
                return "UploadPart"
            return "CopyObject" if self.copy else "PutObject" if key else "CreateBucket"
        if method == "POST":
            for name, operation in (
                ("uploads", "CreateMultipartUpload"),
                ("uploadId", "CompleteMultipartUpload"),
                ("delete", "DeleteObjects"),
            ):
                if name in params:
                    return operation
            return "POST"
        if method == "GET":
            if key:
                return "GetObject"
            return "ListObjectsV2" if params.get("list-type") == ["2"] else "ListObjects"
        if method == "HEAD":
            return "HeadObject" if key else "HeadBucket"
        if method == "DELETE":
            if "uploadId" in params:
                return "AbortMultipartUpload"
            return "DeleteObject" if key else "DeleteBucket"
        return method

    def under(self, prefix: str) -> bool:
        """Whether the request is about keys under ``prefix`` (its key, or the prefix it
        lists)."""
        listed = self.params.get("prefix", [""])[0]
        return self.key.startswith(prefix) or (bool(listed) and listed.startswith(prefix))


class RequestLog:
    """A WSGI application that notes every request, then hands it to ``app``."""

    def __init__(self, app: Callable[..., Iterable[bytes]]) -> None:
        self.app = app
        self.requests: list[Request] = []

    def __call__(self, environ: dict[str, Any], start_response: Any) -> Iterable[bytes]:
        self.requests.append(
            Request(
                environ["REQUEST_METHOD"],
                environ.get("PATH_INFO", ""),
                environ.get("QUERY_STRING", ""),
                "HTTP_X_AMZ_COPY_SOURCE" in environ,
                int(environ.get("CONTENT_LENGTH") or 0),
            )
        )
        return self.app(environ, start_response)

    def take(self) -> list[Request]:
        """The requests noted so far; the log starts again."""
        taken, self.requests = self.requests, []
        return taken


@contextmanager
def moto_s3() -> Iterator[tuple[dict[str, Any], RequestLog]]:
    """moto's server on a free loopback port, its requests logged; yields the
    ``storage_options`` that reach it and the log."""
    logging.getLogger("werkzeug").setLevel(logging.WARNING)  # no line a request
    log = RequestLog(DomainDispatcherApplication(create_backend_app))
    server = make_server("127.0.0.1", 0, log, threaded=True, request_handler=MotoRequestHandler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    endpoint = f"http://127.0.0.1:{server.server_port}"
    options = {
        "key": "testing",
        "secret": "testing",
        "client_kwargs": {"endpoint_url": endpoint, "region_name": "eu-west-1"},
    }
    try:
        yield options, log
    finally:
        server.shutdown()
        thread.join()


@dataclass(frozen=True)
class Stored:
    """What a series became under ``pixels.zarr``: metadata documents and data files."""

    metadata: int
    data: int
    data_bytes: int

    @property
    def total(self) -> int:
        return self.metadata + self.data

    @classmethod
    def of(cls, sizes: dict[str, int]) -> Stored:
        """From the size of each stored name (path or key)."""
        metadata = [name for name in sizes if name.rsplit("/", 1)[-1] == METADATA]
        data = {name: size for name, size in sizes.items() if name not in metadata}
        return cls(len(metadata), len(data), sum(data.values()))

    def describe(self, noun: str) -> str:
        return (
            f"{self.total} {noun} ({self.metadata} {METADATA}, {self.data} data"
            f" {noun}, {self.data_bytes / 1e6:.1f} MB)"
        )


def ingest(source: Path, out: str, frames: int, **options: Any) -> float:
    """Seconds to ingest ``source`` with pixels into ``out`` (its own local cluster);
    every slice must become a row."""
    start = time.perf_counter()
    summary = dicomflow.ingest([str(source)], out=out, pixels=True, progress=False, **options)
    elapsed = time.perf_counter() - start
    if (summary.rows, summary.errors) != (frames, 0):
        raise SystemExit(f"ingest into {out}: {summary.rows} rows, {summary.errors} errors")
    return elapsed


def check_frames(out: str, frames: int, storage_options: dict[str, Any] | None = None) -> None:
    """The lake's stacks must hold every slice as a frame."""
    stacks = dicomflow.read_lake(out, storage_options=storage_options or {}).series()
    if sum(stacks.column("frames").to_pylist()) != frames:
        raise SystemExit(f"ingest into {out}: the stacks do not hold {frames} frames")


def local_run(source: Path, lake: Path, frames: int, workers: int | None) -> None:
    elapsed = ingest(source, str(lake), frames, workers=workers)
    check_frames(str(lake), frames)
    root = lake / PIXELS
    stored = Stored.of({str(p): p.stat().st_size for p in root.rglob("*") if p.is_file()})
    print(f"local lake: {stored.describe('files')} under {PIXELS} ({elapsed:.1f} s ingest)")


def s3_run(source: Path, frames: int, workers: int | None) -> None:
    with moto_s3() as (options, log):
        fs = s3fs.S3FileSystem(**options)
        fs.mkdir(BUCKET)
        log.take()
        out = f"s3://{BUCKET}/{LAKE_KEY}"
        elapsed = ingest(source, out, frames, out_storage_options=options, workers=workers)
        requests = log.take()  # the run's alone: what follows reads the lake
        check_frames(out, frames, options)
        fs.invalidate_cache()
        keys = fs.find(f"{BUCKET}/{LAKE_KEY}/{PIXELS}", detail=True)
        stored = Stored.of({key: int(info["size"]) for key, info in keys.items()})
    prefix = f"{LAKE_KEY}/{PIXELS}"
    pixel = [r for r in requests if r.under(prefix)]
    puts = [r for r in pixel if r.method == "PUT"]
    print(f"bucket lake: {stored.describe('objects')} under {PIXELS}/ ({elapsed:.1f} s ingest)")
    print(
        f"  requests on the pixel stacks: {len(pixel)}, of which {len(puts)} PUT"
        f" ({sum(r.length for r in puts) / 1e6:.1f} MB)"
    )
    print(f"  requests of the whole run: {len(requests)}")
    print(f"  {'operation':24s} {'pixels':>7s} {'all':>7s}")
    every, on_pixels = Counter(r.operation for r in requests), Counter(r.operation for r in pixel)
    for operation, count in every.most_common():
        print(f"  {operation:24s} {on_pixels[operation]:7d} {count:7d}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("-n", type=int, default=400, help="slices in the series (default 400)")
    parser.add_argument("--size", type=int, default=512, help="rows and columns (default 512)")
    parser.add_argument("--workers", type=int, default=None, help="default: one per core")
    parser.add_argument("--only", choices=("local", "s3"), default=None)
    args = parser.parse_args()
    print(f"dicomflow {dicomflow.__version__} from {Path(dicomflow.__file__).parent}")
    work = Path(tempfile.mkdtemp(prefix="dicomflow-objbench-"))
    try:
        source = work / "series"
        write_phantom_series(source, args.n, size=args.size)
        print(f"one series of {args.n} slices, {args.size}x{args.size} uncompressed")
        if args.only in (None, "local"):
            local_run(source, work / "lake", args.n, args.workers)
        if args.only in (None, "s3"):
            s3_run(source, args.n, args.workers)
    finally:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
