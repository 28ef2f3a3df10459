"""Every single-tag row of PS3.15 Table E.1-1, placed at every depth, gets its action.

Each row's attribute is given a synthetic value carrying a marker unique to the
row (``MRKR<hex>``) or a UID unique to the row, and placed: at the top level,
one, two and five sequences deep inside public sequences the table does not
list, and inside an SR content tree. The data sets go through
:class:`Deidentifier` both in memory and as Part 10 bytes, and each row is
checked against the action the table gives it under each option set (computed
here from the table, independently of the engine): X absent, Z present and
empty, D a changed value valid for its VR, U a consistent keyed UID, K
byte-identical, C no marker left (dates shifted and still valid).

Then the pattern rows (curves, overlays, private attributes), the marking and
file meta, the burned-in policy and bad input.
"""

from __future__ import annotations

import copy
import io
import re
from collections.abc import Iterable
from dataclasses import dataclass
from datetime import date, datetime, timedelta
from functools import cache
from typing import Any

import numpy as np
import pydicom
import pytest
from pydicom.datadict import dictionary_VR, keyword_for_tag, tag_for_keyword
from pydicom.dataelem import DataElement, RawDataElement
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.filebase import DicomBytesIO
from pydicom.filewriter import write_dataset
from pydicom.multival import MultiValue
from pydicom.sequence import Sequence
from pydicom.uid import ExplicitVRLittleEndian
from pydicom.valuerep import PersonName

from dicomflow.anonymize.burned_in import PixelRule, Region
from dicomflow.anonymize.engine import IMPLEMENTATION_CLASS_UID, Deidentifier
from dicomflow.anonymize.keys import SecretKey
from dicomflow.anonymize.profile import Action, Profile
from dicomflow.anonymize.values import quiet_pydicom
from dicomflow.errors import (
    DeidentificationError,
    DicomflowError,
    DicomReadError,
    ErrorCode,
)
from tests.anonymize.oracle import OPTION_COLUMNS as COLUMNS
from tests.anonymize.oracle import Row, expected_code, requiring_sop_classes, single_tag_rows

KEY = SecretKey(b"x" * 40)
OTHER_KEY = SecretKey(b"y" * 40)
CT_IMAGE_STORAGE = "1.2.840.10008.5.1.4.1.1.2"
US_IMAGE_STORAGE = "1.2.840.10008.5.1.4.1.1.6.1"
UID_ROOT = "1.2.826.0.1.3680043.9.9999"
MARKER_RE = re.compile(rb"MRKR[0-9A-F]{4}", re.IGNORECASE)
UID_RE = re.compile(re.escape(UID_ROOT).encode() + rb"\.([0-9]+)")
SR_TEXT_MARKER = "MRKRFFFF"

ROWS: list[Row] = list(single_tag_rows())
REQUIRING_SOP_CLASSES = sorted(requiring_sop_classes())
INDEX = {row.tag: i for i, row in enumerate(ROWS)}

# PS3.16 CID 7050 De-identification Method codes.
CID_7050 = {
    "basic": "113100",
    "clean-pixel-data": "113101",
    "clean-graphics": "113103",
    "clean-structured-content": "113104",
    "clean-descriptors": "113105",
    "retain-longitudinal-full": "113106",
    "retain-longitudinal-modified": "113107",
    "retain-patient-characteristics": "113108",
    "retain-device-identity": "113109",
    "retain-uids": "113110",
    "retain-safe-private": "113111",
    "retain-institution-identity": "113112",
}

PATIENT_NAME = 0x00100010
PATIENT_ID = 0x00100020
MEDIA_SOP_INSTANCE_UID = 0x00020003  # a row, but it lives in the file meta
CONTENT_SEQUENCE = 0x0040A730


def vr_of(tag: int) -> str:
    return str(dictionary_VR(tag)).split(" or ")[0]


def expected_action(
    row: Row, options: Iterable[str], pseudonymize: bool = True, sop_class: str = CT_IMAGE_STORAGE
) -> Action:
    """The action the independent oracle (``tests/anonymize/oracle.py``) expects."""
    return Action(expected_code(row, options, sop_class=sop_class, pseudonymize=pseudonymize))


# --------------------------------------------------------------------------- synthetic data


def marker(i: int) -> str:
    return f"MRKR{i:04X}"


def uid_for(i: int) -> str:
    return f"{UID_ROOT}.{i + 1}"


def code_item(i: int, text_marker: str | None) -> Dataset:
    item = Dataset()
    item.CodeValue = f"C{i:04X}"
    item.CodingSchemeDesignator = "99TEST"
    item.CodeMeaning = f"Concept {i:04X}"
    if text_marker:
        item.Manufacturer = f"{text_marker} zqx"  # unlisted free text (LO)
    return item


def sequence_value(i: int) -> Sequence:
    """One item: a code triplet, an unlisted LO and a nested unlisted sequence holding UT."""
    item = code_item(i, marker(i))
    inner = code_item(i + 0x1000, None)
    inner.TextValue = f"{marker(i)} deep zqx"  # unlisted free text (UT)
    item.PurposeOfReferenceCodeSequence = Sequence([inner])
    return Sequence([item])


def synthetic(i: int, tag: int) -> DataElement:
    vr = vr_of(tag)
    m = marker(i)
    value: Any
    if vr in ("AE", "CS"):
        value = m
    elif vr == "AS":
        value = "045Y"
    elif vr == "DA":
        value = "20210315"
    elif vr == "DS":
        value = "123.5"
    elif vr == "DT":
        value = "20210315101530"
    elif vr == "IS":
        value = "42"
    elif vr == "TM":
        value = "101530"
    elif vr == "PN":
        value = f"{m}^Zqx"
    elif vr in ("LO", "LT", "SH", "ST", "UT", "UC"):
        value = f"{m} ZQX"
    elif vr == "UI":
        value = uid_for(i)
    elif vr == "UR":
        value = f"https://{m.lower()}.example.org/"
    elif vr in ("OB", "OW", "UN"):
        value = m.encode()
    elif vr in ("US", "SS", "UL", "SL"):
        value = 7
    elif vr == "SQ":
        value = sequence_value(i)
    else:  # pragma: no cover - the table has no other VRs (checked below)
        raise AssertionError(f"no synthetic value for VR {vr}")
    return DataElement(tag, vr, value)


