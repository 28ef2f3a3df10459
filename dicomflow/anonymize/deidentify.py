"""Apply a resolved :class:`Profile` to a pydicom data set, at any depth.

The walk visits every element of every item of every sequence. Listed tags
take their table action wherever they sit, raised to what the instance's IOD
requires. A sequence whose own action is D (dummy), or U because its IOD
requires it, keeps no original text the table does not list: free text,
codes, names, dates and addresses in its items are dummied (an SR content
tree under the basic profile, for example); enumerated values (CS), numbers
and UIDs keep the items valid (UIDs follow their own rows). A sequence whose
action is C (clean) cleans its unlisted free text and keeps its codes.
Private elements follow the private-attributes row, curves and overlays their
pattern rows; unknown public tags are removed.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from enum import Enum
from typing import Any

from pydicom.datadict import keyword_for_tag
from pydicom.dataelem import DataElement
from pydicom.dataset import Dataset
from pydicom.multival import MultiValue
from pydicom.sequence import Sequence
from pydicom.valuerep import PersonName

from dicomflow.anonymize.private import SafePrivateKey, safe_private_key
from dicomflow.anonymize.profile import Action, Pattern, Profile, raise_to_requirement
from dicomflow.anonymize.proof import kind_of
from dicomflow.anonymize.pseudonyms import (
    SECONDS_PER_DAY,
    Pseudonymizer,
    seconds_of_day,
    shift_da,
    shift_dt,
    shift_tm,
)
from dicomflow.anonymize.values import (
    BINARY_VRS,
    DUMMIED_VRS,
    FREE_TEXT_VRS,
    clean_text,
    dummy_value,
    empty_value,
)

MAX_REMOVED = 4096  # values one instance's proof remembers (a hostile file holds millions)
MAX_DEPTH = 16  # how deep the proof looks inside a removed sequence
PATIENT_NAME = 0x00100010
PATIENT_ID = 0x00100020
# Code triplets stay readable inside cleaned sequences (a dummied one dummies them).
CODE_KEYWORDS = frozenset(
    {
        "CodeValue",
        "CodingSchemeDesignator",
        "CodingSchemeVersion",
        "CodeMeaning",
        "LongCodeValue",
        "URNCodeValue",
        "ContextIdentifier",
        "ContextUID",
        "MappingResource",
        "ValueType",
        "RelationshipType",
        "ContinuityOfContent",
    }
)


class Leaves(Enum):
    """What happens to unlisted text inside a sequence."""

    KEEP = "keep"
    DUMMY = "dummy"  # free text, codes, names, dates: no original text survives
    CLEAN = "clean"  # free text cleaned, codes kept


@dataclass
class Walk:
    """The state of one instance's de-identification (never shared between instances)."""

    profile: Profile
    pseudonyms: Pseudonymizer
    vocabulary: frozenset[str]
    safe_private: frozenset[SafePrivateKey]
    patient_key: str
    days: int
    seconds: int
    mapping: list[tuple[str, str, str]] | None = None
    removed_overlays: set[int] = field(default_factory=set)
    required: dict[int, str] = field(default_factory=dict)  # tag -> Type this IOD requires
    removed: list[tuple[str, str]] | None = None  # (kind, value) for the run's proof

    def action(self, tag: int) -> Action | None:
        """The table's action for ``tag``, raised to what the instance's IOD requires."""
        action = self.profile.actions.get(tag)
        if action is None or tag in self.profile.overrides:
            return action
        return raise_to_requirement(
            action,
            self.profile.combined.get(tag),
            self.required.get(tag),
            sequence=tag in self.profile.sequences,
        )

    def note_removed(self, elem: DataElement, depth: int = 0) -> None:
        """Remember the identifying values of ``elem`` (the text of a sequence's items
        too) before they are removed or replaced, for the run's proof."""
        if self.removed is None or len(self.removed) >= MAX_REMOVED or depth > MAX_DEPTH:
            return
        if elem.VR == "SQ":
            for item in elem.value or ():
                for inner in item:
                    self.note_removed(inner, depth + 1)
            return
        kind = kind_of(str(elem.VR), keyword_for_tag(int(elem.tag)) or "")
        if kind is None or _is_empty(elem.value):
            return
        values = elem.value if isinstance(elem.value, (list, MultiValue)) else [elem.value]
        self.removed.extend((kind, str(v)) for v in values if isinstance(v, (str, PersonName)))

    def record(self, kind: str, original: str, replacement: str) -> None:
        if self.mapping is not None and original != replacement:
            self.mapping.append((kind, original, replacement))


