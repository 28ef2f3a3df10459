"""Independent readings of SR documents for the tests: a plain pydicom walk written
here, and highdicom's parsers where they accept the document."""

from __future__ import annotations

import os
import warnings
from pathlib import Path
from typing import Any

import pydicom
from pydicom.dataset import Dataset

from dicomflow.records import Element
from tests.conftest import CORPUS, corpus_manifest

SR_PREFIX = "1.2.840.10008.5.1.4.1.1.88."


def sr_files() -> list[str]:
    """Every SR document of the corpus, by its path relative to the corpus."""
    return [
        row["relative_path"]
        for row in corpus_manifest()
        if row["sop_class_uid"].startswith(SR_PREFIX)
    ]


def read(relative: str) -> Dataset:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return pydicom.dcmread(CORPUS / relative, force=True)


def header_elements(path: Path) -> tuple[Element, ...]:
    """The element tree the scan makes of ``path`` (what the operator reads)."""
    from dicomflow.dicom.header import read_header

    with path.open("rb") as fp:
        return read_header(fp, size=os.path.getsize(path)).elements


def walk(ds: Dataset) -> list[dict[str, Any]]:
    """Every content item in document order: path, relationship, value type, concept,
    by-reference target; the root first (path ``1``)."""
    order = [_entry("1", None, ds)]

    def visit(path: str, item: Dataset) -> None:
        for number, child in enumerate(item.get("ContentSequence") or (), 1):
            child_path = f"{path}.{number}"
            order.append(_entry(child_path, path, child))
            visit(child_path, child)

    visit("1", ds)
    return order


def _entry(path: str, parent: str | None, item: Dataset) -> dict[str, Any]:
    names = item.get("ConceptNameCodeSequence")
    concept = None
    if names:
        concept = (names[0].CodeValue, names[0].CodingSchemeDesignator, names[0].CodeMeaning)
    target = item.get("ReferencedContentItemIdentifier")
    return {
        "path": path,
        "parent_path": parent,
        "relationship_type": item.get("RelationshipType") or None,
        "value_type": item.get("ValueType") or None,
        "concept": concept,
        "referenced_path": None if target is None else ".".join(str(n) for n in target),
        "item": item,
    }


def numbers(ds: Dataset, container: tuple[str, str], concept: tuple[str, str]) -> list[Any]:
    """For each container named ``container`` (document order), the Numeric Value of the
    first NUM named ``concept`` in its subtree, as written in the file (None if absent)."""
    found = []
    for entry in walk(ds):
        if entry["concept"] and entry["concept"][:2] == container:
            found.append(_first_number(entry["item"], concept))
    return found


def _first_number(item: Dataset, concept: tuple[str, str]) -> float | None:
    for child in item.get("ContentSequence") or ():
        names = child.get("ConceptNameCodeSequence")
        if (
            child.get("ValueType") == "NUM"
            and names
            and (names[0].CodeValue, names[0].CodingSchemeDesignator) == concept
        ):
            measured = child.get("MeasuredValueSequence")
            return float(measured[0].NumericValue) if measured else None
        deeper = _first_number(child, concept)
        if deeper is not None:
            return deeper
    return None


def read_path(path: Path) -> Dataset:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return pydicom.dcmread(path, force=True)