def row_element(keyword: str) -> DataElement:
    tag = int(tag_for_keyword(keyword) or 0)
    return synthetic(INDEX[tag], tag)


def base_dataset(sop_class: str = CT_IMAGE_STORAGE) -> Dataset:
    """A minimal instance (CT unless told) whose identifying values are the rows' synthetic
    ones."""
    ds = Dataset()
    ds.SOPClassUID = sop_class
    for keyword in (
        "SOPInstanceUID",
        "StudyInstanceUID",
        "SeriesInstanceUID",
        "PatientID",
        "PatientName",
    ):
        ds.add(row_element(keyword))
    ds.Modality = "CT"
    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = sop_class
    meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds.file_meta = meta
    return ds


# Where the rows go: a chain of sequences (one item each) ending in the item that holds them.
# None of these sequences is listed in the table, except ContentSequence (the SR tree).
PLACEMENTS: dict[str, tuple[str, ...]] = {
    "top": (),
    "depth1": ("ProcedureCodeSequence",),
    "depth2": ("PerformedProtocolCodeSequence", "ReferencedSeriesSequence"),
    "depth5": (
        "AnatomicRegionSequence",
        "PrimaryAnatomicStructureSequence",
        "AnatomicRegionModifierSequence",
        "DerivationCodeSequence",
        "ViewCodeSequence",
    ),
    "sr": ("ContentSequence", "ContentSequence"),
}
BYTE_PLACEMENTS = ("top", "sr")


def placed_dataset(
    placement: str, *, part10: bool = False, sop_class: str = CT_IMAGE_STORAGE
) -> Dataset:
    """All rows in one item at ``placement``; ``part10``: leave out what a file cannot hold at
    the top level (command elements, group 0000)."""
    ds = base_dataset(sop_class)
    holder = ds
    for keyword in PLACEMENTS[placement]:
        item = Dataset()
        if keyword == "ContentSequence":
            item.RelationshipType = "CONTAINS"
            item.ValueType = "TEXT"
            item.ConceptNameCodeSequence = Sequence([code_item(0xFFFE, None)])
            item.TextValue = f"{SR_TEXT_MARKER} report zqx"
        setattr(holder, keyword, Sequence([item]))
        holder = item
    for i, row in enumerate(ROWS):
        if row.tag == MEDIA_SOP_INSTANCE_UID:
            continue  # group 0002 belongs to the file meta (checked there)
        if part10 and holder is ds and row.tag is not None and row.tag >> 16 == 0:
            continue
        holder.add(synthetic(i, row.tag))
    return ds


def holder_of(ds: Dataset, placement: str) -> Dataset | None:
    holder = ds
    for keyword in PLACEMENTS[placement]:
        seq = holder.get(keyword)
        if not isinstance(seq, Sequence) or len(seq) != 1:
            return None
        holder = seq[0]
    return holder


def to_bytes(ds: Dataset) -> bytes:
    out = io.BytesIO()
    with quiet_pydicom():
        ds.save_as(out, enforce_file_format=True)
    return out.getvalue()


def serialize(ds: Dataset) -> bytes:
    """The encoded file meta and data set, whatever they hold (searched for markers)."""
    fp = DicomBytesIO()
    fp.is_little_endian, fp.is_implicit_VR = True, False
    with quiet_pydicom():
        write_dataset(fp, getattr(ds, "file_meta", None) or Dataset())
        write_dataset(fp, ds)
    return fp.getvalue()


def read(data: bytes) -> Dataset:
    with quiet_pydicom():
        return pydicom.dcmread(io.BytesIO(data))


# --------------------------------------------------------------------------- running the cases


@dataclass(frozen=True)
class Case:
    name: str
    options: tuple[str, ...] = ()
    pseudonymize: bool = True
    sop_class: str = CT_IMAGE_STORAGE


ALL_WITH_FULL = tuple(o for o in COLUMNS if o != "retain-longitudinal-modified")
ALL_WITH_MODIFIED = tuple(o for o in COLUMNS if o != "retain-longitudinal-full")
CASES = [
    Case("basic"),
    Case("basic-no-pseudonyms", pseudonymize=False),
    *(Case(option, (option,)) for option in COLUMNS),
    Case("all-with-full-dates", ALL_WITH_FULL),
    Case("all-with-modified-dates", ALL_WITH_MODIFIED),
]


@dataclass
class Output:
    original: Dataset
    result: Dataset
    data: bytes  # the written output, searched for markers and UIDs
    leaves: str  # what happens to unlisted free text around the rows: keep / dummy / clean


@dataclass
class Run:
    outputs: dict[str, Output]
    markers: dict[str, set[str]]
    uids: dict[str, set[int]]


def deidentifier(case: Case, key: SecretKey = KEY) -> Deidentifier:
    profile = Profile.build(case.options, pseudonymize_patient=case.pseudonymize)
    return Deidentifier(profile, key, quarantine_burned_in=False)


def context_leaves(case: Case, placement: str) -> str:
    if placement != "sr":
        return "keep"
    row = ROWS[INDEX[CONTENT_SEQUENCE]]
    action = expected_action(row, case.options, case.pseudonymize, case.sop_class)
    return {Action.DUMMY: "dummy", Action.CLEAN: "clean", Action.KEEP: "keep"}[action]


