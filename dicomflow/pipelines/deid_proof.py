"""The de-identification proof of an ``--anonymize`` run.

While de-identifying, each worker keeps keyed fingerprints of the identifying
values it removed or replaced (names, identifiers, dates, free text, UIDs; see
:mod:`dicomflow.anonymize.proof`). At the end of the run every output it wrote
is searched for them: the de-identified DICOM files (kept or staged), the
table parts it committed, the Zarr attributes of its stacks, the metadata of
its renders, its report and its log lines.

The de-identified DICOM is what the profile made: a removed value it still
holds in another attribute of any instance (a coding scheme's UID removed with
one sequence and kept in another, a description that is also a code meaning) is
counted as ``kept_by_profile``, not as a hit. In every other output, a hit is

- a name, identifier or UID of 8 characters or more, wherever it stands;
- a date, a free text or a shorter name or identifier beside its own study (in
  a table row naming it, or within 1,000
  characters of its UID in any other file or the log).

Any hit fails the run, and the outputs holding it are quarantined under
``<lake>/_quarantine/<run_id>/``: a table part or a stack with the ledger entry
that committed it (so readers never see it and a rerun redoes its inputs), a
file on its own. Nothing here ever writes or logs a value: hits name outputs
and kinds only.
"""

from __future__ import annotations

import bisect
import functools
import io
import itertools
import json
import logging
import time
from collections import Counter, deque
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import asdict, dataclass, field
from typing import Any

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq
from distributed import Client, WorkerPlugin

from dicomflow.anonymize.proof import (
    Fingerprint,
    ProofKey,
    Scanner,
    anywhere,
    readings,
)
from dicomflow.dicom.header import read_header
from dicomflow.dicom.inflate import InflateLimits, inflate
from dicomflow.errors import MalformedDicomError
from dicomflow.lake.layout import LakeLayout
from dicomflow.lake.ledger import ENTRIES, LEDGER_DIR, Ledger, LedgerEntry
from dicomflow.operators.anonymize import PROOF_OUTPUT
from dicomflow.records import InstanceRecord

logger = logging.getLogger(__name__)

FINGERPRINTS_TABLE = "proof_fingerprints"
QUARANTINE_DIR = "_quarantine"
ZARR_METADATA = ("zarr.json", ".zattrs", ".zarray", ".zgroup")
RECORD_SEPARATOR = "\x1e"  # ASCII's record separator: between a column's values
DEFLATED = b"1.2.840.10008.1.2.1.99"
UNDEFINED_LENGTH = 0xFFFFFFFF
MAX_LOG_LINES = 100_000
FILES_AT_ONCE = 256  # files read in one call (concurrently, from a bucket)
CHARS_AT_ONCE = 1 << 22  # text searched in one call
NEARBY = 1000  # characters either side of a hit in which its study must be named
FINGERPRINT_SCHEMA = pa.schema(
    [
        ("kind", pa.string()),
        ("length", pa.int32()),
        ("window", pa.uint64()),
        ("prefix", pa.uint64()),
        ("mac", pa.binary(16)),
        ("study", pa.string()),
        ("whole", pa.bool_()),
        ("unchecked", pa.int32()),  # on the partition's first row: values not looked for
    ]
)


def fingerprint_table(records: Sequence[InstanceRecord]) -> pa.Table:
    """The fingerprints the ``anonymize`` operator left on ``records`` (task side)."""
    rows: list[dict[str, Any]] = []
    unchecked = 0
    for record in records:
        prints, missed = record.outputs.get(PROOF_OUTPUT, ((), 0))
        unchecked += missed
        rows.extend({**fp._asdict(), "unchecked": 0} for fp in prints)
    if unchecked:
        rows.append({"kind": "", "length": 0, "window": 0, "prefix": 0, "mac": bytes(16),
                     "study": "", "whole": True, "unchecked": unchecked})  # fmt: skip
    return pa.Table.from_pylist(rows, schema=FINGERPRINT_SCHEMA)


