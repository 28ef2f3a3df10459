"""C-FIND: query a PACS and stream matches into an Arrow table typed like ``instances``.

Matching is the peer's: wildcards (``*``, ``?``), date and time ranges
(``20240101-20241231``, open ``-20241231``), UID lists (``uid1\\uid2``) are
passed through as DICOM query values, except a lone ``*``, which is sent as an
empty value: PS3.4 C.2.2.2.4 defines both as universal matching, but some peers
(Orthanc 1.10) match ``*`` only against values that are present, so
``PatientID=*`` would miss every study without a Patient ID.

:func:`find_images` makes a query at the level the user means (patient, study,
series or image) and follows each match down the hierarchy by its unique keys,
as a strictly hierarchical peer requires. Queries and identifiers are never logged.
"""

from __future__ import annotations

import logging
import time
import warnings
from collections.abc import Iterator, Mapping, Sequence
from itertools import chain
from pathlib import Path
from typing import Any

import pyarrow as pa
from pydicom.datadict import dictionary_VR, tag_for_keyword
from pydicom.dataset import Dataset
from pynetdicom.sop_class import (  # type: ignore[attr-defined]
    PatientRootQueryRetrieveInformationModelFind,
    StudyRootQueryRetrieveInformationModelFind,
)

from dicomflow.connectors.dimse.address import DimseAddress, DimseOptions, Level, Model
from dicomflow.connectors.dimse.association import DimseError, associate
from dicomflow.connectors.matches import matches_table
from dicomflow.errors import ConfigError

logger = logging.getLogger(__name__)

MODELS = {
    "patient": PatientRootQueryRetrieveInformationModelFind,
    "study": StudyRootQueryRetrieveInformationModelFind,
}
RETURN_KEYS: dict[str, tuple[str, ...]] = {
    "patient": (
        "PatientID",
        "PatientName",
        "PatientBirthDate",
        "PatientSex",
        "NumberOfPatientRelatedStudies",
    ),
    "study": (
        "StudyInstanceUID",
        "StudyDate",
        "StudyTime",
        "AccessionNumber",
        "StudyID",
        "PatientID",
        "PatientName",
        "StudyDescription",
        "ModalitiesInStudy",
        "ReferringPhysicianName",
        "NumberOfStudyRelatedSeries",
        "NumberOfStudyRelatedInstances",
    ),
    "series": (
        "StudyInstanceUID",
        "SeriesInstanceUID",
        "Modality",
        "SeriesNumber",
        "SeriesDescription",
        "BodyPartExamined",
        "NumberOfSeriesRelatedInstances",
    ),
    "image": (
        "StudyInstanceUID",
        "SeriesInstanceUID",
        "SOPInstanceUID",
        "SOPClassUID",
        "InstanceNumber",
    ),
}
LEVELS: tuple[Level, ...] = ("patient", "study", "series", "image")
UNIQUE_KEYS: dict[str, str] = {
    "patient": "PatientID",
    "study": "StudyInstanceUID",
    "series": "SeriesInstanceUID",
    "image": "SOPInstanceUID",
}
UNIVERSAL = "*"
_PENDING = (0xFF00, 0xFF01)
_CANCELLED = 0xFE00


def query_dataset(
    level: Level, query: Mapping[str, str], return_keys: Sequence[str] = ()
) -> Dataset:
    """The C-FIND identifier: the level, the matching keys, and empty return keys.

    A dotted key names an attribute inside a sequence (sequence matching, PS3.4
    C.2.2.2.6): ``ProcedureCodeSequence.CodeValue=T-04000`` becomes a one-item
    ``ProcedureCodeSequence`` holding ``CodeValue``; a sequence named alone is a
    zero-length (universal) key. SCPs that do not support sequence matching
    ignore it or treat it as a return key.
    """
    if level not in RETURN_KEYS:
        raise ConfigError(f"unknown query level {level!r}; use patient, study, series or image")
    ds = Dataset()
    ds.QueryRetrieveLevel = "IMAGE" if level == "image" else level.upper()
    with warnings.catch_warnings():  # ranges and wildcards are not valid stored values
        warnings.simplefilter("ignore")
        for keyword in (*RETURN_KEYS[level], *return_keys, *query):
            _set_key(ds, keyword, query.get(keyword))
    return ds


def _set_key(ds: Dataset, key: str, value: str | None) -> None:
    """Set one (possibly dotted) key; an empty value (or a lone ``*``, sent empty) for
    a plain key is universal matching."""
    head, _, rest = key.partition(".")
    if tag_for_keyword(head) is None:
        raise ConfigError(f"{head!r} is not a DICOM keyword")
    if not rest:
        if dictionary_VR(head) == "SQ":
            if head not in ds:
                setattr(ds, head, [])
        else:
            setattr(ds, head, "" if value == UNIVERSAL else value)
        return
    if dictionary_VR(head) != "SQ":
        raise ConfigError(f"{head!r} is not a sequence, so {key!r} cannot match inside it")
    if head not in ds or not ds[head].value:
        setattr(ds, head, [Dataset()])
    _set_key(ds[head].value[0], rest, value)


def c_find(
    address: DimseAddress,
    level: Level,
    query: Mapping[str, str],
    *,
    model: Model = "study",
    return_keys: Sequence[str] = (),
    limit: int | None = None,
    options: DimseOptions | None = None,
) -> Iterator[Dataset]:
    """Yield matching identifiers; after ``limit`` matches send C-CANCEL and stop."""
    if model == "study" and level == "patient":
        raise ConfigError("the study-root model has no PATIENT level; use model='patient'")
    information_model = MODELS[model]
    identifier = query_dataset(level, query, return_keys)
    with associate(address, options or DimseOptions(), [(information_model, None)]) as assoc:
        started = time.perf_counter()
        count = 0
        for found in _matches(assoc, identifier, information_model, address, limit):
            count += 1
            yield found
        logger.info(
            "C-FIND at %s level: %d matches in %.0f ms",
            level,
            count,
            1000 * (time.perf_counter() - started),
        )