@cache
def run_case(case: Case) -> Run:
    outputs: dict[str, Output] = {}
    engine = deidentifier(case)
    with quiet_pydicom():
        for placement in PLACEMENTS:
            ds = placed_dataset(placement, sop_class=case.sop_class)
            original = copy.deepcopy(ds)
            result, _ = engine.dataset(ds)
            outputs[placement] = Output(
                original, result, serialize(result), context_leaves(case, placement)
            )
        for placement in BYTE_PLACEMENTS:
            source = to_bytes(placed_dataset(placement, part10=True, sop_class=case.sop_class))
            written = engine.instance(source).data
            outputs[f"{placement}-bytes"] = Output(
                read(source), read(written), written, context_leaves(case, placement)
            )
        ds = placed_dataset("top", sop_class=case.sop_class)
        result, _ = deidentifier(case, OTHER_KEY).dataset(copy.deepcopy(ds))
        outputs["top-other-key"] = Output(ds, result, serialize(result), "keep")
    markers = {
        name: {m.decode().upper() for m in MARKER_RE.findall(out.data)}
        for name, out in outputs.items()
    }
    uids = {name: {int(n) for n in UID_RE.findall(out.data)} for name, out in outputs.items()}
    return Run(outputs, markers, uids)


# --------------------------------------------------------------------------- value checks

MAX_LENGTH = {
    "AE": 16,
    "AS": 4,
    "CS": 16,
    "DA": 8,
    "DS": 16,
    "DT": 26,
    "IS": 12,
    "LO": 64,
    "LT": 10240,
    "SH": 16,
    "ST": 1024,
    "TM": 16,
    "UI": 64,
}
UID_SYNTAX = re.compile(r"^(0|[1-9][0-9]*)(\.(0|[1-9][0-9]*))+$")


def values_of(value: Any) -> list[Any]:
    if isinstance(value, (list, MultiValue)):
        return list(value)
    return [value]


def is_empty(value: Any) -> bool:
    if value is None:
        return True
    if isinstance(value, PersonName):
        value = str(value)
    if isinstance(value, str):
        return value.strip(" \x00") == ""
    if isinstance(value, bytes):
        return len(value) == 0  # zero bytes are a value
    if isinstance(value, (list, MultiValue, Sequence)):
        return len(value) == 0
    return False


def valid_uid(text: str) -> bool:
    return len(text) <= 64 and bool(UID_SYNTAX.match(text))


def valid_date(text: str) -> bool:
    try:
        return len(text) == 8 and datetime.strptime(text, "%Y%m%d") is not None
    except ValueError:
        return False


def valid_time(text: str) -> bool:
    match = re.fullmatch(r"([0-9]{2})(([0-9]{2})(([0-9]{2})(\.[0-9]{1,6})?)?)?", text)
    if not match:
        return False
    h, m, s = match.group(1), match.group(3) or "00", match.group(5) or "00"
    return int(h) < 24 and int(m) < 60 and int(s) < 60


def valid_datetime(text: str) -> bool:
    match = re.fullmatch(r"([0-9]{4,14})(\.[0-9]{1,6})?([+-][0-9]{4})?", text)
    if not match or len(match.group(1)) % 2:
        return False
    digits = match.group(1)
    padded = digits + "0101000000"[len(digits) - 4 :] if len(digits) < 14 else digits
    try:
        datetime.strptime(padded, "%Y%m%d%H%M%S")
    except ValueError:
        return False
    return True


def invalid_value(vr: str, value: Any) -> str | None:
    """Why ``value`` is not a valid non-empty value for ``vr`` (None when it is)."""
    if is_empty(value):
        return "empty"
    for v in values_of(value):
        text = v.decode("latin-1") if isinstance(v, bytes) else str(v)
        if vr in MAX_LENGTH and len(text) > MAX_LENGTH[vr]:
            return f"{len(text)} characters, more than {MAX_LENGTH[vr]}"
        problem = {
            "UI": not valid_uid(text),
            "DA": not valid_date(text),
            "TM": not valid_time(text),
            "DT": not valid_datetime(text),
            "AS": not re.fullmatch(r"[0-9]{3}[DWMY]", text),
            "CS": not re.fullmatch(r"[A-Z0-9 _]*", text),
            "AE": "\\" in text or not text.strip(),
            "LO": "\\" in text,
            "SH": "\\" in text,
            "PN": len(text) > 64 * 3,
            "UR": " " in text.strip(),
        }.get(vr, False)
        if problem:
            return f"{text!r} is not a valid {vr}"
        if vr == "DS":
            float(text)
        if vr == "IS":
            int(text)
    return None


def text_of(value: Any) -> str:
    if isinstance(value, Sequence):
        return "".join(text_of(e.value) for item in value for e in item.iterall())
    if isinstance(value, bytes):
        return value.decode("latin-1")
    return "\\".join(str(v) for v in values_of(value))


def same_element(original: Any, result: Any) -> bool:
    """Byte-identical: the raw bytes when both were read from a file, else VR and value."""
    if isinstance(original, RawDataElement) != isinstance(result, RawDataElement):
        raise AssertionError("compare two raw or two decoded elements")
    return bool(original.VR == result.VR and original.value == result.value)


def check_inner(original: Sequence, result: Sequence, leaves: str) -> list[str]:
    """The unlisted free text held by a kept/dummied/cleaned sequence, per ``leaves``."""
    problems = []
    if len(result) != len(original):
        return [f"{len(result)} items instead of {len(original)}"]
    for item_in, item_out in zip(original, result, strict=True):
        pairs = [(item_in, item_out, "Manufacturer")]
        nested_in = item_in.data_element("PurposeOfReferenceCodeSequence")
        nested_out = item_out.data_element("PurposeOfReferenceCodeSequence")
        if nested_in is not None:
            if nested_out is None or len(nested_out.value) != len(nested_in.value):
                problems.append("the nested unlisted sequence was not kept")
                continue
            pairs.append((nested_in.value[0], nested_out.value[0], "TextValue"))
        for inner_in, inner_out, keyword in pairs:
            before, after = inner_in.data_element(keyword), inner_out.data_element(keyword)
            if before is None:
                continue
            m = MARKER_RE.search(text_of(before.value).encode())
            after_text = "" if after is None else text_of(after.value)
            if leaves == "keep" and (after is None or after.value != before.value):
                problems.append(f"unlisted {keyword} not kept: {after_text!r}")
            elif leaves != "keep" and m and m.group().decode().lower() in after_text.lower():
                problems.append(f"unlisted {keyword} still carries its marker ({leaves})")
            elif leaves == "dummy" and (
                after is None or invalid_value(after.VR, after.value) is not None
            ):
                problems.append(f"unlisted {keyword} not dummied validly: {after_text!r}")
        if leaves == "dummy":  # no original text at all: the codes go too
            codes_in = [(item_in, item_out)]
            if nested_in is not None and nested_out is not None:
                codes_in.append((nested_in.value[0], nested_out.value[0]))
            for code_in, code_out in codes_in:
                for keyword in ("CodeValue", "CodeMeaning"):
                    if keyword in code_in and code_out.get(keyword) == code_in.get(keyword):
                        problems.append(f"{keyword} of a dummied sequence kept")
    return problems


