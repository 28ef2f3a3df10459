"""One SR document to its rows: the content tree walked once, every table made from it."""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass
from typing import Any

from pydicom.dataset import Dataset

from dicomflow.sr.content import content_rows
from dicomflow.sr.items import Item
from dicomflow.sr.measurements import template_rows
from dicomflow.sr.tree import Problem, walk

SR_CLASS_PREFIX = "1.2.840.10008.5.1.4.1.1.88."  # every Structured Report storage class


def is_sr_class(sop_class_uid: str | None) -> bool:
    """Whether a SOP class is one of the Structured Report storage classes (PS3.4 B.5)."""
    return bool(sop_class_uid) and str(sop_class_uid).strip().startswith(SR_CLASS_PREFIX)


@dataclass(frozen=True)
class SrExtraction:
    """A document's rows and what was wrong with it."""

    content: list[dict[str, Any]]
    measurements: list[dict[str, Any]]
    problems: tuple[Problem, ...]

    @property
    def faults(self) -> tuple[Problem, ...]:
        """The problems that leave the extraction incomplete (each document with any
        gets one error row)."""
        return tuple(p for p in self.problems if p.is_fault)

    def fault_message(self) -> str:
        """What went wrong, by code and count (no values, no paths' content)."""
        counts = Counter(p.code for p in self.faults)
        listed = ", ".join(f"{n} {code.replace('_', ' ')}" for code, n in sorted(counts.items()))
        return f"SR content tree: {listed}; rows of the valid items kept and flagged"


def extract(
    document: Item | Dataset, *, content: bool = True, measurements: bool = True
) -> SrExtraction:
    """The ``sr_content`` and ``measurements`` rows of an SR document (an element tree
    as the scan read it, or a pydicom data set); a row of a document with faults is
    ``flagged``."""
    ds = document if isinstance(document, Item) else Item.from_dataset(document)
    tree = walk(ds)
    sop = ds.get("SOPInstanceUID")
    uid = str(sop).strip() if sop else None
    items = content_rows(tree, uid) if content else []
    values = template_rows(tree, uid) if measurements else []
    flagged = any(p.is_fault for p in tree.problems)
    for row in (*items, *values):
        row["flagged"] = flagged
    return SrExtraction(items, values, tree.problems)
