"""Our DICOM JSON against DCMTK's ``dcm2json``, a second, independent implementation.

Compared: the set of tags at every level, each element's VR, and every value
except binary data (DCMTK inlines all of it; we move large values to bulk data
URIs). Where the two legitimately differ in *representation*, values are
normalised before comparing:

* DCMTK transcodes text to UTF-8 and rewrites Specific Character Set to
  ``ISO_IR 192``, so that element is skipped;
* DCMTK trims trailing empty person-name components (``OB^^^^`` → ``OB``) and
  drops values that are only empty components; we keep them as written, like
  pydicom;
* trailing spaces inside multi-valued strings are padding: DCMTK trims them,
  pydicom (and so we) keep them;
* DCMTK prints FL with 9 significant digits; we print the exact float32 value;
* for implicit-VR private tags the VR is a dictionary guess and the two
  dictionaries differ; and where a file says ``UN`` for a known public tag,
  pydicom (which we follow) uses the dictionary VR while DCMTK keeps ``UN``.
"""

from __future__ import annotations

import json
import math
import shutil
import subprocess
from pathlib import Path
from typing import Any

import pytest

from tests.conftest import CORPUS, corpus_manifest, require
from tests.helpers import flatten_path, stored_json

BINARY = {"OB", "OW", "OF", "OD", "OL", "OV", "UN"}
# Group lengths (DCMTK drops them), Specific Character Set (DCMTK rewrites it),
# Pixel Data at any level (removed with dcmodify first), trailing padding (DCMTK drops it).
SKIPPED_TAGS = {"00080005", "7FE00010", "FFFCFFFC"}


def _dcmtk_json(path: Path, scratch: Path) -> dict[str, Any] | None:
    """dcm2json's view, after DCMTK's dcmodify removed Pixel Data (dcm2json refuses to
    inline compressed pixel data, and we never inline pixel data anyway)."""
    copy = scratch / "copy.dcm"
    shutil.copyfile(path, copy)
    subprocess.run(
        ["dcmodify", "-nb", "-imt", "-ie", "-ea", "(7fe0,0010)", str(copy)],
        capture_output=True,
        timeout=60,
        check=False,
    )
    result = subprocess.run(["dcm2json", "-fc", str(copy)], capture_output=True, timeout=60)
    if result.returncode != 0 or not result.stdout.strip():
        return None
    try:
        return json.loads(result.stdout.decode("utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError):
        return None


def _same_value(ours: Any, theirs: Any, vr: str) -> bool:
    tolerance = 1e-6 if vr == "FL" else 1e-12
    if isinstance(ours, float | int) and isinstance(theirs, float | int):
        return math.isclose(ours, theirs, rel_tol=tolerance, abs_tol=1e-12)
    if isinstance(theirs, str) and isinstance(ours, int | float):
        try:
            return math.isclose(ours, float(theirs), rel_tol=1e-12)
        except ValueError:
            return False
    return ours == theirs


def _normalise(element: dict) -> list[Any]:
    values = element.get("Value", [])
    if element["vr"] == "PN":
        values = [{k: g.rstrip("^") for k, g in (v or {}).items() if g.rstrip("^")} for v in values]
        values = [v or None for v in values]
    # Trailing spaces are padding, not data (PS3.5 6.2); pydicom keeps them inside
    # multi-valued strings (``DERIVED \\PRIMARY``), DCMTK trims them.
    values = [v.rstrip(" ") if isinstance(v, str) else v for v in values]
    return [] if all(v in (None, "") for v in values) else values


def _differences(ours: dict, theirs: dict, path: str = "") -> list[str]:
    problems = []
    for key in sorted(set(ours) | set(theirs)):
        where = f"{path}{key}"
        if key.endswith("0000") or key in SKIPPED_TAGS:
            continue
        if key not in theirs or key not in ours:
            problems.append(f"{where} only in {'ours' if key in ours else 'dcm2json'}")
            continue
        a, b = ours[key], theirs[key]
        private = int(key[-8:-4], 16) % 2 == 1
        if a["vr"] != b["vr"] and not (private or "UN" in (a["vr"], b["vr"])):
            problems.append(f"{where} vr {a['vr']} != {b['vr']}")
            continue
        if a["vr"] != b["vr"] or a["vr"] in BINARY:
            continue
        if "BulkDataURI" in a or "InlineBinary" in a:
            problems.append(f"{where} {a['vr']} value stored as binary")
            continue
        if a["vr"] == "SQ":
            items_a, items_b = a.get("Value", []), b.get("Value", [])
            if len(items_a) != len(items_b):
                problems.append(f"{where} items {len(items_a)} != {len(items_b)}")
                continue
            for i, (x, y) in enumerate(zip(items_a, items_b, strict=True)):
                problems += _differences(x, y, f"{where}/{i}/")
            continue
        values_a, values_b = _normalise(a), _normalise(b)
        if len(values_a) != len(values_b) or not all(
            _same_value(x, y, a["vr"]) for x, y in zip(values_a, values_b, strict=True)
        ):
            problems.append(f"{where} {a['vr']} value differs")
    return problems


def _files() -> list[Path]:
    rows = [r for r in corpus_manifest() if "MALFORMED" not in r["notes"]]
    return [CORPUS / r["relative_path"] for r in rows]


FILES = _files()


@pytest.mark.integration
@pytest.mark.parametrize(
    "path", FILES or [None], ids=[str(p.relative_to(CORPUS)) for p in FILES] or ["none"]
)
def test_dicom_json_matches_dcm2json(path: Path | None, tmp_path: Path) -> None:
    require(shutil.which("dcm2json") is not None, "DCMTK's dcm2json (Debian package dcmtk)")
    require(path is not None and path.exists(), "the shared corpus")
    assert path is not None
    theirs = _dcmtk_json(path, tmp_path)
    if theirs is None:
        pytest.skip("dcm2json cannot convert this file")
    row, error = flatten_path(path)
    assert error is None, error
    assert _differences(stored_json(row), theirs) == []