def check_element(
    action: Action,
    vr: str,
    before: DataElement,
    after: DataElement | None,
    identical: bool,
    leaves: str,
    replaced: set[str],
) -> list[str]:
    """``before``/``after``: the row's element in the input and the output (None if absent);
    ``identical``: whether the output element is byte-identical to the input one."""
    if action is Action.REMOVE:
        return [] if after is None else [f"present: {text_of(after.value)!r}"]
    if after is None:
        return ["absent"]
    value = after.value
    if action is Action.ZERO:
        return [] if is_empty(value) else [f"not empty: {text_of(value)!r}"]
    if action is Action.KEEP:
        if vr == "SQ":
            problems = check_inner(before.value, value, leaves)
            for item_in, item_out in zip(before.value, value, strict=False):
                if leaves != "dummy" and item_in.get("CodeValue") != item_out.get("CodeValue"):
                    problems.append("the kept sequence's code changed")
            return problems
        return [] if identical else [f"changed: {text_of(value)!r}"]
    if vr == "SQ":  # D, C, or U (an IOD requires it): items kept, their text dummied or cleaned
        if len(value or ()) == 0:
            return ["empty sequence"]
        return check_inner(before.value, value, "clean" if action is Action.CLEAN else "dummy")
    if action is Action.UID:
        problems = []
        for v in values_of(value):
            if not valid_uid(str(v)):
                problems.append(f"{v!r} is not a valid UID")
        if str(value) == str(before.value):
            problems.append("not replaced")
        replaced.add(str(value))
        return problems
    if action is Action.DUMMY:
        invalid = invalid_value(vr, value)
        if invalid:
            return [f"not a valid dummy: {invalid}"]
        return [] if text_of(value) != text_of(before.value) else ["not replaced"]
    # Action.CLEAN
    if vr in ("DA", "TM", "DT"):
        invalid = invalid_value(vr, value)
        if invalid:
            return [f"not a valid shifted value: {invalid}"]
        return [] if str(value) != str(before.value) else ["not shifted"]
    if text_of(value) == text_of(before.value):
        return [f"unchanged: {text_of(value)!r}"]
    if vr in ("AE", "CS", "SH", "LO", "PN", "UI") and not is_empty(value):
        invalid = invalid_value(vr, value)
        if invalid:
            return [f"cleaned value invalid: {invalid}"]
    return []


def row_id(row: Row) -> str:
    return f"{row.tag:08X}-{keyword_for_tag(row.tag)}"


@pytest.mark.parametrize("case", CASES, ids=lambda c: c.name)
@pytest.mark.parametrize("row", ROWS, ids=row_id)
def test_row_gets_its_action_at_every_depth(row: Row, case: Case) -> None:
    action, problems = row_problems(row, case)
    assert not problems, (
        f"row {row.name} ({row.tag:08X}, {vr_of(row.tag)}, basic {row.basic}, options "
        f"{dict(row.options)}) under {case.name}: expected {action.name}\n  "
        + "\n  ".join(problems)
    )


@pytest.mark.parametrize("sop_class", REQUIRING_SOP_CLASSES)
def test_rows_get_their_action_where_the_iod_requires_them(sop_class: str) -> None:
    """Every row again, in an instance of each SOP Class with IOD requirements: the
    combined codes (and X or Z rows) become Z, D or U exactly where the IOD needs it."""
    failures = []
    for case in (
        Case(f"basic-{sop_class}", sop_class=sop_class),
        Case(f"basic-no-pseudonyms-{sop_class}", pseudonymize=False, sop_class=sop_class),
    ):
        for row in ROWS:
            action, problems = row_problems(row, case)
            if problems:
                failures.append(
                    f"{row.name} under {case.name}: expected {action.name}: "
                    + "; ".join(problems[:3])
                )
    assert not failures, f"{len(failures)} rows:\n" + "\n".join(failures[:40])


