"""The PS3.15 Annex E profile as data: every row of Table E.1-1 resolved to one action.

The table ships in the package (``data/ps3.15-annex-e-2024b.json``, with its
edition and source). :func:`resolve_action` turns a row plus the chosen options
into exactly one :class:`Action`, and :class:`Profile` precomputes that for
every row so the per-element lookup is one dict access.

Resolution rules, documented because the standard leaves room:

- An option column applies only when its option is chosen. When several chosen
  options name an action for the same row, *keep* (K) wins over *clean* (C):
  the user asked to retain that information.
- Combined codes resolve to the action that removes most, unless the
  instance's IOD requires the attribute (PS3.15 E.1.1): ``X/Z``, ``X/D``,
  ``X/Z/D`` and ``X/Z/U*`` become X, and ``Z/D`` becomes Z. :class:`Profile`
  remembers which rows were combined (``combined``), and the walk raises them
  per instance: a Type 2 attribute is emptied (Z); a Type 1 attribute gets a
  dummy (D), or for ``X/Z/U*`` a replaced UID (U). A required sequence (Type 1
  or 2) is never emptied: it keeps its items with UIDs replaced and all other
  text dummied (D, or U for ``X/Z/U*``).
- The same floors apply to an X or Z row whose attribute the IOD requires.
  What each IOD requires is ``data/iod_requirements.json``, keyed by SOP Class:
  entries from the PS3.3 text, and entries measured with dciodvfy on the corpus
  (``tests/anonymize/derive_iod_requirements.py``), since no machine-readable
  PS3.3 module tables are at hand.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from enum import StrEnum
from functools import cache
from importlib import resources
from typing import Any

from pydicom.datadict import dictionary_VR, tag_for_keyword

from dicomflow.errors import ConfigError

TABLE_FILE = "ps3.15-annex-e-2024b.json"
REQUIREMENTS_FILE = "iod_requirements.json"
COMBINED_CODES = frozenset({"Z/D", "X/Z", "X/D", "X/Z/D", "X/Z/U*"})


class Action(StrEnum):
    """What happens to one attribute (PS3.15 Table E.1-1 action codes)."""

    REMOVE = "X"
    ZERO = "Z"
    DUMMY = "D"
    KEEP = "K"
    CLEAN = "C"
    UID = "U"


class Option(StrEnum):
    """The profile options of PS3.15 E.3, spelled as on the command line."""

    RETAIN_SAFE_PRIVATE = "retain-safe-private"
    RETAIN_UIDS = "retain-uids"
    RETAIN_DEVICE_IDENTITY = "retain-device-identity"
    RETAIN_INSTITUTION_IDENTITY = "retain-institution-identity"
    RETAIN_PATIENT_CHARACTERISTICS = "retain-patient-characteristics"
    RETAIN_LONGITUDINAL_FULL = "retain-longitudinal-full"
    RETAIN_LONGITUDINAL_MODIFIED = "retain-longitudinal-modified"
    CLEAN_DESCRIPTORS = "clean-descriptors"
    CLEAN_STRUCTURED_CONTENT = "clean-structured-content"
    CLEAN_GRAPHICS = "clean-graphics"


OPTION_COLUMNS: dict[Option, str] = {
    Option.RETAIN_SAFE_PRIVATE: "rtnSafePrivOpt",
    Option.RETAIN_UIDS: "rtnUIDsOpt",
    Option.RETAIN_DEVICE_IDENTITY: "rtnDevIdOpt",
    Option.RETAIN_INSTITUTION_IDENTITY: "rtnInstIdOpt",
    Option.RETAIN_PATIENT_CHARACTERISTICS: "rtnPatCharsOpt",
    Option.RETAIN_LONGITUDINAL_FULL: "rtnLongFullDatesOpt",
    Option.RETAIN_LONGITUDINAL_MODIFIED: "rtnLongModifDatesOpt",
    Option.CLEAN_DESCRIPTORS: "cleanDescOpt",
    Option.CLEAN_STRUCTURED_CONTENT: "cleanStructContOpt",
    Option.CLEAN_GRAPHICS: "cleanGraphOpt",
}

# PS3.16 CID 7050 "De-identification Method": the codes recorded in the output.
BASIC_PROFILE_CODE = ("113100", "Basic Application Confidentiality Profile")
CLEAN_PIXEL_DATA_CODE = ("113101", "Clean Pixel Data Option")
OPTION_CODES: dict[Option, tuple[str, str]] = {
    Option.CLEAN_GRAPHICS: ("113103", "Clean Graphics Option"),
    Option.CLEAN_STRUCTURED_CONTENT: ("113104", "Clean Structured Content Option"),
    Option.CLEAN_DESCRIPTORS: ("113105", "Clean Descriptors Option"),
    Option.RETAIN_LONGITUDINAL_FULL: (
        "113106",
        "Retain Longitudinal Temporal Information Full Dates Option",
    ),
    Option.RETAIN_LONGITUDINAL_MODIFIED: (
        "113107",
        "Retain Longitudinal Temporal Information Modified Dates Option",
    ),
    Option.RETAIN_PATIENT_CHARACTERISTICS: ("113108", "Retain Patient Characteristics Option"),
    Option.RETAIN_DEVICE_IDENTITY: ("113109", "Retain Device Identity Option"),
    Option.RETAIN_UIDS: ("113110", "Retain UIDs Option"),
    Option.RETAIN_SAFE_PRIVATE: ("113111", "Retain Safe Private Option"),
    Option.RETAIN_INSTITUTION_IDENTITY: ("113112", "Retain Institution Identity Option"),
}


class Pattern(StrEnum):
    """The four table rows that name a family of tags rather than one tag."""

    CURVE = "curve"  # (50xx,xxxx)
    OVERLAY_DATA = "overlay_data"  # (60xx,3000)
    OVERLAY_COMMENTS = "overlay_comments"  # (60xx,4000)
    PRIVATE = "private"  # (gggg,eeee), gggg odd


@dataclass(frozen=True)
class ProfileRow:
    """One row of Table E.1-1: a tag (or a pattern), its name, and its action codes."""

    name: str
    tag: int | None
    pattern: Pattern | None
    basic: str
    options: Mapping[str, str]

    @property
    def vr(self) -> str | None:
        """The dictionary VR of a single-tag row (None for patterns)."""
        if self.tag is None:
            return None
        try:
            return str(dictionary_VR(self.tag))
        except KeyError:
            return None


@dataclass(frozen=True)
class ProfileTable:
    """The shipped table with the edition and source it was taken from."""

    edition: str
    source: str
    rows: tuple[ProfileRow, ...]


_PATTERNS = {
    "50xxxxxx": Pattern.CURVE,
    "60xx3000": Pattern.OVERLAY_DATA,
    "60xx4000": Pattern.OVERLAY_COMMENTS,
    "ggggeeee-where-gggg-is-odd": Pattern.PRIVATE,
}


def _row(raw: Mapping[str, Any]) -> ProfileRow:
    pattern = _PATTERNS.get(raw["id"])
    tag = None if pattern else int(raw["id"], 16)
    options = {column: raw[column] for column in OPTION_COLUMNS.values() if raw.get(column)}
    return ProfileRow(raw["name"], tag, pattern, raw["basicProfile"], options)


@cache
def iod_requirements() -> tuple[tuple[str, bool, int, str], ...]:
    """(SOP Class UID or prefix, whether it is a prefix, tag, type) for attributes
    some IODs require."""
    text = resources.files("dicomflow.anonymize").joinpath("data", REQUIREMENTS_FILE).read_text()
    out = []
    for r in json.loads(text)["requirements"]:
        prefix = "sop_class_prefix" in r
        uid = r["sop_class_prefix"] if prefix else r["sop_class"]
        out.append((uid, prefix, int(r["tag"], 16), str(r["type"])))
    return tuple(out)


def required_types(sop_class_uid: str) -> dict[int, str]:
    """The tags one SOP Class's IOD requires, with their Type ("1" wins over "2")."""
    types: dict[int, str] = {}
    for uid, prefix, tag, kind in iod_requirements():
        if sop_class_uid.startswith(uid) if prefix else sop_class_uid == uid:
            types[tag] = min(kind, types.get(tag, kind))
    return types


