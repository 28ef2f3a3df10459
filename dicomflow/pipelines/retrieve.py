"""Retrieve from a PACS or a DICOMweb server into the lake, then ingest what arrived.

1. On the client, the peer lists what the query should bring (an IMAGE-level
   C-FIND, or a QIDO-RS instance search): SOP Instance UIDs and classes, by series.
2. One Dask task per series fetches it (C-GET, or WADO-RS) into
   ``<lake>/_retrieved/<study>/<series>/`` (validated path components), holding
   a cluster-wide semaphore so no more than ``max_associations`` connections hit
   the peer at once. Instances already retrieved are not fetched again: a series
   partly there (an interrupted run) and the instances missing after the
   series-level fetch are asked for by SOP Instance UID.
3. The retrieved files go through the usual ingest; whatever is still missing
   becomes an error row ``not_retrieved``.
"""

from __future__ import annotations

import hashlib
import json
import tempfile
import uuid
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from pathlib import Path

from dask.delayed import delayed
from distributed import Client

from dicomflow.connectors.peers import Peer, SeriesRequest
from dicomflow.errors import ConfigError, ErrorCode
from dicomflow.lake.layout import LakeLayout, safe_uid_component
from dicomflow.pipelines.limits import associations_limit
from dicomflow.pipelines.plan import Partition
from dicomflow.pipelines.sinks import LakeSink
from dicomflow.records import Batch, InstanceRecord, RunContext, SourceRef

RETRIEVED = "_retrieved"


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


def retrieve_series(
    peer: Peer, request: SeriesRequest, layout: LakeLayout, max_associations: int
) -> dict[str, str]:
    """Task: fetch one series (only what is not already there); SOP UID → path.

    A series with nothing on disk is asked for whole; a series already partly
    there (an earlier run was interrupted) and whatever the series-level fetch
    did not bring are asked for by SOP Instance UID, so nothing is fetched twice.
    """
    have = arrived(layout, request)
    if len(have) < len(request.instances):
        with associations_limit(peer, max_associations)(), _landing(layout, request) as land:
            if not have:
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
def _landing(layout: LakeLayout, request: SeriesRequest) -> Iterator[_Landing]:
    if layout.is_local():
        yield _Landing(layout, request, None)
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
            "retrieve", ErrorCode.NOT_RETRIEVED, "the peer did not deliver this instance"
        )
        for ref in refs
    )
    asked = json.dumps([str(peer), sorted((query or {}).items())])
    name = "missing-" + hashlib.sha256(asked.encode()).hexdigest()[:20]
    LakeSink(layout, "retrieve").write(Batch(records, context), Partition(0, name, tuple(refs)))
    return len(records)


def retrieve(
    client: Client,
    peer: Peer,
    query: Mapping[str, str],
    *,
    layout: LakeLayout,
    max_associations: int = 2,
    retries: int = 1,
) -> tuple[list[str], list[str]]:
    """Fetch everything the query names; return (retrieved paths, missing SOP UIDs)."""
    requests = peer.plan(query)
    task = delayed(retrieve_series, pure=False)
    token = uuid.uuid4().hex[:12]  # keys unique to this retrieval
    graph = [
        task(
            peer,
            request,
            layout,
            max_associations,
            dask_key_name=f"dicomflow-retrieve-{token}-{number}",
        )
        for number, request in enumerate(requests)
    ]
    results = client.compute(graph, retries=retries)
    paths: list[str] = []
    missing: list[str] = []
    for request, future in zip(requests, results, strict=True):
        try:
            got = future.result()
        except ConfigError:  # e.g. a secret's variable missing on the workers: not the peer's
            raise
        except Exception:  # failed midway (the peer went away): keep what arrived
            got = arrived(layout, request)
        paths.extend(got.values())
        missing.extend(uid for uid in request.instances if uid not in got)
    return sorted(paths), missing
