"""Late arrivals: studies the archive holds more instances of than the lake retrieved.

A ``StudyDate`` watermark misses a study that reaches the archive late with an old
date, and instances added to a study the lake already holds. An incremental run
therefore also asks the archive, with one STUDY-level C-FIND, for each study's Number
of Study Related Instances (for studies dated within ``look_back_days`` of the run, or
all that match), and compares it with the instances of that study in the lake's
retrieval folder. The studies that differ are planned again; what already arrived is
not fetched twice (:func:`dicomflow.pipelines.retrieve.arrived`).

Only the query's patient- and study-level keys narrow that C-FIND: a study matched
there but holding instances that a series- or image-level key leaves out is planned
again on every run, and fetches nothing new.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from datetime import date, timedelta

from dicomflow.connectors.dimse.find import RETURN_KEYS, c_find
from dicomflow.connectors.peers import DimsePeer
from dicomflow.lake.layout import LakeLayout, safe_uid_component
from dicomflow.pipelines.retrieve import RETRIEVED

logger = logging.getLogger(__name__)

STUDY_KEYS = frozenset({*RETURN_KEYS["patient"], *RETURN_KEYS["study"]})
COUNT = "NumberOfStudyRelatedInstances"


def late_studies(
    peer: DimsePeer,
    query: Mapping[str, str],
    layout: LakeLayout,
    *,
    today: date,
    look_back_days: int | None,
) -> list[str]:
    """The Study Instance UIDs whose instances in the archive outnumber the lake's
    (a study the lake has none of included). A study whose count the archive does not
    return is included too: it cannot be shown complete."""
    study_query = {k: v for k, v in query.items() if k in STUDY_KEYS}
    if look_back_days is not None and "StudyDate" not in study_query:
        study_query["StudyDate"] = f"{today - timedelta(days=look_back_days):%Y%m%d}-"
    held = retrieved_per_study(layout)
    late: list[str] = []
    found = c_find(peer.address, "study", study_query, return_keys=(COUNT,), options=peer.options)
    for study in found:
        uid = str(study.get("StudyInstanceUID") or "")
        count = study.get(COUNT)
        if not uid:
            continue
        if count in (None, "") or int(count) > held.get(safe_uid_component(uid), 0):
            late.append(uid)
    logger.info("late arrivals: %d studies to plan again", len(late))
    return late


def retrieved_per_study(layout: LakeLayout) -> dict[str, int]:
    """How many instances each study's retrieval folder holds (by folder name)."""
    fs, root = layout.filesystem()
    counts: dict[str, int] = {}
    try:
        files = fs.find(f"{root}/{RETRIEVED}")
    except FileNotFoundError:
        return counts
    prefix = f"{root}/{RETRIEVED}/"
    for path in files:
        parts = str(path).removeprefix(prefix).split("/")
        if len(parts) == 3 and parts[2].endswith(".dcm"):
            counts[parts[0]] = counts.get(parts[0], 0) + 1
    return counts