def row_problems(row: Row, case: Case) -> tuple[Action, list[str]]:
    """The action the oracle expects for ``row`` under ``case``, and what the engine's
    outputs got wrong, placement by placement."""
    run = run_case(case)
    action = expected_action(row, case.options, case.pseudonymize, case.sop_class)
    tag, i = row.tag, INDEX[row.tag]
    vr = vr_of(tag)
    problems: list[str] = []
    replaced: dict[str, set[str]] = {"key": set(), "other": set()}
    for name, out in run.outputs.items():
        placement = name.removesuffix("-bytes").removesuffix("-other-key")
        per_key = replaced["other" if name.endswith("other-key") else "key"]
        if tag == MEDIA_SOP_INSTANCE_UID:
            holder_in, holder_out = out.original.file_meta, out.result.file_meta
        else:
            holder_in = holder_of(out.original, placement)
            holder_out = holder_of(out.result, placement)
            if holder_in is None or holder_out is None:
                problems.append(f"{name}: the sequences around the row were not kept")
                continue
            if tag not in holder_in:
                assert name == "top-bytes" and tag >> 16 == 0, name
                continue  # a command element cannot be written at the top of a file
        # the written bytes first (a data set read from a file keeps them until first use)
        identical = tag in holder_out and same_element(
            holder_in.get_item(tag), holder_out.get_item(tag)
        )
        before = holder_in[tag]
        after = holder_out.get(tag)  # the DataElement, for a tag
        for problem in check_element(action, vr, before, after, identical, out.leaves, per_key):
            problems.append(f"{name}: {problem}")
        if action is not Action.KEEP and marker(i) in run.markers[name]:
            problems.append(f"{name}: the row's marker {marker(i)} is still in the output")
        if vr == "UI" and action is not Action.KEEP and i + 1 in run.uids[name]:
            problems.append(f"{name}: the row's original UID is still in the output")
    if action is Action.UID and vr == "UI":
        if len(replaced["key"]) != 1:
            problems.append(f"one UID, different replacements: {sorted(replaced['key'])}")
        if replaced["key"] & replaced["other"]:
            problems.append("two different keys gave the same replacement UID")
    if tag in (PATIENT_ID, PATIENT_NAME) and action is Action.CLEAN:
        new = set()
        for name, out in run.outputs.items():
            if not name.endswith("other-key"):
                holder = holder_of(out.result, name.removesuffix("-bytes"))
                new.add(str(holder[tag].value) if holder is not None and tag in holder else None)
        if len(new) != 1 or None in new:
            problems.append(f"the patient's pseudonym differs between placements: {new}")
    return action, problems


def test_placement_sequences_are_not_in_the_table() -> None:
    listed = {row.tag for row in ROWS}
    for chain in PLACEMENTS.values():
        for keyword in chain:
            tag = tag_for_keyword(keyword)
            assert tag is not None
            assert (tag in listed) == (keyword == "ContentSequence"), keyword
    for keyword in ("Manufacturer", "TextValue", "PurposeOfReferenceCodeSequence", "CodeMeaning"):
        assert tag_for_keyword(keyword) not in listed, keyword


def test_every_single_tag_row_has_a_synthetic_value() -> None:
    assert len(ROWS) == 617
    for i, row in enumerate(ROWS):
        element = synthetic(i, row.tag)
        assert not is_empty(element.value), row.name


def test_unlisted_free_text_in_the_sr_tree_is_dummied_or_cleaned() -> None:
    for case in (CASES[0], next(c for c in CASES if c.name == "clean-structured-content")):
        run = run_case(case)
        for name in ("sr", "sr-bytes"):
            assert SR_TEXT_MARKER not in run.markers[name], (case.name, name)
            item = holder_of(run.outputs[name].result, "sr")
            assert item is not None
            assert item.ValueType == "TEXT" and item.RelationshipType == "CONTAINS"
            code = item.ConceptNameCodeSequence[0].CodeValue
            # D (basic) replaces the tree's codes too; C keeps them and cleans the text
            assert (code == "CFFFE") == (case.name == "clean-structured-content"), case.name


def test_longitudinal_modified_dates_keep_intervals() -> None:
    def instance(study: str, series: str, patient: str) -> Dataset:
        ds = base_dataset()
        ds.PatientID = patient
        ds.StudyDate = study
        ds.SeriesDate = series
        ds.AcquisitionDate = series
        ds.PatientBirthDate = "19800101"
        return ds

    engine = deidentifier(Case("m", ("retain-longitudinal-modified",)))
    with quiet_pydicom():
        first, _ = engine.dataset(instance("20210315", "20210320", "PAT-A"))
        second, _ = engine.dataset(instance("20220101", "20220101", "PAT-A"))

    def day(text: str) -> date:
        return datetime.strptime(text, "%Y%m%d").date()

    assert first.StudyDate != "20210315"
    assert day(first.SeriesDate) - day(first.StudyDate) == timedelta(days=5)
    assert first.AcquisitionDate == first.SeriesDate
    # same patient, another instance: the same shift, so the interval between studies holds
    assert day(second.StudyDate) - day(first.StudyDate) == day("20220101") - day("20210315")


def test_longitudinal_modified_date_and_time_stay_consistent_with_datetimes() -> None:
    """StudyDate+StudyTime and AcquisitionDateTime name the same moment; so must the output."""
    engine = deidentifier(Case("m", ("retain-longitudinal-modified",)))
    failures = []
    for n, clock in enumerate(("000001", "120000", "235959")):
        ds = base_dataset()
        ds.PatientID = f"PAT-{n}"
        ds.StudyDate = "20210315"
        ds.StudyTime = clock
        ds.AcquisitionDateTime = f"20210315{clock}"
        with quiet_pydicom():
            out, _ = engine.dataset(ds)
        pair = datetime.strptime(out.StudyDate + out.StudyTime, "%Y%m%d%H%M%S")
        moment = datetime.strptime(out.AcquisitionDateTime, "%Y%m%d%H%M%S")
        if pair != moment:
            failures.append(
                f"{clock}: StudyDate/StudyTime -> {out.StudyDate} {out.StudyTime}, "
                f"AcquisitionDateTime -> {out.AcquisitionDateTime}"
            )
    assert not failures, "\n".join(failures)


