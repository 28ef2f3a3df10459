"""The proof's scanner finds keyed fingerprints exactly where a plain search for the
values would: the oracle here is a regular expression over the decoded, case-folded
text, sharing nothing with the rolling hashes it checks."""

from __future__ import annotations

import random
import re

import pytest

from dicomflow.anonymize.proof import (
    CHUNK,
    ProofKey,
    Scanner,
    fingerprints,
    looked_for,
    readings,
)

ENCODINGS = ("utf-8", "latin-1", "utf-16-le", "utf-16-be")
VALUES = [
    ("name", "Doe^John"),
    ("name", "Müller^Ännchen"),
    ("id", "MRN0042137"),
    ("uid", "1.3.6.1.4.1.9590.100.1.2.2270147"),
    ("date", "20010203"),
    ("text", "fell from a horse at the farm"),
]


def _oracle(value: str, blob: bytes, encoding: str) -> bool:
    """Whether ``value`` stands alone in ``blob`` read as ``encoding``, case-folded."""
    text = blob.decode(encoding, "replace").casefold()
    pattern = r"(?<![A-Za-z0-9])" + re.escape(looked_for(value) or "") + r"(?![A-Za-z0-9])"
    return re.search(pattern, text) is not None


def _found(scanner: Scanner, blob: bytes) -> set[str]:
    return {
        fp.kind for text in readings(blob) for hit in scanner.find(text) for fp in hit.fingerprints
    }


@pytest.mark.parametrize("encoding", ENCODINGS)
def test_every_value_is_found_as_a_plain_search_finds_it(encoding: str) -> None:
    key = ProofKey.new()
    rng = random.Random(f"proof-{encoding}")
    filler = "abc xyz 0123 .^-_/ ÉÀ"
    for kind, value in VALUES:
        prints, unchecked = fingerprints(key, [(kind, value)], "2.25.1")
        assert prints and not unchecked
        scanner = Scanner(key, prints)
        for _ in range(40):
            before = "".join(rng.choice(filler) for _ in range(rng.randint(0, 300)))
            after = "".join(rng.choice(filler) for _ in range(rng.randint(0, 300)))
            shown = rng.choice([value, value.upper(), value.lower(), value.swapcase()])
            embedded = f"{before}{shown}{after}"
            blob = embedded.encode(encoding, "replace")
            expected = _oracle(value, blob, encoding)
            assert (kind in _found(scanner, blob)) is expected, (kind, encoding, embedded)


def test_a_value_touching_letters_or_digits_is_not_a_hit() -> None:
    key = ProofKey.new()
    scanner = Scanner(key, fingerprints(key, [("id", "MRN0042137")], "2.25.1")[0])
    for text in ("xMRN0042137", "MRN00421378", "7MRN0042137"):
        assert not _found(scanner, text.encode())
    for text in ("(MRN0042137)", "id=MRN0042137;", "MRN0042137"):
        assert _found(scanner, text.encode()) == {"id"}


def test_values_across_the_chunk_boundary_are_found() -> None:
    key = ProofKey.new()
    scanner = Scanner(key, fingerprints(key, VALUES, "2.25.1")[0])
    for offset in (CHUNK - 12, CHUNK - 1, CHUNK, 2 * CHUNK - 5):
        text = " " * offset + " Doe^John " + " " * 40
        hits = scanner.find(text.casefold())
        assert [h.start for h in hits] == [offset + 1]


def test_dummies_short_values_and_lone_words_are_not_looked_for() -> None:
    key = ProofKey.new()
    removed = [("name", "ANONYMIZED"), ("id", "42"), ("text", "liver"), ("date", "2001")]
    prints, unchecked = fingerprints(key, removed, "2.25.1")
    assert not prints and unchecked == len(removed)
    prints, _ = fingerprints(key, [("uid", "1.2.840.10008.5.1.4.1.1.2")], "2.25.1")
    assert not prints  # a SOP class UID identifies no one


def test_fingerprints_do_not_hold_the_value() -> None:
    key = ProofKey.new()
    prints, _ = fingerprints(key, VALUES, "2.25.1")
    text = repr(prints).casefold() + repr(key)
    for _, value in VALUES:
        assert value.casefold() not in text
