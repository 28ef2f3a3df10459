"""A sequence that is dummied, zeroed or kept for conformance keeps no original item text.

Every single-tag row of PS3.15 Table E.1-1 is planted (at the top level, nested
1, 2 and 5 deep and inside an SR tree, see ``test_actions``) and de-identified
with the basic profile. For each sequence row whose expected action (from
:mod:`tests.anonymize.oracle`) is not K, no text value of its original items
(codes, free text, names, dates) may be found in the output's items, unless
the table explicitly keeps that attribute.
"""

from __future__ import annotations

import ast
import json
from pathlib import Path
from typing import Any

import pytest
from pydicom.datadict import dictionary_VR
from pydicom.dataset import Dataset
from pydicom.multival import MultiValue

from tests.anonymize import oracle
from tests.anonymize.oracle import expected_code, single_tag_rows
from tests.anonymize.test_actions import CASES, CT_IMAGE_STORAGE, Case, holder_of, run_case

TEXT_VRS = frozenset(
    {"AE", "AS", "CS", "DA", "DS", "DT", "IS", "LO", "LT", "PN", "SH", "ST", "TM", "UC", "UR", "UT"}
)
SEQUENCE_ROWS = [row for row in single_tag_rows() if str(dictionary_VR(row.tag)) == "SQ"]


def texts(items: Any, kept: frozenset[int]) -> set[str]:
    """Every non-empty text value held by ``items`` at any depth, except ``kept`` tags."""
    found: set[str] = set()
    for item in items or ():
        if not isinstance(item, Dataset):
            continue
        for elem in item:
            if int(elem.tag) in kept:
                continue
            if elem.VR == "SQ":
                found |= texts(elem.value, kept)
            elif elem.VR in TEXT_VRS and elem.value not in (None, ""):
                values = elem.value if isinstance(elem.value, (list, MultiValue)) else [elem.value]
                found |= {str(v).strip() for v in values if str(v).strip()}
    return found


def leaking_sequences(case: Case) -> dict[str, list[str]]:
    """Sequence rows (by name) whose output items still hold original text, per placement."""
    kept = frozenset(
        row.tag
        for row in single_tag_rows()
        if expected_code(
            row, case.options, sop_class=CT_IMAGE_STORAGE, pseudonymize=case.pseudonymize
        )
        == "K"
    )
    leaks: dict[str, list[str]] = {}
    for row in SEQUENCE_ROWS:
        code = expected_code(
            row, case.options, sop_class=CT_IMAGE_STORAGE, pseudonymize=case.pseudonymize
        )
        if code in ("K", "C"):
            continue
        for name, out in run_case(case).outputs.items():
            placement = name.removesuffix("-bytes").removesuffix("-other-key")
            before, after = holder_of(out.original, placement), holder_of(out.result, placement)
            if before is None or after is None or row.tag not in after:
                continue
            original = texts(before[row.tag].value, kept)
            survived = original & texts(after[row.tag].value, frozenset())
            if survived:
                leaks.setdefault(row.name, []).append(f"{name}: {len(survived)} values")
    return leaks


@pytest.mark.parametrize("case", CASES, ids=lambda c: c.name)
def test_no_sequence_keeps_original_item_text(case: Case) -> None:
    leaks = leaking_sequences(case)
    assert not leaks, f"{len(leaks)} sequences keep original item text: " + "; ".join(
        f"{name} ({', '.join(where)})" for name, where in sorted(leaks.items())
    )


def test_sequence_rows_cover_every_kind_of_action() -> None:
    codes = {row.basic for row in SEQUENCE_ROWS}
    assert {"X", "Z", "D", "X/Z", "X/D", "X/Z/D", "X/Z/U*"} <= codes
    assert len(SEQUENCE_ROWS) == 63


def test_the_oracle_shares_nothing_with_the_engine() -> None:
    """The oracle reads the JSON files itself: it imports nothing from ``dicomflow``."""
    source = Path(oracle.__file__).read_text("utf-8")
    imported = set()
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Import):
            imported |= {alias.name for alias in node.names}
        elif isinstance(node, ast.ImportFrom):
            imported.add(node.module or "")
    assert not {name for name in imported if name.split(".")[0] in ("dicomflow", "tests")}


def test_every_iod_requirement_names_its_source() -> None:
    doc = json.loads(oracle.REQUIREMENTS_PATH.read_text("utf-8"))
    assert "dciodvfy" in doc["source"]
    for entry in doc["requirements"]:
        assert entry["source"] in ("PS3.3", "dciodvfy") and entry["why"], entry
        assert entry["type"] in ("1", "2") and len(entry["tag"]) == 8, entry
        assert entry.get("sop_class") or entry.get("sop_class_prefix"), entry
