"""De-identified files are no less conformant than their inputs, by dciodvfy (dicom3tools).

Every file of the shared corpus that de-identifies (in-process, with the
burned-in quarantine off so that ultrasound and screenshots are covered too)
is checked with ``dciodvfy`` before and after. Error messages are compared
once the values that legitimately change (quoted values, UIDs, numbers,
lengths) are masked: the output may lose errors, never gain one.
"""

from __future__ import annotations

import dataclasses
import re
import shutil
import subprocess
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import pytest

from dicomflow.anonymize.config import deidentifier
from dicomflow.anonymize.keys import SecretKey
from dicomflow.anonymize.values import quiet_pydicom
from dicomflow.errors import DicomflowError
from tests.conftest import corpus_files, require

pytestmark = [pytest.mark.integration, pytest.mark.slow]

KEY = SecretKey(b"conformance-test-key-not-secret-0123456789")
TIMEOUT_SECONDS = 60  # per dciodvfy call; a file that takes longer is skipped, with a note
WORKERS = 2

TAG = re.compile(r"\(0x[0-9a-fA-F]{4},0x[0-9a-fA-F]{4}\)")
QUOTED_VALUE = re.compile(r"= <[^>]*>")
BAD_CHARACTER = re.compile(r"= '.' \(0x[0-9a-fA-F]+\)")
HEX_NUMBER = re.compile(r"0x[0-9a-fA-F]+")
# Numbers and UIDs, but not a Type ("Type 1C") or a VM rule ("1-n", "2-2n").
NUMBER = re.compile(r"(?<!Type )(?<![\w.-])\d+(?:\.\d+)*(?![\w-])")
UNREADABLE = "Dicom dataset read failed"


def normalise(line: str) -> str:
    """An error message with the values that de-identification may change masked."""
    tags = TAG.findall(line)
    line = TAG.sub("\0", line)  # element tags are locations, not values: keep them
    line = QUOTED_VALUE.sub("= <>", line)
    line = BAD_CHARACTER.sub("= ''", line)
    line = HEX_NUMBER.sub("#", line)
    line = NUMBER.sub("#", line)
    for tag in tags:
        line = line.replace("\0", tag, 1)
    return " ".join(line.split())


def dciodvfy_errors(path: Path) -> set[str]:
    """The normalised error lines dciodvfy reports for ``path`` (it writes to stderr)."""
    result = subprocess.run(
        ["dciodvfy", str(path)],
        capture_output=True,
        timeout=TIMEOUT_SECONDS,
        check=False,
    )
    text = (result.stderr + result.stdout).decode("utf-8", "replace")
    return {
        normalise(line)
        for line in text.splitlines()
        if line.startswith("Error - ") or " Error - " in line
    }


@dataclass(frozen=True)
class Comparison:
    source: Path
    status: str  # compared | unreadable input | timeout
    new_errors: frozenset[str] = frozenset()


def compare(pair: tuple[Path, Path]) -> Comparison:
    source, output = pair
    try:
        before = dciodvfy_errors(source)
        after = dciodvfy_errors(output)
    except subprocess.TimeoutExpired:
        return Comparison(source, "timeout")
    if any(UNREADABLE in line for line in before):
        # dciodvfy stopped reading the input (deflate, HTJ2K, odd lengths): its IOD checks
        # are incomplete, so "new" errors in the output could not be told from old ones.
        return Comparison(source, "unreadable input")
    return Comparison(source, "compared", frozenset(after - before))


def test_normalise_masks_values_but_keeps_types_tags_and_rules() -> None:
    line = (
        "(0x0010,0x0030) DA Patient's Birth Date Error - Value invalid for this VR - "
        "DA [1] = <99990101> - Character invalid for this VR = '9' (0x39)"
    )
    assert normalise(line) == (
        "(0x0010,0x0030) DA Patient's Birth Date Error - Value invalid for this VR - "
        "DA [#] = <> - Character invalid for this VR = ''"
    )
    assert normalise(
        "Error - Missing attribute Type 1C Conditional Element=<X> Module=<Y>"
    ).endswith("Type 1C Conditional Element=<X> Module=<Y>")
    assert normalise(
        "Error - Bad Sequence number of Items 0 (1-n Required by Module definition)"
    ) == ("Error - Bad Sequence number of Items # (1-n Required by Module definition)")
    uid = "Error - not listed but have IMAGE ReferencedSOPInstanceUID {}"
    assert normalise(uid.format("0")) == normalise(uid.format("2.25.3007188277615015"))
    assert normalise("Error - expected 35660 dec - got 35659 dec - VL is 0x8b4b") == (
        "Error - expected # dec - got # dec - VL is #"
    )


def test_deidentified_corpus_files_gain_no_dciodvfy_errors(corpus: Path, tmp_path: Path) -> None:
    require(shutil.which("dciodvfy") is not None, "dciodvfy (Debian package dicom3tools)")
    engine = dataclasses.replace(deidentifier(key=KEY), quarantine_burned_in=False)
    files = corpus_files()
    pairs: list[tuple[Path, Path]] = []
    not_deidentified: Counter[str] = Counter()
    with quiet_pydicom():  # as the anonymize operator runs it: pydicom warnings quote values
        for index, path in enumerate(files):
            try:
                result = engine.instance(path.read_bytes())
            except DicomflowError as exc:
                not_deidentified[str(exc.code)] += 1
                continue
            output = tmp_path / f"{index:04d}.dcm"
            output.write_bytes(result.data)
            pairs.append((path, output))
    with ThreadPoolExecutor(WORKERS) as pool:
        comparisons = list(pool.map(compare, pairs))
    status = Counter(c.status for c in comparisons)
    print(
        f"dciodvfy compared {status['compared']} de-identified corpus files with their inputs "
        f"(of {len(files)}); skipped: {status['unreadable input']} whose input dciodvfy cannot "
        f"read, {status['timeout']} over {TIMEOUT_SECONDS}s; not de-identified: "
        f"{dict(sorted(not_deidentified.items()))}"
    )
    for comparison in comparisons:
        if comparison.status == "timeout":
            print(f"  timed out: {comparison.source.relative_to(corpus)}")
    assert status["compared"] >= len(files) // 2  # most of the corpus is really compared
    regressions = {
        str(c.source.relative_to(corpus)): sorted(c.new_errors) for c in comparisons if c.new_errors
    }
    report = "\n".join(
        f"{name}:\n" + "\n".join(f"    {error}" for error in errors)
        for name, errors in sorted(regressions.items())
    )
    assert not regressions, (
        f"{len(regressions)} of {status['compared']} files gained dciodvfy errors:\n{report}"
    )