def collect_fingerprints(tables: Iterable[pa.Table]) -> tuple[list[Fingerprint], int]:
    """The run's distinct fingerprints and its count of values not looked for."""
    found: dict[tuple[bytes, str, str], Fingerprint] = {}
    unchecked = 0
    for table in tables:
        for row in table.to_pylist():
            unchecked += row.pop("unchecked")
            if row["kind"]:
                fp = Fingerprint(**row)
                found.setdefault((fp.mac, fp.kind, fp.study), fp)
    return list(found.values()), unchecked


@dataclass
class Proof:
    """What the proof checked and found (JSON-ready through :meth:`as_dict`)."""

    values_checked: int = 0
    values_unchecked: int = 0
    kept_by_profile: int = 0
    outputs_scanned: int = 0
    bytes_scanned: int = 0
    seconds: float = 0.0  # the searching, on the client
    hits: list[dict[str, Any]] = field(default_factory=list)  # output, kinds, count
    quarantined: list[str] = field(default_factory=list)

    @property
    def passed(self) -> bool:
        return not self.hits

    def as_dict(self) -> dict[str, Any]:
        return {**asdict(self), "passed": self.passed}


class LogCapture(logging.Handler):
    """Keeps a run's log lines in memory (bounded) for the proof to search."""

    def __init__(self) -> None:
        super().__init__(logging.DEBUG)
        self.lines: deque[str] = deque(maxlen=MAX_LOG_LINES)
        self.setFormatter(logging.Formatter("%(name)s %(levelname)s %(message)s"))

    def emit(self, record: logging.LogRecord) -> None:
        try:
            self.lines.append(self.format(record))
        except Exception:  # a record that cannot format: kept as its bare template
            self.lines.append(str(record.msg))

    def __enter__(self) -> LogCapture:
        logging.getLogger().addHandler(self)
        return self

    def __exit__(self, *exc: object) -> None:
        logging.getLogger().removeHandler(self)


class _WorkerLogCapture(WorkerPlugin):
    """A :class:`LogCapture` on each worker for the length of one run."""

    def __init__(self, name: str) -> None:
        self.name = name
        self.capture: LogCapture | None = None  # made on the worker (a handler holds a lock)

    def setup(self, worker: Any) -> None:
        self.capture = LogCapture().__enter__()

    def teardown(self, worker: Any) -> None:
        if self.capture is not None:
            self.capture.__exit__()


def _worker_lines(name: str, dask_worker: Any) -> list[str]:
    plugin = dask_worker.plugins.get(name)
    capture = getattr(plugin, "capture", None)
    return list(capture.lines) if capture is not None else []


class RunLogs:
    """The log lines of one run, on the client and on every worker, for the proof."""

    def __init__(self, client: Client, run_id: str) -> None:
        self.client = client
        self.name = f"dicomflow-proof-logs-{run_id}"
        self.local = LogCapture()

    def __enter__(self) -> RunLogs:
        self.local.__enter__()
        self.client.register_plugin(_WorkerLogCapture(self.name), name=self.name)
        return self

    def lines(self) -> list[str]:
        """Every line logged so far, here and on the workers."""
        found = list(self.local.lines)
        remote = self.client.run(functools.partial(_worker_lines, self.name))
        for worker_lines in remote.values():
            found.extend(worker_lines)
        return found

    def __exit__(self, *exc: object) -> None:
        self.local.__exit__()
        try:
            self.client.unregister_worker_plugin(self.name)
        except Exception:  # the cluster is going away with the run: nothing to undo
            logger.debug("could not remove the log capture from the workers")


