"""The atheris harness for the fast header reader runs for a bounded time and finds no
crash (``make fuzz`` runs it ten minutes)."""

from __future__ import annotations

import importlib.util
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from tests.conftest import require
from tests.fuzz.campaign import seeds

pytestmark = pytest.mark.integration

HARNESS = Path(__file__).with_name("header_harness.py")
SECONDS = 20


def test_the_header_reader_survives_coverage_guided_fuzzing(tmp_path: Path) -> None:
    require(importlib.util.find_spec("atheris") is not None, "atheris (dev extra, Linux x86-64)")
    small = [p for p in seeds() if p.stat().st_size <= 20_000][:40]
    require(len(small) >= 10, "the shared corpus beside the checkout (../shared/corpus)")
    corpus = tmp_path / "seeds"  # libFuzzer adds what it finds here
    corpus.mkdir()
    for number, path in enumerate(small):
        shutil.copy(path, corpus / f"{number:03d}.dcm")
    result = subprocess.run(
        [
            sys.executable,
            str(HARNESS),
            str(corpus),
            f"-max_total_time={SECONDS}",
            "-rss_limit_mb=2048",
            "-timeout=10",
            "-seed=20261206",
        ],
        cwd=tmp_path,  # crash inputs are written here
        capture_output=True,
        text=True,
        timeout=SECONDS * 6,
    )
    crashes = sorted(p.name for p in tmp_path.glob("crash-*")) + sorted(
        p.name for p in tmp_path.glob("timeout-*")
    )
    assert result.returncode == 0 and not crashes, (crashes, result.stderr[-3000:])
    assert "Done" in result.stderr
