"""QIDO-RS: what a query names on a DICOMweb server, down to the instance.

A query is the same ``{keyword: value}`` mapping the DIMSE source takes: a
backslash-separated UID list becomes QIDO's comma-separated list, a date range
stays ``from-to``, and a universal match (``*`` or empty) is left out, as it
matches everything anyway (some servers read a lone ``*`` literally). Results
are paged until the server has none left.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from pydicom.datadict import tag_for_keyword

from dicomflow.connectors.dicomweb.address import (
    DicomwebAddress,
    DicomwebError,
    DicomwebOptions,
    open_client,
)
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
    filters = search_filters(query)
    client = open_client(address, options)
    seen: dict[FoundInstance, None] = {}  # ordered
    offset = 0
    while True:  # page by offset until a page is empty or brings nothing new
        try:
            page = client.search_for_instances(
                search_filters=filters, fields=list(RETURN_KEYS), offset=offset
            )
        except ConfigError:
            raise
        except Exception as exc:
            raise DicomwebError.wrap("QIDO-RS search", exc) from None
        rows = [FoundInstance(*(_first(item, k) for k in RETURN_KEYS)) for item in page]
        new = [row for row in rows if row not in seen]
        if not new:
            break
        seen.update(dict.fromkeys(new))
        offset += len(page)
    return [row for row in seen if row.study_uid and row.series_uid and row.sop_uid]
