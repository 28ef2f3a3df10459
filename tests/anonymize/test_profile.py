"""The shipped PS3.15 Table E.1-1, its resolution to one action per row, and the key.

The table must match the reference copy in ``../shared/reference`` row for row,
and every row under every option set must resolve to the action the table
says, following the rules documented in :mod:`dicomflow.anonymize.profile`
(computed here independently of it).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
from pydicom.datadict import tag_for_keyword

from dicomflow.anonymize.engine import Deidentifier
from dicomflow.anonymize.keys import SecretKey, load_key
from dicomflow.anonymize.profile import (
    Action,
    Option,
    Pattern,
    Profile,
    ProfileRow,
    check_options,
    load_table,
    parse_option,
    resolve_action,
    resolve_code,
)
from dicomflow.anonymize.pseudonyms import Pseudonymizer
from dicomflow.errors import ConfigError
from tests.anonymize.columns import SINGLE_CODES
from tests.anonymize.oracle import OPTION_COLUMNS as COLUMNS
from tests.anonymize.oracle import Row, expected_code
from tests.conftest import require

REFERENCE = Path(__file__).parents[2].parent / "shared/reference/ps3.15-annex-e-2024b.json"

PATTERN_IDS = {
    "50xxxxxx": Pattern.CURVE,
    "60xx3000": Pattern.OVERLAY_DATA,
    "60xx4000": Pattern.OVERLAY_COMMENTS,
    "ggggeeee-where-gggg-is-odd": Pattern.PRIVATE,
}
COMBINED_CODES = {"Z/D", "X/D", "X/Z/D", "X/Z", "X/Z/U*"}
# A SOP Class no IOD requirement names: combined codes take their first letter.
NO_IOD = "1.2.3.4"
LONGITUDINAL = {"retain-longitudinal-full", "retain-longitudinal-modified"}
KEY_BYTES = b"k3y-bytes-that-must-never-print!" + b"0123456789"


@pytest.fixture(scope="module")
def reference() -> list[dict[str, Any]]:
    require(REFERENCE.exists(), f"the reference table at {REFERENCE}")
    rows: list[dict[str, Any]] = json.loads(REFERENCE.read_text("utf-8"))
    return rows


def expected(row: ProfileRow, options: tuple[str, ...]) -> Action:
    """The table's action for ``row`` under ``options`` before any IOD requirement, from
    the independent oracle (``tests/anonymize/oracle.py``)."""
    plain = Row(row.tag or 0, row.name, row.basic, row.options)
    return Action(expected_code(plain, options, sop_class=NO_IOD, pseudonymize=False))


# --------------------------------------------------------------------------- the table


def test_shipped_table_has_621_rows_of_the_2024b_edition() -> None:
    table = load_table()
    assert len(table.rows) == 621
    assert table.edition == "2024b"
    assert "innolitics" in table.source
    assert sum(row.pattern is not None for row in table.rows) == 4
    assert {row.pattern for row in table.rows if row.pattern} == set(Pattern)
    tags = [row.tag for row in table.rows if row.tag is not None]
    assert len(tags) == len(set(tags)) == 617


def test_shipped_table_matches_the_reference_row_for_row(reference: list[dict[str, Any]]) -> None:
    rows = load_table().rows
    assert len(reference) == len(rows) == 621
    known = {"name", "tag", "id", "stdCompIOD", "basicProfile", *COLUMNS.values()}
    mismatches = []
    for n, (ref, row) in enumerate(zip(reference, rows, strict=True)):
        assert set(ref) <= known, f"reference row {n} has unknown columns {set(ref) - known}"
        if ref["id"] in PATTERN_IDS:
            want_tag, want_pattern = None, PATTERN_IDS[ref["id"]]
        else:
            want_tag = int(ref["tag"].strip("()").replace(",", ""), 16)
            want_pattern = None
        want_options = {column: ref[column] for column in COLUMNS.values() if ref.get(column)}
        got = (row.name, row.tag, row.pattern, row.basic, dict(row.options))
        want = (ref["name"], want_tag, want_pattern, ref["basicProfile"], want_options)
        if got != want:
            mismatches.append(f"row {n}: shipped {got} != reference {want}")
    assert not mismatches, "\n".join(mismatches[:20])


def test_every_single_tag_row_is_in_the_dictionary() -> None:
    unknown = []
    for row in load_table().rows:
        if row.tag is not None and row.vr is None:
            unknown.append(row.name)
    assert not unknown


def test_every_code_in_the_table_is_a_known_code() -> None:
    codes = {row.basic for row in load_table().rows}
    assert codes <= set(SINGLE_CODES) | COMBINED_CODES
    option_codes = {v for row in load_table().rows for v in row.options.values()}
    assert option_codes <= {"K", "C"}


# --------------------------------------------------------------------------- resolution


def _option_sets() -> list[tuple[str, ...]]:
    names = list(COLUMNS)
    sets: list[tuple[str, ...]] = [()]
    sets += [(name,) for name in names]
    sets.append(tuple(n for n in names if n != "retain-longitudinal-modified"))
    sets.append(tuple(n for n in names if n != "retain-longitudinal-full"))
    pairs = [
        ("retain-device-identity", "clean-descriptors"),
        ("retain-patient-characteristics", "clean-descriptors"),
        ("retain-uids", "clean-structured-content"),
        ("retain-institution-identity", "retain-device-identity"),
        ("retain-longitudinal-modified", "clean-descriptors"),
        ("retain-longitudinal-full", "retain-device-identity"),
        ("clean-graphics", "retain-safe-private"),
    ]
    sets += pairs
    return sets


OPTION_SETS = _option_sets()


@pytest.mark.parametrize("options", OPTION_SETS, ids=lambda o: "+".join(o) or "basic")
def test_every_row_resolves_to_the_table_action(options: tuple[str, ...]) -> None:
    chosen = [Option(o) for o in options]
    profile = Profile.build(options, pseudonymize_patient=False)
    wrong = []
    for row in load_table().rows:
        action = resolve_action(row, chosen)
        want = expected(row, options)
        if not isinstance(action, Action) or action != want:
            wrong.append(f"{row.name}: resolve_action gave {action!r}, table says {want.name}")
        if row.tag is not None and profile.actions[row.tag] != want:
            wrong.append(f"{row.name}: Profile has {profile.actions[row.tag]!r}, want {want.name}")
        if row.pattern is not None and profile.patterns[row.pattern] != want:
            wrong.append(f"{row.name}: Profile pattern {profile.patterns[row.pattern]!r}")
    assert not wrong, "\n".join(wrong[:30])


def test_option_order_does_not_matter() -> None:
    names = [n for n in COLUMNS if n != "retain-longitudinal-full"]
    forward, backward = Profile.build(names), Profile.build(list(reversed(names)))
    assert forward.actions == backward.actions
    assert forward.patterns == backward.patterns


def test_every_cell_of_every_option_column_is_reached() -> None:
    """The option sets above exercise every K and C cell of the table."""
    reached = set()
    for options in OPTION_SETS:
        for row in load_table().rows:
            for option in options:
                code = row.options.get(COLUMNS[option])
                if code and expected(row, options) == SINGLE_CODES[code]:
                    reached.add((row.name, COLUMNS[option]))
    cells = {(row.name, column) for row in load_table().rows for column in row.options}
    assert cells == reached


def test_combined_codes_resolve_as_documented() -> None:
    """Before the IOD is known a combined code is its first letter (PS3.15 E.1.1: X or Z
    unless the IOD requires more); the walk raises it per instance."""
    assert resolve_code("Z/D", "DA") is Action.ZERO
    assert resolve_code("X/D", "LO") is Action.REMOVE
    assert resolve_code("X/Z/D", "SQ") is Action.REMOVE
    assert resolve_code("X/Z", "PN") is Action.REMOVE
    assert resolve_code("X/Z", "SQ") is Action.REMOVE
    assert resolve_code("X/Z/U*", "UI") is Action.REMOVE
    assert resolve_code("X/Z/U*", "SQ") is Action.REMOVE
    with pytest.raises(ConfigError):
        resolve_code("Q", "LO")


def test_both_longitudinal_options_are_refused() -> None:
    with pytest.raises(ConfigError):
        Profile.build(sorted(LONGITUDINAL))
    with pytest.raises(ConfigError):
        check_options([Option.RETAIN_LONGITUDINAL_FULL, Option.RETAIN_LONGITUDINAL_MODIFIED])
    with pytest.raises(ConfigError):
        Profile(frozenset({Option.RETAIN_LONGITUDINAL_FULL, Option.RETAIN_LONGITUDINAL_MODIFIED}))


@pytest.mark.parametrize("name", ["retain-everything", "", "basic", "retain_uids", "K"])
def test_unknown_option_names_are_refused(name: str) -> None:
    with pytest.raises(ConfigError):
        Profile.build([name])
    with pytest.raises(ConfigError):
        parse_option(name)


def test_option_spelling_is_forgiving_about_case_and_spaces() -> None:
    assert parse_option(" Retain-UIDs ") is Option.RETAIN_UIDS


def test_dates_follow_the_longitudinal_option() -> None:
    assert Profile.build().dates == "removed"
    assert Profile.build(["retain-longitudinal-full"]).dates == "full"
    assert Profile.build(["retain-longitudinal-modified"]).dates == "modified"


@pytest.mark.parametrize(
    "spelling", ["StudyDescription", "00081030", "(0008,1030)", " (0008, 1030) "]
)
def test_overrides_win_over_the_table(spelling: str) -> None:
    tag = int(tag_for_keyword("StudyDescription") or 0)
    assert Profile.build().actions[tag] is Action.REMOVE  # X in the table
    assert Profile.build(overrides={spelling: "K"}).actions[tag] is Action.KEEP
    assert Profile.build(["clean-descriptors"], {spelling: "k"}).actions[tag] is Action.KEEP


def test_overrides_win_over_patient_pseudonyms() -> None:
    name = int(tag_for_keyword("PatientName") or 0)
    assert Profile.build().actions[name] is Action.CLEAN
    assert Profile.build(overrides={"PatientName": "X"}).actions[name] is Action.REMOVE


def test_patient_pseudonyms_replace_the_table_only_when_asked() -> None:
    name = int(tag_for_keyword("PatientName") or 0)
    patient_id = int(tag_for_keyword("PatientID") or 0)
    on, off = Profile.build(), Profile.build(pseudonymize_patient=False)
    assert on.actions[name] is on.actions[patient_id] is Action.CLEAN
    rows = {row.tag: row for row in load_table().rows}
    assert off.actions[name] is expected(rows[name], ())
    assert off.actions[patient_id] is expected(rows[patient_id], ())


@pytest.mark.parametrize(
    "overrides",
    [{"StudyDescription": "Q"}, {"NoSuchKeyword": "K"}, {"0008103": "K"}, {"GGGGEEEE": "X"}],
)
def test_bad_overrides_are_refused(overrides: dict[str, str]) -> None:
    with pytest.raises(ConfigError):
        Profile.build(overrides=overrides)


def test_method_codes_name_the_profile_and_its_options() -> None:
    codes = [code for code, _ in Profile.build().method_codes()]
    assert codes == ["113100"]
    codes = [code for code, _ in Profile.build(["clean-descriptors"]).method_codes()]
    assert sorted(codes) == ["113100", "113105"]
    with_pixels = Profile.build().method_codes(clean_pixels=True)
    assert {code for code, _ in with_pixels} == {"113100", "113101"}


# --------------------------------------------------------------------------- the key


@pytest.mark.parametrize("data", [b"", b"short", b"x" * 31])
def test_short_keys_are_refused(data: bytes) -> None:
    with pytest.raises(ConfigError):
        SecretKey(data)


def test_a_32_byte_key_is_accepted() -> None:
    assert SecretKey(b"x" * 32).value == b"x" * 32


def test_a_key_source_is_required() -> None:
    with pytest.raises(ConfigError):
        load_key()
    with pytest.raises(ConfigError):
        load_key(key_file=None, key_env=None)


def test_the_key_never_prints() -> None:
    key = SecretKey(KEY_BYTES)
    texts = [
        repr(key),
        str(key),
        f"{key}",
        repr(Pseudonymizer(key)),
        repr(Deidentifier(Profile.build(), key)),
    ]
    for text in texts:
        assert KEY_BYTES.decode() not in text
        assert "k3y" not in text and "0123456789" not in text


def test_load_key_reads_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("DICOMFLOW_TEST_DEID_KEY", f"  {KEY_BYTES.decode()}\n")
    assert load_key(key_env="DICOMFLOW_TEST_DEID_KEY").value == KEY_BYTES


def test_load_key_refuses_an_unset_or_short_variable(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("DICOMFLOW_TEST_DEID_KEY", raising=False)
    with pytest.raises(ConfigError):
        load_key(key_env="DICOMFLOW_TEST_DEID_KEY")
    monkeypatch.setenv("DICOMFLOW_TEST_DEID_KEY", "short")
    with pytest.raises(ConfigError):
        load_key(key_env="DICOMFLOW_TEST_DEID_KEY")


def test_load_key_reads_a_file(tmp_path: Path) -> None:
    path = tmp_path / "key"
    path.write_bytes(KEY_BYTES + b"\n")
    assert load_key(key_file=str(path)).value == KEY_BYTES
    with pytest.raises(ConfigError):
        load_key(key_file=str(tmp_path / "missing"))
    with pytest.raises(ConfigError):
        load_key(key_file=str(path), key_env="DICOMFLOW_TEST_DEID_KEY")


def test_keys_give_unlinkable_pseudonyms() -> None:
    one, two = Pseudonymizer(SecretKey(b"a" * 32)), Pseudonymizer(SecretKey(b"b" * 32))
    assert one.uid("1.2.3") == Pseudonymizer(SecretKey(b"a" * 32)).uid("1.2.3")
    assert one.uid("1.2.3") != two.uid("1.2.3")
    assert one.patient_id("P1") != two.patient_id("P1")
    assert one.day_shift("P1") != 0 and one.second_shift("P1") % 86400 != 0


def test_options_cover_every_column() -> None:
    assert {o.value for o in Option} == set(COLUMNS)