def deidentify_dataset(ds: Dataset, walk: Walk) -> None:
    """De-identify ``ds`` in place (top level and every nested item)."""
    _dataset(ds, walk, Leaves.KEEP)


def _dataset(ds: Dataset, walk: Walk, leaves: Leaves) -> None:
    kept_blocks: set[tuple[int, int]] = set()
    creators: list[int] = []
    for key in list(ds.keys()):
        tag = int(key)
        group, element = tag >> 16, tag & 0xFFFF
        if group % 2:
            if 0x0010 <= element <= 0x00FF:
                creators.append(int(tag))
            elif _private(ds, int(tag), walk):
                kept_blocks.add((group, element >> 8))
            continue
        if element == 0 or group == 0x0002:  # group lengths; file meta is rebuilt
            del ds[tag]
            continue
        pattern = _pattern(group, element)
        if pattern is not None:
            _apply(ds, ds[tag], walk.profile.patterns[pattern], walk, leaves)
            if pattern is Pattern.OVERLAY_DATA and tag not in ds:
                walk.removed_overlays.add(group)
            continue
        action = walk.action(tag)
        if action is not None:
            _apply(ds, ds[tag], action, walk, leaves)
            continue
        if not keyword_for_tag(tag):  # unknown public tag: nothing says it is safe
            if walk.removed is not None and _raw_vr(ds, tag) is not None:
                walk.note_removed(ds[tag])
            del ds[tag]
            continue
        # Most unlisted elements are kept as they are: judge them by their raw VR and
        # leave them undecoded (pydicom then writes their bytes back untouched).
        text_vrs = DUMMIED_VRS if leaves is Leaves.DUMMY else FREE_TEXT_VRS
        vr = _raw_vr(ds, tag)
        if vr is not None and vr not in text_vrs:
            continue
        elem = ds[tag]
        if 0x6000 <= group <= 0x601E and elem.VR in FREE_TEXT_VRS:
            # An overlay plane kept by Clean Graphics: its label and description are text.
            _apply(ds, elem, Action.CLEAN, walk, leaves)
        elif elem.VR == "SQ":
            _sequence(elem, walk, leaves)
        elif leaves is Leaves.DUMMY and elem.VR in DUMMIED_VRS:
            _apply(ds, elem, Action.DUMMY, walk, leaves)
        elif leaves is Leaves.CLEAN and elem.VR in FREE_TEXT_VRS and not _is_code(tag):
            _apply(ds, elem, Action.CLEAN, walk, leaves)
    for tag in creators:
        if (tag >> 16, tag & 0xFF) not in kept_blocks:
            del ds[tag]
    for group in walk.removed_overlays & {tag >> 16 for tag in map(int, ds.keys())}:
        _drop_group(ds, group)


def _raw_vr(ds: Dataset, tag: int) -> str | None:
    """The element's VR without decoding it; None when only decoding can tell (implicit
    VR or UN, which may hide a sequence, and sequences themselves)."""
    vr = ds.get_item(tag).VR
    return None if vr in (None, "UN", "SQ") else str(vr)


def _is_code(tag: Any) -> bool:
    return keyword_for_tag(int(tag)) in CODE_KEYWORDS


def _pattern(group: int, element: int) -> Pattern | None:
    if 0x5000 <= group <= 0x501E:
        return Pattern.CURVE
    if 0x6000 <= group <= 0x601E:
        if element == 0x3000:
            return Pattern.OVERLAY_DATA
        if element == 0x4000:
            return Pattern.OVERLAY_COMMENTS
    return None


def _drop_group(ds: Dataset, group: int) -> None:
    """Remove a whole overlay plane whose data was removed (keeps the module valid)."""
    for tag in [t for t in map(int, ds.keys()) if t >> 16 == group]:
        del ds[tag]


def _private(ds: Dataset, tag: int, walk: Walk) -> bool:
    """Apply the private-attributes row to one private element; True if it is kept."""
    group, element = tag >> 16, tag & 0xFFFF
    action = walk.profile.overrides.get(tag, walk.profile.patterns[Pattern.PRIVATE])
    keep = False
    if action is Action.KEEP:
        keep = True
    elif action is Action.CLEAN and element >= 0x1000:
        creator = ds.get((group, element >> 8))
        if creator is not None and isinstance(creator.value, str):
            keep = safe_private_key(group, creator.value, element & 0xFF) in walk.safe_private
    if not keep:
        if walk.removed is not None and ds.get_item(tag).VR in FREE_TEXT_VRS:
            walk.note_removed(ds[tag])
        del ds[tag]
        return False
    elem = ds[tag]
    if elem.VR == "SQ":
        _sequence(elem, walk, Leaves.KEEP)
    return True