@dataclass
class Prover:
    """Searches one run's outputs for its fingerprints and quarantines what holds one."""

    key: ProofKey
    prints: Sequence[Fingerprint]
    unchecked: int
    layout: LakeLayout
    run_id: str
    proof: Proof = field(init=False)
    _kept: set[bytes] = field(default_factory=set, init=False)
    _hits: Counter[tuple[str, str]] = field(default_factory=Counter, init=False)
    _offending: set[str] = field(default_factory=set, init=False)

    def __post_init__(self) -> None:
        self._scanner = Scanner(self.key, self.prints)
        self.proof = Proof(values_checked=len(self.prints), values_unchecked=self.unchecked)

    def run(self, dicom_urls: Sequence[str], log_lines: Iterable[str]) -> Proof:
        """Search the de-identified DICOM first (what the profile keeps), then the
        lake's outputs of this run and the log lines; quarantine; return the proof."""
        started = time.perf_counter()
        fs, root = self.layout.filesystem()
        self._scan_files(fs, root, dicom_urls, dicom=True)
        entries = [e for e in Ledger(self.layout).entries() if e.run_id == self.run_id]
        metadata: list[str] = []
        for entry in entries:
            for part in entry.parts.values():
                metadata.extend(self._scan_table(fs, f"{root}/{part}", part))
            for array in entry.arrays:
                metadata.extend(_zarr_metadata(fs, f"{root}/{array}"))
        self._scan_files(fs, root, metadata)
        self._scan_log(log_lines)
        self._quarantine(fs, root, entries)
        return self._finish(started)

    def scan_report(self, paths: Sequence[str]) -> Proof:
        """Search the run's report (written after :meth:`run`, so it shows the proof)."""
        started = time.perf_counter()
        fs, root = self.layout.filesystem()
        self._scan_files(fs, root, paths)
        self._quarantine(fs, root, [])
        return self._finish(started)

    # -- scanning ---------------------------------------------------------------------

    def _scan_files(self, fs: Any, root: str, paths: Sequence[str], *, dicom: bool = False) -> None:
        """Search files, many at once: each is read (a batch of reads at a time, which
        a bucket serves concurrently), and their texts are searched joined, since one
        search costs about a millisecond however short its text."""
        pending: list[tuple[str, str]] = []  # (output name, text)
        size = 0
        paths = [fs._strip_protocol(p) for p in paths]  # as the filesystem names them
        for start in range(0, len(paths), FILES_AT_ONCE):
            batch = list(paths[start : start + FILES_AT_ONCE])
            contents = fs.cat(batch, on_error="omit") if batch else {}
            for path in batch:
                data = contents.get(path)
                if data is None:  # gone meanwhile (a staged file already removed)
                    continue
                name = _relative(path, root, path if not dicom else "staged DICOM")
                if dicom:
                    data = _without_pixel_data(data)
                elif name.endswith((".png", ".jpg", ".jpeg")):
                    data = _image_metadata(data)
                self.proof.outputs_scanned += 1
                self.proof.bytes_scanned += len(data)
                for text in readings(data, utf16=not dicom):  # DICOM defines no UTF-16
                    pending.append((name, text))
                    size += len(text)
                if size >= CHARS_AT_ONCE:
                    self._search_joined(pending, dicom)
                    pending, size = [], 0
        self._search_joined(pending, dicom)

    def _search_joined(self, texts: Sequence[tuple[str, str]], dicom: bool) -> None:
        if not texts:
            return
        joined = RECORD_SEPARATOR.join(text for _, text in texts)
        starts = list(itertools.accumulate((len(t) + 1 for _, t in texts), initial=0))
        # In DICOM a value's neighbours are binary (a tag's bytes may read "b" or "0"):
        # what the profile kept is found there without asking that it stand alone.
        for hit in self._scanner.find(joined, alone=not dicom):
            index = bisect.bisect_right(starts, hit.start) - 1
            name, text = texts[index]
            at = hit.start - starts[index]
            context = text if dicom else _around(text, at)
            self._count(name, hit.fingerprints, context, dicom=dicom)

    def _scan_table(self, fs: Any, path: str, name: str) -> list[str]:
        """Search one table part; return the renders its rows name (searched later)."""
        try:
            with fs.open(path, "rb") as handle:
                table = pq.read_table(handle)
        except OSError:
            return []
        self.proof.outputs_scanned += 1
        for column in table.columns:
            for values, rows in _string_leaves(column.combine_chunks(), None):
                joined = _joined(values)
                self.proof.bytes_scanned += len(joined)
                for text in readings(joined):
                    for hit in self._scanner.find(text):
                        index = text.count(RECORD_SEPARATOR, 0, hit.start)
                        row = index if rows is None else int(rows[index].as_py())
                        context = json.dumps(table.slice(row, 1).to_pylist(), default=str)
                        self._count(name, hit.fingerprints, context.casefold())
        if "render_path" not in table.column_names:
            return []
        _, root = self.layout.filesystem()
        renders = filter(None, table.column("render_path").to_pylist())
        return [r if r.startswith(root) else f"{root}/{r}" for r in renders]

    def _scan_log(self, lines: Iterable[str]) -> None:
        text = "\n".join(lines)
        if not text:
            return
        self.proof.outputs_scanned += 1
        self.proof.bytes_scanned += len(text)
        reading = text.casefold()
        for hit in self._scanner.find(reading):
            self._count("log", hit.fingerprints, _around(reading, hit.start))

    def _count(
        self, name: str, prints: Sequence[Fingerprint], context: str, *, dicom: bool = False
    ) -> None:
        """Count the hits among ``prints`` found in a record whose text is ``context``."""
        for fp in prints:
            if dicom:  # what the profile made, in any study: the value is kept, not leaked
                self._kept.add(fp.mac)
                continue
            scope = "" if anywhere(fp) else fp.study
            if scope and scope.casefold() not in context:
                continue  # another study's date or word: not this patient's
            if fp.mac in self._kept:
                continue
            self._hits[(name, fp.kind)] += 1
            self._offending.add(name)

    # -- the outcome ------------------------------------------------------------------

    def _quarantine(self, fs: Any, root: str, entries: Sequence[LedgerEntry]) -> None:
        """Move every output holding a hit under ``_quarantine/<run_id>/``: a part or a
        stack with its ledger entry and everything that entry committed."""
        target = f"{root}/{QUARANTINE_DIR}/{self.run_id}"
        for entry in entries:
            committed = set(entry.parts.values()) | set(entry.arrays)
            if not any(_within(name, committed) for name in self._offending):
                continue
            ledger_file = f"{LEDGER_DIR}/{ENTRIES}/{entry.config}/{entry.partition}.json"
            for relative in (ledger_file, *sorted(committed)):
                self._move(fs, root, target, relative)
        for name in sorted(self._offending - set(self.proof.quarantined)):
            if name != "log" and not name.startswith("staged DICOM"):
                self._move(fs, root, target, name)

    def _move(self, fs: Any, root: str, target: str, relative: str) -> None:
        if relative in self.proof.quarantined or not fs.exists(f"{root}/{relative}"):
            return
        destination = f"{target}/{relative}"
        fs.makedirs(destination.rpartition("/")[0], exist_ok=True)
        fs.mv(f"{root}/{relative}", destination, recursive=True)
        self.proof.quarantined.append(relative)

    def _finish(self, started: float) -> Proof:
        by_output: dict[str, Counter[str]] = {}
        for (name, kind), count in self._hits.items():
            by_output.setdefault(name, Counter())[kind] += count
        self.proof.hits = [
            {"output": name, "count": sum(kinds.values()), "kinds": dict(sorted(kinds.items()))}
            for name, kinds in sorted(by_output.items())
        ]
        self.proof.kept_by_profile = len(self._kept)
        self.proof.seconds = round(self.proof.seconds + time.perf_counter() - started, 3)
        if self.proof.hits:
            logger.error(
                "de-identification proof: %d removed values found in %d outputs",
                sum(h["count"] for h in self.proof.hits),
                len(self.proof.hits),
            )
        return self.proof