def test_identifying_codes_do_not_survive_a_dummied_sequence() -> None:
    """Person Identification Code Sequence is D, Institution Code Sequence X/Z/D: their
    codes name the person or institution, so none may remain, whether the sequence is
    dummied (D, and X/Z/D where the IOD requires it: X-Ray Radiation Dose SR) or removed
    (X/Z/D elsewhere)."""
    for sop_class, institution_kept in ((CT_IMAGE_STORAGE, False), (XRAY_DOSE_SR, True)):
        ds = instance_of(sop_class)
        person = Dataset()
        person.CodeValue = "MRKRA001"
        person.CodingSchemeDesignator = "L"
        person.CodeMeaning = "MRKRA002 Zqx^Person"
        ds.PersonIdentificationCodeSequence = Sequence([person])
        institution = Dataset()
        institution.CodeValue = "MRKRA003"
        institution.CodingSchemeDesignator = "L"
        institution.CodeMeaning = "MRKRA004 General Hospital"
        ds.InstitutionCodeSequence = Sequence([institution])
        with quiet_pydicom():
            out, _ = deidentifier(CASES[0]).dataset(ds)
            found = {m.decode() for m in MARKER_RE.findall(to_bytes(out))}
        assert "PersonIdentificationCodeSequence" in out
        assert ("InstitutionCodeSequence" in out) == institution_kept, sop_class
        for item in out.get("InstitutionCodeSequence", []):  # required: dummied, not emptied
            assert item.CodeValue != "MRKRA003" and "MRKRA004" not in item.CodeMeaning
        assert not found, f"identifying codes kept after D: {sorted(found)}"


def test_overrides_win_over_the_table_end_to_end() -> None:
    ds = base_dataset()
    ds.StudyDescription = "MRKRB001 zqx"
    ds.PatientName = "MRKRB002^Zqx"
    profile = Profile.build(overrides={"StudyDescription": "K", "PatientName": "X"})
    with quiet_pydicom():
        out, _ = Deidentifier(profile, KEY).dataset(ds)
    assert out.StudyDescription == "MRKRB001 zqx"
    assert "PatientName" not in out


GSPS_STORAGE = "1.2.840.10008.5.1.4.1.1.11.1"
XRAY_DOSE_SR = "1.2.840.10008.5.1.4.1.1.88.67"
BASIC_TEXT_SR_STORAGE = "1.2.840.10008.5.1.4.1.1.88.11"


def instance_of(sop_class: str) -> Dataset:
    ds = base_dataset()
    ds.SOPClassUID = sop_class
    ds.file_meta.MediaStorageSOPClassUID = sop_class
    ds.Modality = "PR" if sop_class == GSPS_STORAGE else "SR"
    return ds


def test_iod_type_1_attributes_the_table_removes_get_a_dummy() -> None:
    """Presentation Creation Date/Time are X in the table but Type 1 in a presentation state."""
    for sop_class, kept in ((GSPS_STORAGE, True), (CT_IMAGE_STORAGE, False)):
        ds = instance_of(sop_class)
        ds.PresentationCreationDate = "20210315"
        ds.PresentationCreationTime = "101530"
        with quiet_pydicom():
            out, _ = deidentifier(CASES[0]).dataset(ds)
        if not kept:
            assert "PresentationCreationDate" not in out and "PresentationCreationTime" not in out
            continue
        assert invalid_value("DA", out.PresentationCreationDate) is None
        assert invalid_value("TM", out.PresentationCreationTime) is None
        assert out.PresentationCreationDate != "20210315"
        assert out.PresentationCreationTime != "101530"
    ds = instance_of(GSPS_STORAGE)
    ds.PresentationCreationDate = "20210315"
    with quiet_pydicom():
        out, _ = deidentifier(Case("full", ("retain-longitudinal-full",))).dataset(ds)
    assert out.PresentationCreationDate == "20210315"  # K stays K
    profile = Profile.build(overrides={"PresentationCreationDate": "X"})
    ds = instance_of(GSPS_STORAGE)
    ds.PresentationCreationDate = "20210315"
    with quiet_pydicom():
        out, _ = Deidentifier(profile, KEY).dataset(ds)
    assert "PresentationCreationDate" not in out  # the project's override wins


def test_iod_type_2_attributes_the_table_removes_are_emptied() -> None:
    for sop_class, kept in ((BASIC_TEXT_SR_STORAGE, True), (CT_IMAGE_STORAGE, False)):
        ds = instance_of(sop_class)
        request = Dataset()
        request.RequestedProcedureID = "MRKRF001"
        request.RequestedProcedureDescription = "MRKRF002 zqx"
        ds.ReferencedRequestSequence = Sequence([request])
        with quiet_pydicom():
            out, _ = deidentifier(CASES[0]).dataset(ds)
            found = MARKER_RE.findall(serialize(out))
        assert not found
        item = out.ReferencedRequestSequence[0]
        for keyword in ("RequestedProcedureID", "RequestedProcedureDescription"):
            if kept:
                assert keyword in item and is_empty(item.data_element(keyword).value), keyword
            elif keyword == "RequestedProcedureID":
                assert keyword not in item  # X in the table


def test_a_dicomdir_is_refused() -> None:
    ds = instance_of("1.2.840.10008.1.3.10")
    with quiet_pydicom(), pytest.raises(DeidentificationError):
        deidentifier(CASES[0]).dataset(ds)


# --------------------------------------------------------------------------- pattern rows


def graphics_dataset() -> Dataset:
    ds = base_dataset()
    ds.add_new(0x50000005, "US", 2)  # CurveDimensions
    ds.add_new(0x50000010, "US", 4)  # NumberOfPoints
    ds.add_new(0x50002500, "LO", "MRKRC001 curve label")  # CurveLabel
    ds.add_new(0x50003000, "OB", b"MRKRC002")  # CurveData
    ds.add_new(0x60000010, "US", 8)  # OverlayRows
    ds.add_new(0x60000011, "US", 8)  # OverlayColumns
    ds.add_new(0x60000040, "CS", "G")  # OverlayType
    ds.add_new(0x60000050, "SS", [1, 1])  # OverlayOrigin
    ds.add_new(0x60000100, "US", 1)  # OverlayBitsAllocated
    ds.add_new(0x60000102, "US", 0)  # OverlayBitPosition
    ds.add_new(0x60003000, "OW", b"MRKRC003")  # OverlayData
    ds.add_new(0x60004000, "LT", "MRKRC004 overlay comment")  # OverlayComments
    ds.add_new(0x60000022, "LO", "MRKRC006 overlay description")  # OverlayDescription
    ds.add_new(0x60001500, "LO", "MRKRC007 overlay label")  # OverlayLabel
    ds.add_new(0x60020010, "US", 8)  # a second overlay plane, no data: comments and label
    ds.add_new(0x60024000, "LT", "MRKRC005 second comment")
    ds.add_new(0x60021500, "LO", "MRKRC008 second label")
    return ds


