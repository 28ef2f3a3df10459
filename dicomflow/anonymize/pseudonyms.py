"""Keyed pseudonyms: the same key gives the same values on every worker and in every run.

Everything is derived with HMAC-SHA256 from the key and the original value, so
no shared state (no lookup table, no counter) is needed across the cluster, and
outputs made with different keys cannot be linked.
"""

from __future__ import annotations

import base64
import dataclasses
import hashlib
import hmac
from dataclasses import dataclass, field
from datetime import datetime, timedelta

from dicomflow.anonymize.keys import SecretKey
from dicomflow.records import SourceRef

MAX_DAY_SHIFT = 3650  # dates move back by 1..3650 days, per patient
SECONDS_PER_DAY = 86_400


@dataclass(frozen=True)
class Pseudonymizer:
    """Derive UIDs, identifiers, names and date offsets from a :class:`SecretKey`."""

    key: SecretKey = field(repr=False)

    def digest(self, purpose: str, value: str) -> bytes:
        return hmac.new(
            self.key.value, f"{purpose}\0{value}".encode("utf-8", "surrogateescape"), hashlib.sha256
        ).digest()

    def uid(self, original: str) -> str:
        """A ``2.25.<integer>`` UID (at most 44 characters) derived from ``original``."""
        number = int.from_bytes(self.digest("uid", original.strip("\x00 "))[:16], "big")
        return f"2.25.{number}"

    def token(self, purpose: str, value: str, length: int = 16) -> str:
        """An upper-case base-32 token (letters and digits) for identifiers."""
        text = base64.b32encode(self.digest(purpose, value)).decode("ascii")
        return text[:length]

    def patient_id(self, original: str) -> str:
        return "ANON" + self.token("patient-id", original.strip(), 12)

    def patient_name(self, patient_key: str) -> str:
        """A person name (``ANON^<token>``) derived from the patient, not from the name."""
        return "ANON^" + self.token("patient-name", patient_key.strip(), 12)

    def input_id(self, source_url: str) -> str:
        """A pseudonymous identifier for an input file (its name may carry PHI)."""
        return "deid://" + self.digest("source", source_url).hex()[:32]

    def labelled(self, ref: SourceRef) -> SourceRef:
        """``ref`` shown by its pseudonymous identifier instead of its URL."""
        return dataclasses.replace(ref, label=self.input_id(ref.url))

    def day_shift(self, patient_key: str) -> int:
        """Days to add to this patient's dates: negative, never zero."""
        number = int.from_bytes(self.digest("date-shift", patient_key.strip())[:8], "big")
        return -(1 + number % MAX_DAY_SHIFT)

    def second_shift(self, patient_key: str) -> int:
        """Seconds to add to this patient's times (modulo a day), never zero."""
        number = int.from_bytes(self.digest("time-shift", patient_key.strip())[:8], "big")
        return 1 + number % (SECONDS_PER_DAY - 1)


def shift_da(value: str, days: int) -> str:
    """Shift a DA value (``YYYYMMDD``, ACR-NEMA ``YYYY.MM.DD``, or a range) by ``days``.

    A value that is not a date cannot be shifted, so it is emptied: nothing of
    the original survives.
    """
    if "-" in value:
        return "-".join(shift_da(part, days) if part else "" for part in value.split("-"))
    text = value.strip().replace(".", "")
    try:
        parsed = datetime.strptime(text[:8], "%Y%m%d").date()
    except ValueError:
        return ""
    return (parsed + timedelta(days=days)).strftime("%Y%m%d")


def seconds_of_day(value: str) -> int | None:
    """The whole seconds since midnight a TM value names (None if it is not a time)."""
    digits = value.strip().partition(".")[0].replace(":", "")
    if not digits.isdigit() or len(digits) < 2:
        return None
    hours = int(digits[0:2])
    minutes = int(digits[2:4]) if len(digits) >= 4 else 0
    secs = int(digits[4:6]) if len(digits) >= 6 else 0
    return hours * 3600 + minutes * 60 + min(secs, 59)


def shift_tm(value: str, seconds: int) -> str:
    """Shift a TM value by ``seconds`` modulo one day, keeping its precision."""
    text = value.strip()
    if not text:
        return text
    start = seconds_of_day(text)
    if start is None:
        return ""  # not a time: emptied rather than kept
    digits, _, fraction = text.partition(".")
    digits = digits.replace(":", "")
    total = (start + seconds) % SECONDS_PER_DAY
    h, rest = divmod(total, 3600)
    m, s = divmod(rest, 60)
    shifted = f"{h:02d}{m:02d}{s:02d}"[: max(2, len(digits))]
    return f"{shifted}.{fraction}" if fraction else shifted


def shift_dt(value: str, days: int, seconds: int) -> str:
    """Shift a DT value by ``days`` and ``seconds``, keeping its precision and offset."""
    text = value.strip()
    offset = ""
    for sign in "+-":
        if sign in text[4:]:
            cut = text.index(sign, 4)
            text, offset = text[:cut], text[cut:]
    digits, _, fraction = text.partition(".")
    if not digits.isdigit() or len(digits) < 4:
        return ""  # not a date-time: emptied rather than kept
    padded = (digits + "0101000000"[len(digits) - 4 :])[:14] if len(digits) < 14 else digits[:14]
    try:
        moment = datetime.strptime(padded, "%Y%m%d%H%M%S")
    except ValueError:
        return ""
    moment += timedelta(days=days, seconds=seconds)
    shifted = moment.strftime("%Y%m%d%H%M%S")[: len(digits)]
    return shifted + (f".{fraction}" if fraction else "") + offset