def raise_to_requirement(
    action: Action, code: str | None, kind: str | None, *, sequence: bool = False
) -> Action:
    """``action`` raised to what a Type ``kind`` attribute needs (``code``: the row's
    combined code, if its action came from one). A required sequence is never emptied:
    the requirements do not say at which depth, and where the same sequence is Type 3
    an empty one does not conform; it keeps its items, dummied."""
    if kind is None:
        return action
    if action is Action.REMOVE or (sequence and action is Action.ZERO):
        if kind == "2" and not sequence:
            return Action.ZERO
        return Action.UID if code == "X/Z/U*" else Action.DUMMY
    if action is Action.ZERO and kind == "1":
        return Action.DUMMY
    return action


@cache
def load_table() -> ProfileTable:
    """The PS3.15 Table E.1-1 rows shipped with the package (read once per process)."""
    text = resources.files("dicomflow.anonymize").joinpath("data", TABLE_FILE).read_text("utf-8")
    doc = json.loads(text)
    return ProfileTable(doc["edition"], doc["source"], tuple(_row(r) for r in doc["rows"]))


def resolve_action(row: ProfileRow, options: Iterable[Option]) -> Action:
    """The single action for ``row`` under the chosen ``options`` (rules in the module doc)."""
    chosen = [row.options[OPTION_COLUMNS[o]] for o in options if OPTION_COLUMNS[o] in row.options]
    if "K" in chosen:
        return Action.KEEP
    if "C" in chosen:
        return Action.CLEAN
    return resolve_code(row.basic, row.vr)


