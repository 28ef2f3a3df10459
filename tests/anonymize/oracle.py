"""The expected action of every PS3.15 Table E.1-1 row, derived here from the standard's text.

This module is the tests' oracle and shares nothing with ``dicomflow.anonymize``:
it reads the table and the IOD requirements as JSON files and applies the
action codes as PS3.15 E.1.1 defines them:

- X remove, Z zero length, D dummy, K keep, C clean, U replace the UID;
- ``Z/D``: Z unless the IOD needs a value (Type 1), then D;
- ``X/Z``, ``X/D``, ``X/Z/D``: X unless the IOD requires the attribute; then Z for
  Type 2 and D for Type 1 (an empty Type 1 attribute would not conform);
- ``X/Z/U*``: X unless required; then Z for Type 2 and U for Type 1 (a sequence
  keeps its items, with UIDs replaced and all other text dummied);
- an X on an attribute the IOD requires becomes Z (Type 2) or D (Type 1);
- a sequence the IOD requires (Type 1 or 2) is never empty: where the same
  sequence is Type 3 at another depth, an empty one does not conform, so it
  becomes D (U for ``X/Z/U*``): items kept, UIDs replaced, other text dummied;
- an option's column wins when the option is chosen, K over C;
- PatientName and PatientID are cleaned (keyed pseudonyms) unless that is off.

What the IOD requires is looked up per SOP Class, for the tag anywhere in the
instance (dciodvfy's verdicts do not say at which depth).
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from functools import cache
from pathlib import Path
from typing import Any

from pydicom.datadict import dictionary_VR

DATA = Path(__file__).resolve().parents[2] / "dicomflow" / "anonymize" / "data"
TABLE_PATH = DATA / "ps3.15-annex-e-2024b.json"
REQUIREMENTS_PATH = DATA / "iod_requirements.json"
COMPOUND_CODES = frozenset({"Z/D", "X/Z", "X/D", "X/Z/D", "X/Z/U*"})
OPTION_COLUMNS = {
    "retain-safe-private": "rtnSafePrivOpt",
    "retain-uids": "rtnUIDsOpt",
    "retain-device-identity": "rtnDevIdOpt",
    "retain-institution-identity": "rtnInstIdOpt",
    "retain-patient-characteristics": "rtnPatCharsOpt",
    "retain-longitudinal-full": "rtnLongFullDatesOpt",
    "retain-longitudinal-modified": "rtnLongModifDatesOpt",
    "clean-descriptors": "cleanDescOpt",
    "clean-structured-content": "cleanStructContOpt",
    "clean-graphics": "cleanGraphOpt",
}
PATIENT_NAME = 0x00100010
PATIENT_ID = 0x00100020


@dataclass(frozen=True)
class Row:
    """One single-tag row of the table, as the JSON file has it."""

    tag: int
    name: str
    basic: str
    options: Mapping[str, str]


@cache
def read_table() -> dict[str, Any]:
    """The table file, parsed."""
    doc: dict[str, Any] = json.loads(TABLE_PATH.read_text("utf-8"))
    return doc


@cache
def single_tag_rows() -> tuple[Row, ...]:
    """Every single-tag row (the four pattern rows are left out)."""
    rows = []
    for raw in read_table()["rows"]:
        if re.fullmatch(r"[0-9A-Fa-f]{8}", raw["id"]):
            options = {col: raw[col] for col in OPTION_COLUMNS.values() if raw.get(col)}
            rows.append(Row(int(raw["id"], 16), raw["name"], raw["basicProfile"], options))
    return tuple(rows)


@cache
def _requirements() -> tuple[tuple[str, bool, int, str], ...]:
    """(SOP Class UID or prefix, is a prefix, tag, type) from the requirements file."""
    doc = json.loads(REQUIREMENTS_PATH.read_text("utf-8"))
    out = []
    for r in doc["requirements"]:
        prefix = "sop_class_prefix" in r
        out.append(
            (
                r["sop_class_prefix"] if prefix else r["sop_class"],
                prefix,
                int(r["tag"], 16),
                r["type"],
            )
        )
    return tuple(out)


def required_type(sop_class: str, tag: int) -> str | None:
    """ "1" or "2" when the IOD of ``sop_class`` requires ``tag``, else None."""
    kinds = [
        kind
        for uid, prefix, t, kind in _requirements()
        if t == tag and (sop_class.startswith(uid) if prefix else sop_class == uid)
    ]
    return min(kinds) if kinds else None


def requiring_sop_classes() -> frozenset[str]:
    """The SOP Classes named exactly by the requirements file."""
    return frozenset(uid for uid, prefix, _, _ in _requirements() if not prefix)


def expected_code(
    row: Row, options: Iterable[str], *, sop_class: str, pseudonymize: bool = True
) -> str:
    """The one action (X, Z, D, K, C or U) the standard gives ``row`` in this instance."""
    if pseudonymize and row.tag in (PATIENT_NAME, PATIENT_ID):
        return "C"
    chosen = [row.options.get(OPTION_COLUMNS[o]) for o in options]
    if "K" in chosen:
        return "K"
    if "C" in chosen:
        return "C"
    kind = required_type(sop_class, row.tag)
    code = row.basic
    if kind is not None and str(dictionary_VR(row.tag)) == "SQ" and code[0] in "XZ":
        return "U" if code == "X/Z/U*" else "D"
    if code == "Z/D":
        return "D" if kind == "1" else "Z"
    if code in ("X", "X/Z", "X/D", "X/Z/D", "X/Z/U*"):
        if kind is None:
            return "X"
        if kind == "2":
            return "Z"
        return "U" if code == "X/Z/U*" else "D"
    if code == "Z" and kind == "1":
        return "D"
    return code