def find_images(
    address: DimseAddress,
    query: Mapping[str, str],
    *,
    level: Level = "image",
    return_keys: Sequence[str] = (),
    options: DimseOptions | None = None,
) -> Iterator[Dataset]:
    """IMAGE-level identifiers of everything ``query`` matches at ``level``, over one
    association.

    The query is made at ``level``; each match is then followed down one level at
    a time with the unique keys above it only (a hierarchical search, PS3.4
    C.4.1.3.1), so it works with peers that support nothing else. The patient
    level uses the patient-root model, the others the study-root model. A match
    without its unique key cannot be followed (it would match everything) and is
    skipped with a warning.
    """
    if level not in LEVELS:
        raise ConfigError(f"unknown query level {level!r}; use patient, study, series or image")
    model: Model = "patient" if level == "patient" else "study"
    information_model = MODELS[model]
    with associate(address, options or DimseOptions(), [(information_model, None)]) as assoc:
        started = time.perf_counter()
        if level == "image":
            yield from _matches(
                assoc, query_dataset("image", query, return_keys), information_model, address
            )
            return
        chain = LEVELS if model == "patient" else LEVELS[1:]
        parents: list[dict[str, str]] = [dict(query)]  # at the user's level: the query
        skipped = 0
        for current in chain[chain.index(level) :]:
            if current == "image":
                for parent in parents:
                    identifier = query_dataset("image", parent, return_keys)
                    yield from _matches(assoc, identifier, information_model, address)
                break
            above = [UNIQUE_KEYS[lv] for lv in chain[: chain.index(current)]]
            children: dict[tuple[str, ...], dict[str, str]] = {}
            for parent in parents:
                known = parent if current != level else {}
                asked = query_dataset(current, parent, above)
                for found in list(_matches(assoc, asked, information_model, address)):
                    # above the user's level, the parent's keys (some peers return none)
                    keys = {k: _value(found, k) or known.get(k, "") for k in above}
                    keys[UNIQUE_KEYS[current]] = _value(found, UNIQUE_KEYS[current])
                    if not all(keys.values()):
                        skipped += 1
                        continue
                    children[tuple(keys.values())] = keys
            parents = list(children.values())
        if skipped:
            logger.warning("%d matches had no unique key and could not be followed", skipped)
        logger.info(
            "hierarchical C-FIND from %s level in %.0f ms",
            level,
            1000 * (time.perf_counter() - started),
        )


def _value(found: Dataset, keyword: str) -> str:
    """A returned value as text; "" when absent or empty."""
    value = found.get(keyword)
    return "" if value is None else str(value)


def _matches(
    assoc: Any,
    identifier: Dataset,
    information_model: str,
    address: DimseAddress,
    limit: int | None = None,
) -> Iterator[Dataset]:
    """One C-FIND on an open association: the matches, with C-CANCEL after ``limit``."""
    context_id = next(
        cx.context_id for cx in assoc.accepted_contexts if cx.abstract_syntax == information_model
    )
    count, cancelled = 0, False
    for status, found in assoc.send_c_find(identifier, information_model, msg_id=1):
        code = getattr(status, "Status", None)
        if code is None:
            raise DimseError(f"{address} stopped answering the C-FIND")
        if code in _PENDING and found is not None:
            if limit is not None and count >= limit:
                continue  # matches still in flight after the cancel
            count += 1
            yield found
            if limit is not None and count >= limit and not cancelled:
                assoc.send_c_cancel(1, context_id)
                cancelled = True
        elif code not in (0x0000, _CANCELLED):
            raise DimseError(f"{address} failed the C-FIND", status=code)


COHORT_KEYS = ("AccessionNumber", "PatientID", "StudyInstanceUID")


def read_cohort(path: str) -> tuple[str, list[str]]:
    """The identifier column of a cohort CSV (the first of COHORT_KEYS in its header)."""
    import csv

    with Path(path).open(newline="", encoding="utf-8-sig") as fh:
        reader = csv.DictReader(fh)
        column = next((k for k in COHORT_KEYS if k in (reader.fieldnames or [])), None)
        if column is None:
            raise ConfigError(f"the cohort CSV needs a column named one of {COHORT_KEYS}")
        values = [row[column].strip() for row in reader if row.get(column, "").strip()]
    return column, values


def find_cohort(
    address: DimseAddress,
    level: Level,
    column: str,
    values: Sequence[str],
    *,
    query: Mapping[str, str] | None = None,
    model: Model = "study",
    return_keys: Sequence[str] = (),
    options: DimseOptions | None = None,
) -> pa.Table:
    """One C-FIND per cohort value (over one association), results joined in one table."""
    information_model = MODELS[model]
    with associate(address, options or DimseOptions(), [(information_model, None)]) as assoc:
        found = chain.from_iterable(
            _matches(
                assoc,
                query_dataset(level, {**(query or {}), column: value}, (*return_keys, column)),
                information_model,
                address,
            )
            for value in values
        )
        return matches_table(found, str(address), level)


def find_table(
    address: DimseAddress,
    level: Level,
    query: Mapping[str, str],
    *,
    model: Model = "study",
    return_keys: Sequence[str] = (),
    limit: int | None = None,
    options: DimseOptions | None = None,
) -> pa.Table:
    """The matches of one C-FIND as an Arrow table (see
    :func:`dicomflow.connectors.matches.matches_table`)."""
    found = c_find(
        address, level, query, model=model, return_keys=return_keys, limit=limit, options=options
    )
    return matches_table(found, str(address), level)
