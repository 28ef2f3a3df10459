"""Derive ``dicomflow/anonymize/data/iod_requirements.json`` from dciodvfy's verdicts.

No machine-readable PS3.3 module tables are available here, so the IOD
requirements for the attributes whose PS3.15 Table E.1-1 action depends on
them (the combined codes ``X/Z``, ``X/D``, ``X/Z/D``, ``X/Z/U*`` and ``Z/D``)
are measured: every file of the corpus is written once with all those
attributes removed at every depth, and each "Missing attribute Type 1/2..."
error that ``dciodvfy`` (dicom3tools) reports for the stripped file but not
for the original one records that the file's SOP Class requires that
attribute. Conditional types (1C, 2C) whose condition holds count as 1 and 2.

Run: ``.venv/bin/python -m tests.anonymize.derive_iod_requirements [corpus]``.
The entries taken from the PS3.3 text by hand (``"source": "PS3.3"``) are kept.
"""

from __future__ import annotations

import json
import re
import subprocess
import sys
import tempfile
from collections import defaultdict
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pydicom
from pydicom.datadict import tag_for_keyword
from pydicom.dataset import Dataset

from tests.anonymize.oracle import COMPOUND_CODES, TABLE_PATH, read_table

REQUIREMENTS_PATH = TABLE_PATH.parent / "iod_requirements.json"
DEFAULT_CORPUS = Path("/work/shared/corpus")
MISSING = re.compile(r"Error - Missing attribute Type ([12])C? \S+ Element=<(\w+)> Module=<(\w+)>")
# The Common Instance Reference Module lists instances that must be referenced elsewhere:
# stripping the references (X/Z/U* sequences) breaks it, so those the file holds are needed.
UNREFERENCED = "ReferencedSeriesSequence present but Instance does not reference Instances"


def compound_tags() -> frozenset[int]:
    """The single-tag rows whose basic action is a combined code."""
    return frozenset(
        int(row["id"], 16)
        for row in read_table()["rows"]
        if row["basicProfile"] in COMPOUND_CODES and re.fullmatch(r"[0-9A-Fa-f]{8}", row["id"])
    )


def strip(ds: Dataset, tags: frozenset[int]) -> None:
    """Remove ``tags`` from ``ds`` and every nested item."""
    for elem in list(ds):
        if int(elem.tag) in tags:
            del ds[elem.tag]
        elif elem.VR == "SQ":
            for item in elem.value or ():
                strip(item, tags)


def missing(path: Path) -> set[tuple[str, str, str]]:
    """(type, keyword, module) of every missing required attribute dciodvfy reports
    (("1", "", "CommonInstanceReference") when listed instances lost their references)."""
    result = subprocess.run(["dciodvfy", str(path)], capture_output=True, timeout=120, check=False)
    text = (result.stderr + result.stdout).decode("utf-8", "replace")
    found = {m.groups() for m in MISSING.finditer(text)}
    if UNREFERENCED in text:
        found.add(("1", "", "CommonInstanceReference"))
    return found


def verdicts(path: Path, tags: frozenset[int], scratch: Path) -> tuple[str, set[tuple[str, ...]]]:
    """The SOP Class of ``path`` and what its IOD requires among ``tags``."""
    try:
        ds = pydicom.dcmread(path, force=True)
        sop_class = str(ds.get("SOPClassUID", "") or "")
        references = {
            (keyword, "CommonInstanceReference")
            for keyword in ("ReferencedImageSequence", "SourceImageSequence")
            if keyword in ds
        }
        strip(ds, tags)
        out = scratch / (path.name + ".stripped.dcm")
        ds.save_as(out)
    except Exception:  # an unreadable or unwritable corpus file tells nothing
        return "", set()
    found = missing(out) - missing(path)
    out.unlink()
    if ("1", "", "CommonInstanceReference") in found:
        found |= {("1", keyword, module) for keyword, module in references}
    return sop_class, {f for f in found if int(tag_for_keyword(f[1]) or 0) in tags}


def main(corpus: Path) -> None:
    tags = compound_tags()
    files = sorted(p for p in corpus.rglob("*") if p.is_file() and p.name != "MANIFEST.tsv")
    required: dict[tuple[str, int], tuple[str, str, str]] = {}
    counts: dict[str, int] = defaultdict(int)
    with tempfile.TemporaryDirectory() as tmp, ThreadPoolExecutor(2) as pool:
        for sop_class, found in pool.map(lambda p: verdicts(p, tags, Path(tmp)), files):
            if not sop_class:
                continue
            counts[sop_class] += 1
            for kind, keyword, module in found:
                key = (sop_class, int(tag_for_keyword(keyword) or 0))
                old = required.get(key)
                if old is None or kind < old[0]:  # Type 1 somewhere wins over Type 2
                    required[key] = (kind, keyword, module)
    doc = json.loads(REQUIREMENTS_PATH.read_text())
    kept = [r for r in doc["requirements"] if r.get("source") == "PS3.3"]
    derived = [
        {
            "sop_class": sop_class,
            "tag": f"{tag:08X}",
            "type": kind,
            "source": "dciodvfy",
            "why": f"{keyword}, {module} Module",
        }
        for (sop_class, tag), (kind, keyword, module) in sorted(required.items())
    ]
    doc["requirements"] = kept + derived
    REQUIREMENTS_PATH.write_text(json.dumps(doc, indent=1) + "\n")
    print(f"{len(files)} files, {len(counts)} SOP Classes, {len(derived)} derived requirements")


if __name__ == "__main__":
    main(Path(sys.argv[1]) if len(sys.argv) > 1 else DEFAULT_CORPUS)
