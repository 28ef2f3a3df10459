"""Keyed fingerprints of the values a de-identification removed, and a scanner that
finds them again in any text.

A run's proof must not hold the values it looks for: a worker turns each removed
value into a :class:`Fingerprint` under a key made for the run alone (it never
leaves the run's memory), and only fingerprints travel to the client. The
scanner finds them in output text without the values:

- a polynomial hash over code points, with a secret odd base modulo 2**64, is
  computed for every window of a text at once (prefix sums, vectorised), and
  a bitmap of the fingerprints' first four characters keeps only the few
  positions worth a look;
- each window whose hash matches is confirmed by an HMAC-SHA256 of its text,
  and must stand alone: no ASCII letter or digit right before or after it.

Matching is case-insensitive (both sides case-folded), and a byte string is read
as Latin-1, as UTF-8 when it holds multi-byte sequences, and as UTF-16 in both
byte orders when it holds two-byte text.
"""

from __future__ import annotations

import functools
import hashlib
import hmac
import os
import re
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from typing import Literal, NamedTuple

import numpy as np

from dicomflow.anonymize.values import DUMMIES

Kind = Literal["name", "id", "uid", "date", "text"]
# Names, identifiers and UIDs of 8 characters or more identify wherever they appear;
# dates, free text and shorter names or identifiers ("TEXT", "DOE") identify beside
# their own study only (another patient's shifted date, a word, may equal them).
ANYWHERE: frozenset[str] = frozenset({"name", "id", "uid"})
ANYWHERE_MIN = 8
MAX_CHARS = 64  # longer values are looked for by their first 64 characters
PREFIX = 4  # shorter values are too common to look for (counted as unchecked)
MIN_DIGITS = 6  # a value without letters needs this many characters (dates have 8)
STANDARD_UID_ROOT = "1.2.840.10008."  # SOP classes, transfer syntaxes, coding schemes
BITMAP_BITS = 22
CHUNK = 1 << 20  # characters scanned at once
_MOD_SHIFT = np.uint64(64 - BITMAP_BITS)
# Dummies and the placeholders other de-identifiers leave: they identify no one.
PLACEHOLDERS = (
    *("anon", "anonymous", "anonymized", "anonymised", "deidentified", "de-identified"),
    *("removed", "unknown", "none", "null", "n/a", "redacted", "masked", "xxxx"),
)
_NOT_IDENTIFYING = frozenset(
    [str(v).casefold() for v in DUMMIES.values() if isinstance(v, str)] + list(PLACEHOLDERS)
)
_UTF16_TEXT = re.compile(rb"(?:[\x20-\x7e]\x00){4}|(?:\x00[\x20-\x7e]){4}")


class Fingerprint(NamedTuple):
    """One removed value, without the value: its kind, length in characters, window
    hash, the hash of its first four characters, its HMAC, its (pseudonymous) study
    and whether it is whole (not cut to :data:`MAX_CHARS`)."""

    kind: str
    length: int
    window: int
    prefix: int
    mac: bytes
    study: str
    whole: bool


def anywhere(fp: Fingerprint) -> bool:
    """Whether ``fp`` identifies wherever it appears (else only beside its study)."""
    return fp.kind in ANYWHERE and fp.length >= ANYWHERE_MIN


class Hit(NamedTuple):
    """Where a fingerprint was found in a text, and which ones (same text, several
    instances or kinds)."""

    start: int
    fingerprints: tuple[Fingerprint, ...]


@dataclass(frozen=True)
class ProofKey:
    """A key made for one run: it hashes removed values and is never written."""

    value: bytes = field(repr=False)

    @classmethod
    def new(cls) -> ProofKey:
        return cls(os.urandom(32))

    def __repr__(self) -> str:
        return "ProofKey(<hidden>)"

    @functools.cached_property
    def base(self) -> int:
        """The odd hash base (odd, so it has an inverse modulo 2**64)."""
        digest = hmac.new(self.value, b"window-base", hashlib.sha256).digest()
        return int.from_bytes(digest[:8], "little") | 1

    @functools.cached_property
    def inverse(self) -> int:
        return pow(self.base, -1, 1 << 64)

    def mac(self, text: str) -> bytes:
        """The keyed digest that confirms a match."""
        data = text.encode("utf-8", "surrogatepass")
        return hmac.new(self.value, data, hashlib.sha256).digest()[:16]

    def window(self, text: str) -> int:
        """The window hash of ``text``: the sum of its code points times base**-k."""
        total, power, mask = 0, 1, (1 << 64) - 1
        for char in text:
            total = (total + ord(char) * power) & mask
            power = (power * self.inverse) & mask
        return total


