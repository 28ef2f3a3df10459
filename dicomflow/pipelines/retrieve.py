"""Retrieve from a PACS or a DICOMweb server into the lake, then ingest what arrived.

1. On the client, the peer lists what the query should bring (an IMAGE-level
   C-FIND, or a QIDO-RS instance search): SOP Instance UIDs and classes, by series.
2. One Dask task per series fetches it (C-GET, or WADO-RS) into
   ``<lake>/_retrieved/<study>/<series>/`` (validated path components), holding
   a cluster-wide semaphore so no more than ``max_associations`` connections hit
   the peer at once; a large series over C-GET is cut into parts fetched side by
   side, a task and an association each (:func:`series_parts`). Instances already
   retrieved are not fetched again: a series partly there (an interrupted run) and
   the instances missing after the series-level fetch are asked for by SOP Instance
   UID.
3. The retrieved files go through the usual ingest; whatever is still missing
   becomes an error row ``not_retrieved``.

With C-MOVE the peer sends to us, so the run starts its own Storage SCP (as
the peer knows it: ``move_ae`` on ``move_port``) on the client, which files each
instance the plan names into its series folder and refuses the rest. The C-MOVE
requests are sent from threads of the client, where the SCP is, holding the
same cluster-wide semaphore; a C-MOVE only carries requests and counts, so no
data crosses the cluster. There Ctrl-C or SIGTERM reaches them: every C-MOVE in
flight is sent C-CANCEL before the run stops.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import logging
import signal
import tempfile
import threading
import uuid
from collections.abc import Iterator, Mapping, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from contextlib import contextmanager
from pathlib import Path
from types import FrameType

from dask.delayed import delayed
from distributed import Client

from dicomflow.connectors.dimse.move import (
    MoveDestinationUnknown,
    allow_moves,
    cancel_moves,
)
from dicomflow.connectors.dimse.scp import storage_scp
from dicomflow.connectors.dimse.scp_guard import ScpLimits
from dicomflow.connectors.peers import DimsePeer, Peer, SeriesRequest, group_requests
from dicomflow.errors import ConfigError, ErrorCode
from dicomflow.lake.layout import LakeLayout, safe_uid_component
from dicomflow.pipelines.limits import associations_limit
from dicomflow.pipelines.sinks import commit_records
from dicomflow.records import InstanceRecord, RunContext, SourceRef

RETRIEVED = "_retrieved"
logger = logging.getLogger(__name__)


def series_folder(layout: LakeLayout, request: SeriesRequest) -> str:
    """Where a series' retrieved files go in the lake (a path on the lake's filesystem)."""
    _, root = layout.filesystem()
    study, series = (safe_uid_component(u) for u in (request.study_uid, request.series_uid))
    return f"{root}/{RETRIEVED}/{study}/{series}"


def arrived(layout: LakeLayout, request: SeriesRequest) -> dict[str, str]:
    """The instances of ``request`` already in the lake (complete: each was renamed or put
    into place whole), as paths or URLs the ingest can read."""
    fs, _ = layout.filesystem()
    folder = series_folder(layout, request)
    try:
        present = {str(p).rstrip("/") for p in fs.ls(folder, detail=False)}
    except FileNotFoundError:
        return {}
    paths = {uid: f"{folder}/{safe_uid_component(uid)}.dcm" for uid in request.instances}
    return {uid: layout.url(path) for uid, path in paths.items() if path in present}


PART_INSTANCES = 500  # a series of at least twice this many is fetched in parts at once


def series_parts(request: SeriesRequest, max_associations: int) -> list[SeriesRequest]:
    """``request`` as the parts fetched side by side: a series of at least twice
    :data:`PART_INSTANCES` instances in up to ``max_associations`` parts of at least
    that many (their sizes within one of each other), each over an association of its
    own, else the series whole. One association receives at the pace of one Python
    process (pynetdicom spent 4.3 ms of CPU on each 512² slice that Orthanc sent in
    16 KB PDUs); two, run by two worker processes, at about twice that."""
    count = min(max_associations, len(request.instances) // PART_INSTANCES)
    if count < 2:
        return [request]
    uids = sorted(request.instances)
    size, larger = divmod(len(uids), count)
    parts, start = [], 0
    for number in range(count):
        end = start + size + (number < larger)
        piece = {uid: request.instances[uid] for uid in uids[start:end]}
        parts.append(dataclasses.replace(request, instances=piece))
        start = end
    return parts


def retrieve_series(
    peer: Peer,
    request: SeriesRequest,
    layout: LakeLayout,
    max_associations: int,
    scratch: str | None = None,
    *,
    whole: bool = True,
) -> dict[str, str]:
    """Task: fetch one series (only what is not already there); SOP UID → path.

    A series with nothing on disk is asked for whole; a series already partly
    there (an earlier run was interrupted) and whatever the series-level fetch
    did not bring are asked for by SOP Instance UID, so nothing is fetched twice.
    A part of a series (``whole=False``, :func:`series_parts`) is always asked for by
    SOP Instance UID. ``scratch``: the local folder files land in before a bucket lake
    (a C-MOVE's, where our Storage SCP files them), else a temporary one.
    """
    have = arrived(layout, request)
    if len(have) < len(request.instances):
        limit = associations_limit(peer, max_associations)
        with limit(), _landing(layout, request, scratch) as land:
            if not have and whole:
                have.update(land(peer.fetch_series(request, land.folder)))
            still = [uid for uid in request.instances if uid not in have]
            if still:
                have.update(land(peer.fetch_instances(request, land.folder, still)))
    return {uid: path for uid, path in have.items() if uid in request.instances}


class _Landing:
    """Where a peer writes what it fetches, and how those files reach the lake: in place
    for a local lake; through a local temporary folder, then one put per file, for a
    bucket lake (a put is whole or absent, as a rename is)."""

    def __init__(self, layout: LakeLayout, request: SeriesRequest, scratch: str | None) -> None:
        self.layout = layout
        self.target = series_folder(layout, request)
        self.scratch = scratch
        self.folder = Path(scratch or self.target)

    def __call__(self, fetched: Mapping[str, Path]) -> dict[str, str]:
        if self.scratch is None:  # fetched in place
            return {uid: str(path) for uid, path in fetched.items()}
        fs, _ = self.layout.filesystem()
        landed = {}
        for uid, path in fetched.items():
            target = f"{self.target}/{Path(path).name}"
            fs.put_file(str(path), target)
            Path(path).unlink()
            landed[uid] = self.layout.url(target)
        return landed


@contextmanager
def _landing(
    layout: LakeLayout, request: SeriesRequest, scratch: str | None = None
) -> Iterator[_Landing]:
    if layout.is_local():
        yield _Landing(layout, request, None)
        return
    if scratch is not None:
        yield _Landing(layout, request, scratch)
        return
    with tempfile.TemporaryDirectory(prefix="dicomflow-retrieve-") as scratch:
        yield _Landing(layout, request, scratch)


def report_missing(
    layout: LakeLayout,
    peer: Peer,
    missing: Sequence[str],
    context: RunContext,
    query: Mapping[str, str] | None = None,
) -> int:
    """Commit one ``not_retrieved`` error row per instance the peer did not deliver.

    The part is named by the peer and the query, so each retrieval with the same
    query replaces the previous report: an instance delivered by a later run no
    longer shows as missing.
    """
    refs = [SourceRef(f"{peer}#sop={uid}") for uid in sorted(missing)]
    records = tuple(
        InstanceRecord(ref).with_error(
            "retrieve",
            ErrorCode.NOT_RETRIEVED,
            "the peer did not deliver this instance whole: it sent nothing for it, a part"
            " that is not DICOM, or one cut short",
        )
        for ref in refs
    )
    asked = json.dumps([str(peer), sorted((query or {}).items())])
    name = "missing-" + hashlib.sha256(asked.encode()).hexdigest()[:20]
    commit_records(layout, "retrieve", name, records, context)
    return len(records)


def retrieve(
    client: Client,
    peer: Peer,
    query: Mapping[str, str],
    *,
    layout: LakeLayout,
    max_associations: int = 2,
    retries: int = 1,
    also: Sequence[Mapping[str, str]] = (),
) -> tuple[list[str], list[str]]:
    """Fetch everything the query (and each query in ``also``) names; return
    (retrieved paths, missing SOP UIDs)."""
    requests = joined_plans([peer.plan(q) for q in (query, *also)])
    if isinstance(peer, DimsePeer) and peer.move is not None:
        return _retrieve_by_move(peer, requests, layout, max_associations)
    task = delayed(retrieve_series, pure=False)
    token = uuid.uuid4().hex[:12]  # keys unique to this retrieval
    jobs: list[tuple[SeriesRequest, bool]] = []  # (what to fetch, whether a whole series)
    for request in requests:
        # Parts only where a part is one request for its list of UIDs (a C-GET); a
        # DICOMweb part would be one request per instance instead of one for the series.
        parts = [request]
        if isinstance(peer, DimsePeer):
            parts = series_parts(request, max_associations)
        jobs.extend((part, len(parts) == 1) for part in parts)
    graph = [
        task(
            peer,
            part,
            layout,
            max_associations,
            whole=whole,
            dask_key_name=f"dicomflow-retrieve-{token}-{number}",
        )
        for number, (part, whole) in enumerate(jobs)
    ]
    results = client.compute(graph, retries=retries)
    paths: list[str] = []
    missing: list[str] = []
    for (request, _), future in zip(jobs, results, strict=True):
        try:
            got = future.result()
        except ConfigError:  # e.g. a secret's variable missing on the workers: not the peer's
            raise
        except Exception:  # failed midway (the peer went away): keep what arrived
            got = arrived(layout, request)
        paths.extend(got.values())
        missing.extend(uid for uid in request.instances if uid not in got)
    return sorted(paths), missing


def joined_plans(plans: Sequence[Sequence[SeriesRequest]]) -> list[SeriesRequest]:
    """One request per series across several plans (a series two queries name once)."""
    if len(plans) == 1:
        return list(plans[0])
    rows = [
        (r.study_uid, r.series_uid, uid, sop_class)
        for plan in plans
        for r in plan
        for uid, sop_class in r.instances.items()
    ]
    return group_requests(rows)


def _retrieve_by_move(
    peer: DimsePeer, requests: Sequence[SeriesRequest], layout: LakeLayout, max_associations: int
) -> tuple[list[str], list[str]]:
    """C-MOVE every series to our own Storage SCP, at most ``max_associations`` at once;
    return (retrieved paths, missing SOP UIDs). Ctrl-C or SIGTERM cancels the C-MOVEs
    in flight (C-CANCEL) and ends the run."""
    assert peer.move is not None
    allow_moves()
    try:
        return _move_all(peer, requests, layout, max_associations)
    finally:
        allow_moves()  # once every thread has ended: a cancellation ends with its run


def _move_all(
    peer: DimsePeer, requests: Sequence[SeriesRequest], layout: LakeLayout, max_associations: int
) -> tuple[list[str], list[str]]:
    assert peer.move is not None
    with _move_folders(layout, requests) as folders:
        expected = {uid: folders[n] for n, r in enumerate(requests) for uid in r.instances}
        route = _Route(expected)
        with (
            storage_scp(
                peer.move.ae_title,
                peer.move.port,
                Path(folders[0]) if folders else Path(layout.root),
                host=peer.move.host,
                options=peer.options,
                route=route,
                limits=ScpLimits(max_associations=max(16, max_associations)),
                durable=False,  # the PACS keeps the original; a lost copy is re-fetched
            ),
            _interrupts_cancel_moves(),
            ThreadPoolExecutor(max(1, max_associations), "dicomflow-move") as pool,
        ):
            futures = [
                pool.submit(
                    retrieve_series,
                    peer,
                    request,
                    layout,
                    max_associations,
                    None if layout.is_local() else folders[n],
                )
                for n, request in enumerate(requests)
            ]
            try:
                return _collect(layout, requests, futures)
            except BaseException:
                for future in futures:
                    future.cancel()
                cancel_moves()
                raise


def _collect(
    layout: LakeLayout, requests: Sequence[SeriesRequest], futures: Sequence[Future[dict]]
) -> tuple[list[str], list[str]]:
    paths: list[str] = []
    missing: list[str] = []
    for request, future in zip(requests, futures, strict=True):
        try:
            got = future.result()
        except (ConfigError, MoveDestinationUnknown):  # nothing will arrive: say why
            raise
        except Exception as exc:  # failed midway: keep what arrived
            logger.warning("%s; what did not arrive is reported as not retrieved", exc)
            got = arrived(layout, request)
        paths.extend(got.values())
        missing.extend(uid for uid in request.instances if uid not in got)
    return sorted(paths), missing


class _Route:
    """Where our Storage SCP files an instance: its series folder when the plan names
    it, else nowhere (refused)."""

    def __init__(self, expected: Mapping[str, str]) -> None:
        self.expected = expected
        self.made: set[str] = set()
        self.lock = threading.Lock()

    def __call__(self, sop_uid: str) -> Path | None:
        folder = self.expected.get(sop_uid)
        if folder is None:
            return None
        if folder not in self.made:
            with self.lock:
                Path(folder).mkdir(parents=True, exist_ok=True)
                self.made.add(folder)
        return Path(folder)


@contextmanager
def _move_folders(layout: LakeLayout, requests: Sequence[SeriesRequest]) -> Iterator[list[str]]:
    """Each series' folder for our SCP: in the lake when it is local, else in a local
    temporary folder whose files are put into the bucket lake after each C-MOVE."""
    if layout.is_local():
        yield [series_folder(layout, r) for r in requests]
        return
    with tempfile.TemporaryDirectory(prefix="dicomflow-move-") as scratch:
        yield [
            f"{scratch}/{safe_uid_component(r.study_uid)}/{safe_uid_component(r.series_uid)}"
            for r in requests
        ]


@contextmanager
def _interrupts_cancel_moves() -> Iterator[None]:
    """SIGTERM interrupts the main thread as Ctrl-C does, so that both cancel the
    C-MOVEs in flight (the caller sends C-CANCEL); the previous handler is restored."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return

    def interrupt(signum: int, frame: FrameType | None) -> None:
        raise KeyboardInterrupt

    previous = signal.signal(signal.SIGTERM, interrupt)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)
