"""QIDO-RS: what a query names on a DICOMweb server, down to the instance.

A query is the same ``{keyword: value}`` mapping the DIMSE source takes: a
backslash-separated UID list becomes QIDO's comma-separated list, a date range
stays ``from-to``, and a universal match (``*`` or empty) is left out, as it
matches everything anyway (some servers read a lone ``*`` literally). Results
are paged until the server has none left.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import pyarrow as pa
from pydicom.datadict import tag_for_keyword
from pydicom.dataset import Dataset

from dicomflow.connectors.dicomweb.address import (
    DicomwebAddress,
    DicomwebError,
    DicomwebOptions,
    open_client,
)
from dicomflow.connectors.matches import matches_table
from dicomflow.errors import ConfigError

RETURN_KEYS = ("StudyInstanceUID", "SeriesInstanceUID", "SOPInstanceUID", "SOPClassUID")


@dataclass(frozen=True)
class FoundInstance:
    """One instance a QIDO search returned."""

    study_uid: str
    series_uid: str
    sop_uid: str
    sop_class_uid: str


def search_filters(query: Mapping[str, str]) -> dict[str, str]:
    """The QIDO-RS query parameters for a keyword query (keywords are checked)."""
    filters = {}
    for keyword, value in query.items():
        if tag_for_keyword(keyword) is None:
            raise ConfigError(f"unknown query keyword {keyword!r}")
        if value.strip() in ("", "*"):
            continue
        filters[keyword] = ",".join(value.split("\\"))
    return filters


def _first(item: Any, keyword: str) -> str:
    """The first value of ``keyword`` in one DICOM JSON object; "" when absent or empty."""
    if not isinstance(item, Mapping):
        raise DicomwebError("QIDO-RS search: an answer item is not a DICOM JSON object")
    tag = tag_for_keyword(keyword)
    element = item.get(f"{tag:08X}", {}) if tag is not None else {}
    if not isinstance(element, Mapping) or not isinstance(element.get("Value", []), list):
        raise DicomwebError("QIDO-RS search: the answer holds a malformed DICOM JSON element")
    values = element.get("Value") or [""]
    return str(values[0])


def search_instances(
    address: DicomwebAddress, query: Mapping[str, str], options: DicomwebOptions
) -> list[FoundInstance]:
    """Every instance matching ``query``; raises :class:`DicomwebError` on failure."""
    items = _search(address, "instance", search_filters(query), list(RETURN_KEYS), options)
    rows = [FoundInstance(*(_first(item, k) for k in RETURN_KEYS)) for item in items]
    unique = dict.fromkeys(rows)  # ordered
    return [row for row in unique if row.study_uid and row.series_uid and row.sop_uid]


LEVELS = {"study": "StudyInstanceUID", "series": "SeriesInstanceUID", "instance": "SOPInstanceUID"}
SEARCHES = {
    "study": "search_for_studies",
    "series": "search_for_series",
    "instance": "search_for_instances",
}


def search_table(
    address: DicomwebAddress,
    level: str,
    query: Mapping[str, str],
    options: DicomwebOptions,
    *,
    return_keys: Sequence[str] = (),
    limit: int | None = None,
) -> pa.Table:
    """The matches of one QIDO-RS search at ``level`` (study, series or instance) as a
    table typed like ``instances`` (see :func:`dicomflow.connectors.matches.matches_table`)."""
    items = _search(
        address, level, search_filters(query), _fields(return_keys, query), options, limit=limit
    )
    return matches_table(_datasets(items), str(address), level)


def search_cohort(
    address: DicomwebAddress,
    level: str,
    column: str,
    values: Sequence[str],
    options: DicomwebOptions,
    *,
    query: Mapping[str, str] | None = None,
    return_keys: Sequence[str] = (),
) -> pa.Table:
    """One QIDO-RS search per cohort value (``column`` = value), results joined."""
    fields = _fields((*return_keys, column), query or {})
    items = [
        item
        for value in values
        for item in _search(
            address, level, search_filters({**(query or {}), column: value}), fields, options
        )
    ]
    return matches_table(_datasets(items), str(address), level)


def _fields(return_keys: Sequence[str], query: Mapping[str, str]) -> list[str]:
    """The attributes to ask for: the level's keys, the queried ones, the extra ones."""
    keys = [*RETURN_KEYS, *query, *return_keys]
    for keyword in keys:
        if tag_for_keyword(keyword) is None:
            raise ConfigError(f"unknown return key {keyword!r}")
    return list(dict.fromkeys(keys))


def _datasets(items: Sequence[Any]) -> list[Dataset]:
    """DICOM JSON objects as data sets; a malformed one is a :class:`DicomwebError`."""
    found = []
    for item in items:
        try:
            found.append(Dataset.from_json(item))
        except Exception:  # the server's words may quote values: not repeated
            raise DicomwebError("QIDO-RS search: an answer item is not valid DICOM JSON") from None
    return found


def _search(
    address: DicomwebAddress,
    level: str,
    filters: Mapping[str, str],
    fields: list[str],
    options: DicomwebOptions,
    *,
    limit: int | None = None,
) -> list[Any]:
    """Every JSON object a search at ``level`` answers, paged by offset until a page is
    empty or brings nothing new (servers that ignore ``offset`` repeat the first page),
    distinct by the level's UID; at most ``limit``."""
    if level not in LEVELS:
        raise ConfigError(f"a DICOMweb query is made at study, series or instance level: {level!r}")
    client = open_client(address, options)
    search: Callable[..., Any] = getattr(client, SEARCHES[level])
    key = LEVELS[level]
    found: dict[str, Any] = {}
    offset = 0
    while limit is None or len(found) < limit:
        try:
            page = search(search_filters=dict(filters), fields=fields, offset=offset)
        except ConfigError:
            raise
        except Exception as exc:
            raise DicomwebError.wrap("QIDO-RS search", exc) from None
        if not isinstance(page, list):
            raise DicomwebError("QIDO-RS search: the answer is not a list of DICOM JSON objects")
        new = {_first(item, key): item for item in page if _first(item, key) not in found}
        if not new:
            break
        found.update(new)
        offset += len(page)
    items = [item for uid, item in found.items() if uid]
    return items if limit is None else items[:limit]