def _around(text: str, start: int) -> str:
    """The text beside a hit: where its study must be named for a date or a word to
    count (a DICOM file is one study whole; a report or a log names many)."""
    return text[max(0, start - NEARBY) : start + NEARBY]


def _relative(path: str, root: str, fallback: str) -> str:
    prefix = root.rstrip("/") + "/"
    return path[len(prefix) :] if path.startswith(prefix) else fallback


def _within(name: str, committed: set[str]) -> bool:
    return any(name == c or name.startswith(c.rstrip("/") + "/") for c in committed)


def _zarr_metadata(fs: Any, array: str) -> Iterator[str]:
    """The metadata documents of a stack and of the groups above it."""
    try:
        found = fs.find(array)
    except OSError:
        return
    yield from (p for p in found if p.rsplit("/", 1)[-1] in ZARR_METADATA)


def _without_pixel_data(data: bytes) -> bytes:
    """A DICOM file without its top-level Pixel Data value (pixels hold no text), where
    the header reader locates it; a deflated data set inflated and searched whole; a
    file the reader cannot parse searched whole."""
    inflated = _inflated(data)
    if inflated is not data:
        return inflated
    try:
        header = read_header(io.BytesIO(data), size=len(data), salvage=True)
    except Exception:  # whatever the reader refuses is searched as it is
        return data
    start, length = header.pixel_data_offset, header.pixel_data_length
    if start is None:
        return data
    if length is not None and length != UNDEFINED_LENGTH:
        return data[:start] + data[start + length :]
    end = header.pixel_data_end
    return data[:start] + (data[end:] if end is not None else b"")