def test_curves_and_overlays_are_removed_under_basic() -> None:
    with quiet_pydicom():
        out, _ = deidentifier(CASES[0]).dataset(graphics_dataset())
        data = to_bytes(out)
    groups = {t >> 16 for t in tags_of(out)}
    assert not {g for g in groups if 0x5000 <= g <= 0x501E}, "curve elements kept"
    assert 0x6000 not in groups, "the overlay plane whose data was removed is still there"
    assert 0x60024000 not in out, "overlay comments kept"
    assert not MARKER_RE.findall(data)


def test_curves_and_overlays_are_cleaned_under_clean_graphics() -> None:
    ds = graphics_dataset()
    with quiet_pydicom():
        out, _ = deidentifier(Case("g", ("clean-graphics",))).dataset(copy.deepcopy(ds))
        data = to_bytes(out)
    assert not MARKER_RE.findall(data), "a curve or overlay marker survived"
    for tag in (0x50003000, 0x60003000):
        assert tag in out
        assert out[tag].value == bytes(len(ds[tag].value)), f"{tag:08X} not zeroed"
    assert 0x60004000 in out and 0x50002500 in out
    assert out[0x60000010].value == 8 and out[0x60000050].value == [1, 1]


def tags_of(ds: Dataset) -> set[int]:
    return {int(element.tag) for element in ds}


def private_dataset() -> Dataset:
    ds = base_dataset()
    ds.add_new(0x00190010, "LO", "SIEMENS MR HEADER")
    ds.add_new(0x00190011, "LO", "OTHER VENDOR")
    ds.add_new(0x0019100C, "IS", "1000")  # on the safe list under SIEMENS MR HEADER
    ds.add_new(0x0019100D, "LO", "MRKRD001 zqx")  # same creator, not listed
    ds.add_new(0x0019110C, "IS", "2000")  # same offset under another creator
    ds.add_new(0x00290010, "LO", "ANOTHER CREATOR")
    private_item = Dataset()
    private_item.add_new(0x00100010, "PN", "MRKRD002^Zqx")
    ds.add_new(0x00291010, "SQ", Sequence([private_item]))  # a private sequence
    ds.add_new(0x00291011, "LO", "MRKRD003 zqx")
    return ds


SAFE = frozenset({(0x0019, "SIEMENS MR HEADER", 0x0C)})


def test_private_elements_and_creators_are_removed_under_basic() -> None:
    engine = Deidentifier(Profile.build(), KEY, safe_private=SAFE)
    with quiet_pydicom():
        out, _ = engine.dataset(private_dataset())
        data = to_bytes(out)
    assert not [t for t in tags_of(out) if (t >> 16) % 2], "private elements kept"
    assert not MARKER_RE.findall(data)


def test_retain_safe_private_keeps_only_listed_elements_under_their_creator() -> None:
    engine = Deidentifier(Profile.build(["retain-safe-private"]), KEY, safe_private=SAFE)
    with quiet_pydicom():
        out, _ = engine.dataset(private_dataset())
        data = to_bytes(out)
    private = {t for t in tags_of(out) if (t >> 16) % 2}
    assert private == {0x00190010, 0x0019100C}, sorted(f"{t:08X}" for t in private)
    assert out[0x00190010].value == "SIEMENS MR HEADER"
    assert out[0x0019100C].value == "1000"
    assert not MARKER_RE.findall(data)


def test_safe_private_depends_on_the_creator_not_the_tag() -> None:
    ds = base_dataset()
    ds.add_new(0x00190010, "LO", "OTHER VENDOR")  # the safe offset, under another creator
    ds.add_new(0x0019100C, "IS", "1000")
    engine = Deidentifier(Profile.build(["retain-safe-private"]), KEY, safe_private=SAFE)
    with quiet_pydicom():
        out, _ = engine.dataset(ds)
    assert 0x0019100C not in out and 0x00190010 not in out


def test_private_elements_inside_sequences_are_removed() -> None:
    ds = base_dataset()
    item = Dataset()
    item.CodeValue = "T-1"
    item.add_new(0x00090010, "LO", "ACME")
    item.add_new(0x00091001, "LO", "MRKRD004 zqx")
    ds.AnatomicRegionSequence = Sequence([item])
    with quiet_pydicom():
        out, _ = deidentifier(CASES[0]).dataset(ds)
    kept = out.AnatomicRegionSequence[0]
    assert kept.CodeValue == "T-1"
    assert 0x00091001 not in kept and 0x00090010 not in kept


# --------------------------------------------------------------------------- marking and meta


@pytest.mark.parametrize("case", CASES, ids=lambda c: c.name)
def test_marking_and_file_meta(case: Case) -> None:
    source = base_dataset()
    original_sop = source.SOPInstanceUID
    with quiet_pydicom():
        result = deidentifier(case).instance(to_bytes(source))
    out = read(result.data)
    assert out.PatientIdentityRemoved == "YES"
    codes = {item.CodeValue for item in out.DeidentificationMethodCodeSequence}
    assert {item.CodingSchemeDesignator for item in out.DeidentificationMethodCodeSequence} == {
        "DCM"
    }
    assert codes == {CID_7050["basic"]} | {CID_7050[o] for o in case.options}
    assert out.LongitudinalTemporalInformationModified == (
        "UNMODIFIED"
        if "retain-longitudinal-full" in case.options
        else "MODIFIED"
        if "retain-longitudinal-modified" in case.options
        else "REMOVED"
    )
    meta = out.file_meta
    assert meta.MediaStorageSOPInstanceUID == out.SOPInstanceUID == result.sop_uid
    if "retain-uids" in case.options:
        assert out.SOPInstanceUID == original_sop
    else:
        assert out.SOPInstanceUID != original_sop
    assert meta.MediaStorageSOPClassUID == out.SOPClassUID == CT_IMAGE_STORAGE
    assert meta.ImplementationClassUID == IMPLEMENTATION_CLASS_UID
    assert meta.TransferSyntaxUID == ExplicitVRLittleEndian
    assert result.study_uid == out.StudyInstanceUID
    assert result.series_uid == out.SeriesInstanceUID


