"""Retrieve from a PACS into the lake, then ingest what arrived.

1. On the client, an IMAGE-level C-FIND lists what the query should bring
   (SOP Instance UIDs and classes, by series).
2. One Dask task per series C-GETs it into ``<lake>/_retrieved/<study>/<series>/``
   (validated path components), holding a cluster-wide semaphore so no more
   than ``max_associations`` associations hit the PACS at once. Instances
   already retrieved are not fetched again: a series partly there (an
   interrupted run) and the instances missing after the series-level C-GET
   are asked for by SOP Instance UID.
3. The retrieved files go through the usual ingest; whatever is still missing
   becomes an error row ``not_retrieved``.
"""

from __future__ import annotations

import hashlib
import json
import uuid
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

from dask.delayed import delayed
from distributed import Client
from pydicom.dataset import Dataset

from dicomflow.connectors.dimse.address import DimseAddress, DimseOptions
from dicomflow.connectors.dimse.find import Level, c_find
from dicomflow.connectors.dimse.get import c_get, classes_to_accept
from dicomflow.connectors.dimse.reliability import RetryPolicy
from dicomflow.errors import ErrorCode
from dicomflow.lake.layout import LakeLayout, safe_uid_component
from dicomflow.pipelines.limits import associations_limit
from dicomflow.pipelines.plan import Partition
from dicomflow.pipelines.sinks import LakeSink
from dicomflow.records import Batch, InstanceRecord, RunContext, SourceRef

RETRIEVED = "_retrieved"
UIDS_PER_GET = 500  # a UID list stays far below the 64 KiB of an explicit VR UI value


@dataclass(frozen=True)
class SeriesRequest:
    """One series to fetch: its UIDs and the instances (UID → SOP class) it should hold."""

    study_uid: str
    series_uid: str
    instances: dict[str, str]


def plan_requests(
    address: DimseAddress, query: Mapping[str, str], options: DimseOptions
) -> list[SeriesRequest]:
    """What the query should bring, from an IMAGE-level C-FIND, grouped by series
    (an instance's SOP class is "" when the peer does not return it)."""
    series: dict[tuple[str, str], dict[str, str]] = {}
    for found in c_find(address, "image", query, options=options, return_keys=("SOPClassUID",)):
        key = (_text(found, "StudyInstanceUID"), _text(found, "SeriesInstanceUID"))
        series.setdefault(key, {})[_text(found, "SOPInstanceUID")] = _text(found, "SOPClassUID")
    return [
        SeriesRequest(study, uid, instances) for (study, uid), instances in sorted(series.items())
    ]


def _text(found: Dataset, keyword: str) -> str:
    """A returned value as text; "" when absent or empty (never "None")."""
    value = found.get(keyword)
    return "" if value is None else str(value)


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
    address: DimseAddress,
    options: DimseOptions,
    request: SeriesRequest,
    layout: LakeLayout,
    max_associations: int,
) -> dict[str, str]:
    """Task: fetch one series (only what is not already there); SOP UID → path.

    A series with nothing on disk is asked for whole; a series already partly
    there (an earlier run was interrupted) and whatever the series-level C-GET
    did not bring are asked for by SOP Instance UID, so nothing is fetched twice.
    """
    folder = series_folder(layout, request)
    have = arrived(layout, request)
    if len(have) < len(request.instances):
        classes = classes_to_accept(request.instances.values())
        policy = RetryPolicy()  # transient failures: backoff with jitter, then a breaker
        series = {"StudyInstanceUID": request.study_uid, "SeriesInstanceUID": request.series_uid}

        def get(level: Level, query: Mapping[str, str]) -> dict[str, Path]:
            return policy.call(
                lambda: c_get(address, level, query, folder, sop_classes=classes, options=options)
            ).received

        with associations_limit(address, max_associations)():
            if not have:
                have.update(get("series", series))
            still = [uid for uid in request.instances if uid not in have]
            for start in range(0, len(still), UIDS_PER_GET):
                uids = "\\".join(still[start : start + UIDS_PER_GET])
                have.update(get("image", {**series, "SOPInstanceUID": uids}))
    return {uid: str(path) for uid, path in have.items() if uid in request.instances}


def report_missing(
    layout: LakeLayout,
    address: DimseAddress,
    missing: Sequence[str],
    context: RunContext,
    query: Mapping[str, str] | None = None,
) -> int:
    """Commit one ``not_retrieved`` error row per instance the PACS did not deliver.

    The part is named by the peer and the query, so each retrieval with the same
    query replaces the previous report: an instance delivered by a later run no
    longer shows as missing.
    """
    refs = [SourceRef(f"{address}#sop={uid}") for uid in sorted(missing)]
    records = tuple(
        InstanceRecord(ref).with_error(
            "retrieve", ErrorCode.NOT_RETRIEVED, "the PACS did not deliver this instance"
        )
        for ref in refs
    )
    asked = json.dumps([str(address), sorted((query or {}).items())])
    name = "missing-" + hashlib.sha256(asked.encode()).hexdigest()[:20]
    LakeSink(layout, "retrieve").write(Batch(records, context), Partition(0, name, tuple(refs)))
    return len(records)


def retrieve(
    client: Client,
    address: DimseAddress,
    query: Mapping[str, str],
    *,
    layout: LakeLayout,
    options: DimseOptions,
    max_associations: int = 2,
    retries: int = 1,
) -> tuple[list[str], list[str]]:
    """Fetch everything the query names; return (retrieved paths, missing SOP UIDs)."""
    requests = plan_requests(address, query, options)
    task = delayed(retrieve_series, pure=False)
    token = uuid.uuid4().hex[:12]  # keys unique to this retrieval
    graph = [
        task(
            address,
            options,
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
        except Exception:  # failed midway (the PACS went away): keep what arrived
            got = {uid: str(path) for uid, path in arrived(layout, request).items()}
        paths.extend(got.values())
        missing.extend(uid for uid in request.instances if uid not in got)
    return sorted(paths), missing