def _inflated(data: bytes) -> bytes:
    """The file meta plus the inflated data set of a deflated file (``data`` otherwise),
    within the reader's limits. The meta is read by its group length, (0002,0000), the
    first element after DICM."""
    if data[128:132] != b"DICM" or DEFLATED not in data[132:2048]:
        return data
    meta_end = 144 + int.from_bytes(data[140:144], "little")
    body = data[meta_end:]
    try:
        return data[:meta_end] + inflate(
            io.BytesIO(body), deflated_size=len(body), limits=InflateLimits()
        )
    except MalformedDicomError:  # not what it claims, or past the limits: as it is
        return data


def _image_metadata(data: bytes) -> bytes:
    """The text an image file carries besides its pixels (PNG text chunks, JPEG
    comments and EXIF), as the bytes to search; the whole file when unreadable."""
    from PIL import Image

    try:
        with Image.open(io.BytesIO(data)) as image:
            values = [*image.info.values(), *getattr(image, "text", {}).values()]
    except Exception:  # not an image Pillow reads: search it whole
        return data
    return b"\n".join(v if isinstance(v, bytes) else str(v).encode() for v in values)


def _string_leaves(array: pa.Array, rows: pa.Array | None) -> Iterator[tuple[pa.Array, Any]]:
    """Every string or binary array inside ``array`` with the row of each value
    (None: value i is row i)."""
    kind = array.type
    if pa.types.is_dictionary(kind):
        yield from _string_leaves(array.dictionary_decode(), rows)
    elif pa.types.is_string(kind) or pa.types.is_large_string(kind):
        yield array.cast(pa.large_string()), rows
    elif pa.types.is_binary(kind) or pa.types.is_large_binary(kind):
        yield array.cast(pa.large_binary()), rows
    elif pa.types.is_list(kind) or pa.types.is_large_list(kind):
        parents = pc.list_parent_indices(array)
        inner_rows = parents if rows is None else pc.take(rows, parents)
        yield from _string_leaves(array.flatten(), inner_rows)
    elif pa.types.is_struct(kind):
        for index in range(kind.num_fields):
            yield from _string_leaves(array.field(index), rows)


def _joined(values: pa.Array) -> bytes:
    """The values one after another, separated by :data:`RECORD_SEPARATOR`."""
    filled = pc.fill_null(values, "" if pa.types.is_large_string(values.type) else b"")
    if not len(filled):
        return b""
    offsets = pa.array([0, len(filled)], pa.int64())
    single = pa.LargeListArray.from_arrays(offsets, filled)
    separator = pa.scalar(RECORD_SEPARATOR.encode(), pa.large_binary()).cast(values.type)
    joined = pc.binary_join(single, separator)[0]
    return joined.as_buffer().to_pybytes() if joined.is_valid else b""