def test_output_is_deterministic_for_a_key_and_differs_between_keys() -> None:
    data = to_bytes(base_dataset())
    with quiet_pydicom():
        first = deidentifier(CASES[0]).instance(data)
        again = deidentifier(CASES[0]).instance(data)
        other = deidentifier(CASES[0], OTHER_KEY).instance(data)
    assert first.data == again.data
    assert first.sop_uid != other.sop_uid
    assert read(first.data).PatientID != read(other.data).PatientID


# --------------------------------------------------------------------------- burned-in text


def us_image(manufacturer: str = "ACME", model: str = "SONO1") -> Dataset:
    ds = base_dataset()
    ds.SOPClassUID = US_IMAGE_STORAGE
    ds.file_meta.MediaStorageSOPClassUID = US_IMAGE_STORAGE
    ds.Modality = "US"
    ds.Manufacturer = manufacturer
    ds.ManufacturerModelName = model
    ds.Rows, ds.Columns = 8, 10
    ds.SamplesPerPixel = 1
    ds.PhotometricInterpretation = "MONOCHROME2"
    ds.BitsAllocated, ds.BitsStored, ds.HighBit = 16, 12, 11
    ds.PixelRepresentation = 0
    ds.PixelData = np.full((8, 10), 1000, dtype=np.uint16).tobytes()
    return ds


def test_burned_in_annotation_yes_is_quarantined() -> None:
    ds = base_dataset()
    ds.BurnedInAnnotation = "YES"
    engine = Deidentifier(Profile.build(), KEY)
    with quiet_pydicom(), pytest.raises(DeidentificationError) as caught:
        engine.dataset(copy.deepcopy(ds))
    assert caught.value.code == ErrorCode.BURNED_IN_ANNOTATION
    with quiet_pydicom(), pytest.raises(DeidentificationError) as caught:
        engine.instance(to_bytes(ds))
    assert caught.value.code == ErrorCode.BURNED_IN_ANNOTATION


def test_ultrasound_without_a_rule_is_quarantined() -> None:
    engine = Deidentifier(
        Profile.build(),
        KEY,
        pixel_rules=(PixelRule("OTHER", "SONO1", 8, 10, (Region(0, 0, 1, 1),)),),
    )
    with quiet_pydicom(), pytest.raises(DeidentificationError) as caught:
        engine.instance(to_bytes(us_image()))
    assert caught.value.code == ErrorCode.BURNED_IN_ANNOTATION


def test_ultrasound_with_a_matching_rule_is_blanked_and_marked() -> None:
    rule = PixelRule("acme", "sono1", 8, 10, (Region(x=2, y=1, width=3, height=2),))
    engine = Deidentifier(Profile.build(), KEY, pixel_rules=(rule,))
    ds = us_image()
    ds.BurnedInAnnotation = "YES"
    with quiet_pydicom():
        out = read(engine.instance(to_bytes(ds)).data)
    pixels = out.pixel_array
    expected = np.full((8, 10), 1000, dtype=np.uint16)
    expected[1:3, 2:5] = 0
    np.testing.assert_array_equal(pixels, expected)
    assert out.BurnedInAnnotation == "NO"
    codes = [item.CodeValue for item in out.DeidentificationMethodCodeSequence]
    assert CID_7050["clean-pixel-data"] in codes and CID_7050["basic"] in codes


def test_suspect_instance_passes_unblanked_when_quarantine_is_off() -> None:
    engine = Deidentifier(Profile.build(), KEY, quarantine_burned_in=False)
    with quiet_pydicom():
        out = read(engine.instance(to_bytes(us_image())).data)
    codes = [item.CodeValue for item in out.DeidentificationMethodCodeSequence]
    assert CID_7050["clean-pixel-data"] not in codes
    assert int(out.pixel_array.min()) == 1000


# --------------------------------------------------------------------------- bad input


def valid_bytes() -> bytes:
    ds = base_dataset()
    ds.StudyDescription = "MRKRE001 zqx"
    ds.Rows, ds.Columns = 4, 4
    ds.SamplesPerPixel = 1
    ds.PhotometricInterpretation = "MONOCHROME2"
    ds.BitsAllocated, ds.BitsStored, ds.HighBit = 16, 16, 15
    ds.PixelRepresentation = 0
    ds.PixelData = bytes(range(32))
    return to_bytes(ds)


BAD_INPUTS = {
    "empty": lambda: b"",
    "garbage": lambda: bytes(range(256)) * 8,
    "text": lambda: b"not a dicom file at all\n" * 40,
    "preamble-only": lambda: b"\x00" * 128 + b"DICM",
    "cut-in-meta": lambda: valid_bytes()[:150],
    "cut-in-dataset": lambda: valid_bytes()[: valid_bytes().index(b"MRKRE001") + 3],
    "cut-in-pixels": lambda: valid_bytes()[:-7],
}


@pytest.mark.parametrize("make", BAD_INPUTS.values(), ids=BAD_INPUTS.keys())
def test_bad_input_raises_and_never_returns_bytes(make: Any) -> None:
    data = make()
    with quiet_pydicom(), pytest.raises((DicomReadError, DeidentificationError)) as caught:
        deidentifier(CASES[0]).instance(data)
    assert isinstance(caught.value, DicomflowError)
    assert "MRKR" not in str(caught.value)


def test_valid_bytes_pass() -> None:
    # the bad-input cases above are cut from this file, which is itself accepted
    with quiet_pydicom():
        out = read(deidentifier(CASES[0]).instance(valid_bytes()).data)
    assert "StudyDescription" not in out