ID_SUFFIXES = ("ID", "IDs", "Number", "Numbers", "Identifier")
TEXT_VRS = frozenset({"LO", "SH", "LT", "ST", "UT", "UC"})


def kind_of(vr: str, keyword: str) -> str | None:
    """What a removed value of ``vr`` in the attribute ``keyword`` is, for the proof;
    None for values that identify no one by themselves (codes, numbers, times)."""
    if vr == "PN":
        return "name"
    if vr == "UI":
        return "uid"
    if vr in ("DA", "DT"):
        return "date"
    if vr == "AE" or (vr in ("LO", "SH") and keyword.endswith(ID_SUFFIXES)):
        return "id"
    if vr in TEXT_VRS:
        return "text"
    return None


def looked_for(value: str) -> str | None:
    """``value`` as the scanner looks for it (case-folded, trimmed, cut to
    :data:`MAX_CHARS`), or None when it is too short or too common to identify
    (a dummy, a UID the standard defines)."""
    text = value.strip("\x00 ").casefold()
    if text in _NOT_IDENTIFYING or text.startswith(STANDARD_UID_ROOT):
        return None
    letters = any(c.isalpha() for c in text)
    if len(text) < (PREFIX if letters else MIN_DIGITS):
        return None
    return text


def _one_word(text: str) -> bool:
    return len(text.split()) == 1 and not any(c.isdigit() for c in text)


def forms(kind: str, value: str) -> list[str]:
    """The spellings of one value worth looking for: a person name also with its
    component separators as spaces (``DOE^JOHN`` as ``DOE JOHN``)."""
    found = [value.strip("\x00 ").rstrip("^")]
    if kind == "name":
        spaced = " ".join(value.replace("^", " ").replace("=", " ").split())
        if spaced and spaced not in found:
            found.append(spaced)
    return found


def fingerprints(
    key: ProofKey, removed: Iterable[tuple[str, str]], study: str
) -> tuple[list[Fingerprint], int]:
    """The fingerprints of ``(kind, value)`` pairs removed from one instance of
    ``study``, and how many values were too short or too common to look for."""
    made: dict[bytes, Fingerprint] = {}
    unchecked = 0
    for kind, value in removed:
        for spelling in forms(kind, value):
            text = looked_for(spelling)
            if text is not None and kind == "text" and _one_word(text):
                text = None  # a lone word ("pixels", "liver") identifies no one
            if text is None:
                unchecked += 1
                continue
            whole = len(text) <= MAX_CHARS
            text = text[:MAX_CHARS]
            mac = key.mac(text)
            made.setdefault(
                mac + kind.encode(),
                Fingerprint(
                    kind, len(text), key.window(text), key.window(text[:PREFIX]), mac, study, whole
                ),
            )
    return list(made.values()), unchecked


def readings(blob: bytes, *, utf16: bool = True) -> Iterator[str]:
    """The texts ``blob`` may hold, case-folded: Latin-1 (every byte as itself, so
    ASCII whatever the encoding), UTF-8 when it is not all ASCII, and (with ``utf16``)
    UTF-16 little- and big-endian when it holds runs of two-byte ASCII."""
    yield blob.decode("latin-1").casefold()
    if not blob.isascii():
        yield blob.decode("utf-8", "replace").casefold()
    if utf16 and b"\x00" in blob and _UTF16_TEXT.search(blob):
        yield blob.decode("utf-16-le", "replace").casefold()
        # Big-endian text read one byte in, as little-endian; its last unit completed.
        yield (blob[1:] + b"\x00").decode("utf-16-le", "replace").casefold()