def _sequence(elem: DataElement, walk: Walk, leaves: Leaves) -> None:
    for item in elem.value or ():
        _dataset(item, walk, leaves)


def _apply(ds: Dataset, elem: DataElement, action: Action, walk: Walk, leaves: Leaves) -> None:
    vr = elem.VR
    if action is not Action.KEEP and (vr != "SQ" or action in (Action.REMOVE, Action.ZERO)):
        walk.note_removed(elem)
    if action is Action.REMOVE:
        del ds[elem.tag]
    elif action is Action.ZERO:
        elem.value = Sequence() if vr == "SQ" else empty_value(vr)
    elif vr == "SQ":
        inner = {Action.DUMMY: Leaves.DUMMY, Action.UID: Leaves.DUMMY, Action.CLEAN: Leaves.CLEAN}
        _sequence(elem, walk, inner.get(action, leaves))
    elif action is Action.KEEP:
        return
    elif action is Action.UID or vr == "UI":
        elem.value = _map_values(elem.value, lambda v: _uid(v, walk))
    elif action is Action.DUMMY:
        if not _is_empty(elem.value):
            elem.value = dummy_value(vr)
    elif action is Action.CLEAN:
        elem.value = _clean(elem, walk, ds)


def _is_empty(value: Any) -> bool:
    return value is None or value == "" or value == b"" or value == []


def _uid(value: str, walk: Walk) -> str:
    original = str(value).strip("\x00 ")
    if not original:
        return original
    replacement = walk.pseudonyms.uid(original)
    walk.record("uid", original, replacement)
    return replacement


def _map_values(value: Any, fn: Callable[[str], str]) -> Any:
    if isinstance(value, (list, MultiValue)):
        return [fn(str(v)) for v in value]
    if _is_empty(value):
        return value
    return fn(str(value))


def _clean(elem: DataElement, walk: Walk, ds: Dataset) -> Any:
    """Action C: a value of similar meaning that identifies no one."""
    vr, tag, value = elem.VR, int(elem.tag), elem.value
    if _is_empty(value):
        return value
    if tag == PATIENT_ID:
        replacement = walk.pseudonyms.patient_id(str(value))
        walk.record("patient_id", str(value), replacement)
        return replacement
    if tag == PATIENT_NAME or vr == "PN":
        basis = walk.patient_key if tag == PATIENT_NAME else str(value)
        replacement = walk.pseudonyms.patient_name(basis)
        walk.record("person_name", str(value), replacement)
        return replacement
    if vr == "DA":
        days = walk.days + _carry(ds, tag, walk.seconds)
        return _map_values(value, lambda v: shift_da(v, days))
    if vr == "TM":
        return _map_values(value, lambda v: shift_tm(v, walk.seconds))
    if vr == "DT":
        return _map_values(value, lambda v: shift_dt(v, walk.days, walk.seconds))
    if vr in BINARY_VRS:
        return bytes(len(value))
    if vr == "AE" or (vr in ("LO", "SH", "CS") and keyword_for_tag(tag).endswith("ID")):
        return _map_values(value, lambda v: walk.pseudonyms.token(f"id-{tag:08X}", v))
    if vr in FREE_TEXT_VRS or vr == "CS":
        cleaned = _map_values(value, lambda v: clean_text(v, walk.vocabulary))
        if vr == "CS":
            cleaned = _map_values(cleaned, lambda v: v.upper()[:16])
        return cleaned
    return value  # numbers and codes carry no identity of their own


def _carry(ds: Dataset, date_tag: int, seconds: int) -> int:
    """0 or 1: the day a date's paired time (``…Date`` → ``…Time``, still original when
    the date is shifted, since it follows in tag order) rolls over into when shifted.
    Keeps a DA/TM pair naming the same moment as a DT shifted by days and seconds."""
    keyword = keyword_for_tag(date_tag)
    if not keyword.endswith("Date"):
        return 0
    paired = ds.get(keyword.removesuffix("Date") + "Time")
    if paired is None or isinstance(paired, (list, MultiValue)) or _is_empty(paired):
        return 0
    start = seconds_of_day(str(paired))
    return 0 if start is None else (start + seconds) // SECONDS_PER_DAY


def patient_key(ds: Dataset) -> str:
    """What identifies the patient for date shifts: PatientID, else PatientName."""
    for tag in (PATIENT_ID, PATIENT_NAME):
        elem = ds.get(tag)
        if elem is not None and not _is_empty(elem.value):
            return str(elem.value)
    return ""
