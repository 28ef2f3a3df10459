"""Replacement values: dummies valid for each VR, and cleaned free text.

A *dummy* (action D) is a fixed value valid for the VR. A *cleaned* text
(action C on descriptors) keeps only words from a vocabulary of common imaging
terms, so "CT CHEST W CONTRAST" survives while names, numbers and anything
else unknown do not.
"""

from __future__ import annotations

import logging
import re
import warnings
from collections.abc import Iterator
from contextlib import contextmanager
from functools import cache
from importlib import resources
from pathlib import Path
from typing import Any

from pydicom import config as pydicom_config

from dicomflow.errors import ConfigError

DUMMY_TEXT = "ANONYMIZED"
DUMMIES: dict[str, Any] = {
    "AE": "ANONYMOUS",
    "AS": "000D",
    "CS": DUMMY_TEXT,
    "DA": "19000101",
    "DS": "0",
    "DT": "19000101000000",
    "IS": "0",
    "LO": DUMMY_TEXT,
    "LT": DUMMY_TEXT,
    "PN": DUMMY_TEXT,
    "SH": DUMMY_TEXT,
    "ST": DUMMY_TEXT,
    "TM": "000000",
    "UC": DUMMY_TEXT,
    "UR": "https://anonymized.invalid/",
    "UT": DUMMY_TEXT,
    "US": 0,
    "SS": 0,
    "UL": 0,
    "SL": 0,
    "UV": 0,
    "SV": 0,
    "FL": 0.0,
    "FD": 0.0,
    "AT": 0,
}
BINARY_VRS = frozenset({"OB", "OW", "OD", "OF", "OL", "OV", "UN"})
STRING_VRS = frozenset(
    {"AE", "AS", "CS", "DA", "DS", "DT", "IS", "LO", "LT", "PN", "SH", "ST", "TM", "UC", "UI"}
    | {"UR", "UT"}
)
FREE_TEXT_VRS = frozenset({"PN", "LO", "SH", "ST", "LT", "UT", "UC"})
# What a dummied sequence dummies in its items: all text but enumerated values (CS).
DUMMIED_VRS = FREE_TEXT_VRS | {"AE", "AS", "DA", "DT", "TM", "UR"}
VOCABULARY_FILE = "clean_vocabulary.txt"
_WORD = re.compile(r"[A-Za-z0-9]+")


def dummy_value(vr: str) -> Any:
    """A dummy value valid for ``vr`` (binary VRs get two zero bytes)."""
    if vr in BINARY_VRS:
        return b"\x00\x00"
    if vr not in DUMMIES:
        raise ValueError(f"no dummy value for VR {vr}")
    return DUMMIES[vr]


def empty_value(vr: str) -> Any:
    """A zero-length value for ``vr``."""
    if vr in BINARY_VRS:
        return b""
    if vr in STRING_VRS:
        return ""
    return None


@cache
def default_vocabulary() -> frozenset[str]:
    """The shipped vocabulary of words that identify no one (upper case)."""
    text = resources.files("dicomflow.anonymize").joinpath("data", VOCABULARY_FILE).read_text()
    return _words(text)


def load_vocabulary(path: str) -> frozenset[str]:
    """Extra words from a project file (whitespace-separated, ``#`` starts a comment)."""
    try:
        with Path(path).open(encoding="utf-8") as fp:
            return _words(fp.read())
    except OSError as exc:
        raise ConfigError(f"cannot read the vocabulary file ({type(exc).__name__})") from None


def _words(text: str) -> frozenset[str]:
    lines = (line.split("#", 1)[0] for line in text.splitlines())
    return frozenset(word.upper() for line in lines for word in line.split())


def clean_text(value: str, vocabulary: frozenset[str]) -> str:
    """Keep only the words of ``value`` found in ``vocabulary`` (upper case), space-joined."""
    return " ".join(w for w in _WORD.findall(value) if w.upper() in vocabulary)


@contextmanager
def quiet_pydicom() -> Iterator[None]:
    """Silence pydicom while de-identifying: its warnings and log lines quote values.

    Validation is switched off for reading and writing (a value kept as it was
    must not fail the write), and restored afterwards.
    """
    settings = pydicom_config.settings
    previous = settings.reading_validation_mode, settings.writing_validation_mode
    pydicom_logger = logging.getLogger("pydicom")
    was_disabled = pydicom_logger.disabled
    settings.reading_validation_mode = pydicom_config.IGNORE
    settings.writing_validation_mode = pydicom_config.IGNORE
    pydicom_logger.disabled = True
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            yield
    finally:
        settings.reading_validation_mode, settings.writing_validation_mode = previous
        pydicom_logger.disabled = was_disabled