class Scanner:
    """Finds :class:`Fingerprint` s in texts (see the module's description)."""

    def __init__(self, key: ProofKey, prints: Iterable[Fingerprint]) -> None:
        self.key = key
        self._by_mac: dict[bytes, list[Fingerprint]] = {}
        windows: dict[int, set[int]] = {}
        self._bitmap = np.zeros(1 << BITMAP_BITS, dtype=bool)
        for fp in prints:
            self._by_mac.setdefault(fp.mac, []).append(fp)
            windows.setdefault(fp.length, set()).add(fp.window)
            self._bitmap[fp.prefix >> (64 - BITMAP_BITS)] = True
        self._windows = {n: np.array(sorted(w), dtype=np.uint64) for n, w in windows.items()}
        self._longest = max(self._windows, default=0)

    def __len__(self) -> int:
        return len(self._by_mac)

    def find(self, text: str, *, alone: bool = True) -> list[Hit]:
        """Every confirmed occurrence in ``text`` (already case-folded); with ``alone``,
        only those standing alone (see the module's description)."""
        if not self._windows or len(text) < PREFIX:
            return []
        points = np.frombuffer(text.encode("utf-32-le", "surrogatepass"), dtype="<u4")
        hits: list[Hit] = []
        for start in range(0, len(points), CHUNK):
            piece = points[start : start + CHUNK + self._longest].astype(np.uint64)
            last = len(points) - start <= CHUNK
            hits.extend(self._find_in(text, piece, start, last, alone))
        return hits

    def _find_in(
        self, text: str, piece: np.ndarray, offset: int, last: bool, alone: bool
    ) -> list[Hit]:
        size = len(piece)
        inverse_powers, powers = _powers(self.key.inverse, self.key.base)
        sums = np.zeros(size + 1, dtype=np.uint64)
        np.cumsum(piece * inverse_powers[:size], out=sums[1:])
        starts = np.arange(size - PREFIX + 1)
        prefixes = (sums[PREFIX:] - sums[:-PREFIX]) * powers[: size - PREFIX + 1]
        candidates = starts[self._bitmap[prefixes >> _MOD_SHIFT]]
        if not last:
            candidates = candidates[candidates < CHUNK]
        hits = []
        for length, windows in self._windows.items():
            at = candidates[candidates + length <= size]
            if not len(at):
                continue
            values = (sums[at + length] - sums[at]) * powers[at]
            slots = np.minimum(np.searchsorted(windows, values), len(windows) - 1)
            for s in at[windows[slots] == values]:
                hit = self._confirm(text, offset + int(s), length, alone)
                if hit is not None:
                    hits.append(hit)
        return hits

    def _confirm(self, text: str, start: int, length: int, alone: bool) -> Hit | None:
        found = self._by_mac.get(self.key.mac(text[start : start + length]))
        if found and not alone:
            return Hit(start, tuple(found))
        if not found or (start > 0 and _word_character(text[start - 1])):
            return None
        end = start + length
        after_alone = end >= len(text) or not _word_character(text[end])
        kept = tuple(fp for fp in found if after_alone or not fp.whole)
        return Hit(start, kept) if kept else None


def _word_character(char: str) -> bool:
    """An ASCII letter or digit: what a value may not touch to stand alone (binary
    bytes beside a DICOM value read as Latin-1 letters, 'þÿ', and must not count)."""
    return char.isascii() and char.isalnum()


@functools.lru_cache(maxsize=2)
def _powers(inverse: int, base: int) -> tuple[np.ndarray, np.ndarray]:
    """inverse**k and base**k for every position of a chunk, modulo 2**64 (numpy's
    uint64 arithmetic wraps)."""
    size = CHUNK + MAX_CHARS
    inverse_powers = np.full(size, inverse, dtype=np.uint64)
    inverse_powers[0] = 1
    powers = np.full(size, base, dtype=np.uint64)
    powers[0] = 1
    return np.cumprod(inverse_powers), np.cumprod(powers)