def resolve_code(code: str, vr: str | None = None) -> Action:
    """One action for a (possibly combined) action code, before the IOD is known:
    combined codes give their first letter (X or Z); ``vr`` is not needed any more."""
    if code in COMBINED_CODES:
        return Action(code[0])
    try:
        return Action(code)
    except ValueError:
        raise ConfigError(f"unknown action code {code!r} in the profile table") from None


def check_options(options: Iterable[Option]) -> frozenset[Option]:
    """Validate a set of options (the two longitudinal options exclude each other)."""
    chosen = frozenset(options)
    both = {Option.RETAIN_LONGITUDINAL_FULL, Option.RETAIN_LONGITUDINAL_MODIFIED}
    if both <= chosen:
        raise ConfigError(
            "retain-longitudinal-full and retain-longitudinal-modified exclude each other"
        )
    return chosen


def parse_option(text: str) -> Option:
    """An :class:`Option` from its command-line spelling, with a clear error."""
    try:
        return Option(text.strip().lower())
    except ValueError:
        names = ", ".join(o.value for o in Option)
        raise ConfigError(
            f"unknown de-identification option {text!r} (choose from {names})"
        ) from None


def parse_tag(text: str) -> int:
    """A tag from a keyword (``StudyDescription``) or hex (``0008103E``, ``(0008,103E)``)."""
    cleaned = text.strip().strip("()").replace(",", "").replace(" ", "")
    found = tag_for_keyword(cleaned)
    if found is not None:
        return int(found)
    if len(cleaned) == 8:
        try:
            return int(cleaned, 16)
        except ValueError:
            pass
    raise ConfigError(f"{text!r} is neither a DICOM keyword nor an 8-digit hex tag")


@dataclass(frozen=True)
class Profile:
    """The resolved profile: options, per-project overrides, and the action of every tag.

    ``overrides`` maps a tag to an action and wins over the table (the project's
    keep/override list). ``pseudonymize_patient`` replaces PatientID and
    PatientName with keyed pseudonyms (a C action) instead of emptying them, so
    that a patient's instances stay linked.
    """

    options: frozenset[Option] = frozenset()
    overrides: Mapping[int, Action] = field(default_factory=dict)
    pseudonymize_patient: bool = True
    actions: Mapping[int, Action] = field(init=False, repr=False, compare=False)
    combined: Mapping[int, str] = field(init=False, repr=False, compare=False)
    sequences: frozenset[int] = field(init=False, repr=False, compare=False)
    patterns: Mapping[Pattern, Action] = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        options = check_options(self.options)
        object.__setattr__(self, "options", options)
        table = load_table()
        actions = {
            row.tag: resolve_action(row, options) for row in table.rows if row.tag is not None
        }
        if self.pseudonymize_patient:
            actions[0x00100010] = Action.CLEAN
            actions[0x00100020] = Action.CLEAN
        actions.update(self.overrides)
        combined = {
            row.tag: row.basic
            for row in table.rows
            if row.tag is not None
            and row.basic in COMBINED_CODES
            and row.tag not in self.overrides
            and actions[row.tag] is resolve_code(row.basic)
        }
        patterns = {row.pattern: resolve_action(row, options) for row in table.rows if row.pattern}
        object.__setattr__(self, "actions", actions)
        object.__setattr__(self, "combined", combined)
        sequences = frozenset(row.tag for row in table.rows if row.tag and row.vr == "SQ")
        object.__setattr__(self, "sequences", sequences)
        object.__setattr__(self, "patterns", patterns)

    @classmethod
    def build(
        cls,
        options: Iterable[str | Option] = (),
        overrides: Mapping[str, str] | None = None,
        *,
        pseudonymize_patient: bool = True,
    ) -> Profile:
        """A profile from command-line spellings: option names and ``{tag: action}``."""
        chosen = frozenset(o if isinstance(o, Option) else parse_option(o) for o in options)
        resolved: dict[int, Action] = {}
        for tag_text, code in (overrides or {}).items():
            try:
                resolved[parse_tag(tag_text)] = Action(code.strip().upper())
            except ValueError:
                raise ConfigError(f"unknown action {code!r} for {tag_text}") from None
        return cls(chosen, resolved, pseudonymize_patient=pseudonymize_patient)

    @property
    def dates(self) -> str:
        """How dates are treated: ``full`` (kept), ``modified`` (shifted) or ``removed``."""
        if Option.RETAIN_LONGITUDINAL_FULL in self.options:
            return "full"
        if Option.RETAIN_LONGITUDINAL_MODIFIED in self.options:
            return "modified"
        return "removed"

    def method_codes(self, *, clean_pixels: bool = False) -> list[tuple[str, str]]:
        """The CID 7050 codes describing this profile (for the output's marking)."""
        codes = [BASIC_PROFILE_CODE]
        if clean_pixels:
            codes.append(CLEAN_PIXEL_DATA_CODE)
        codes.extend(OPTION_CODES[o] for o in sorted(self.options))
        return codes
