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
import uuid
from collections.abc import Mapping, Sequence
from pathlib import Path

from dask.delayed import delayed
from distributed import Client

from dicomflow.errors import ErrorCode
from dicomflow.lake.layout import LakeLayout, safe_uid_component
from dicomflow.pipelines.limits import associations_limit
from dicomflow.pipelines.peers import Peer, SeriesRequest
from dicomflow.pipelines.plan import Partition
from dicomflow.pipelines.sinks import LakeSink
from dicomflow.records import Batch, InstanceRecord, RunContext, SourceRef

RETRIEVED = "_retrieved"


def series_folder(layout: LakeLayout, request: SeriesRequest) -> Path:
    _, root = layout.filesystem()
    return (
        Path(root)
        / RETRIEVED
        / safe_uid_component(request.study_uid)
        / safe_uid_component(request.series_uid)
    )


def arrived(layout: LakeLayout, request: SeriesRequest) -> dict[str, Path]:
    """The instances of ``request`` already on disk (complete: each is renamed into place)."""
    folder = series_folder(layout, request)
    paths = {uid: folder / f"{safe_uid_component(uid)}.dcm" for uid in request.instances}
    return {uid: path for uid, path in paths.items() if path.exists()}


def retrieve_series(
    peer: Peer, request: SeriesRequest, layout: LakeLayout, max_associations: int
) -> dict[str, str]:
    """Task: fetch one series (only what is not already there); SOP UID → path.

    A series with nothing on disk is asked for whole; a series already partly
    there (an earlier run was interrupted) and whatever the series-level fetch
    did not bring are asked for by SOP Instance UID, so nothing is fetched twice.
    """
    folder = series_folder(layout, request)
    have = arrived(layout, request)
    if len(have) < len(request.instances):
        with associations_limit(peer, max_associations)():
            if not have:
                have.update(peer.fetch_series(request, folder))
            still = [uid for uid in request.instances if uid not in have]
            if still:
                have.update(peer.fetch_instances(request, folder, still))
    return {uid: str(path) for uid, path in have.items() if uid in request.instances}


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
        except Exception:  # failed midway (the peer went away): keep what arrived
            got = {uid: str(path) for uid, path in arrived(layout, request).items()}
        paths.extend(got.values())
        missing.extend(uid for uid in request.instances if uid not in got)
    return sorted(paths), missing
