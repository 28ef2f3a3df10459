"""The codebase keeps its lint and typing clean (ruff with a broad rule set, mypy)."""

from __future__ import annotations

import subprocess
import sys

from tests.conftest import REPO


def _run(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", *args], cwd=REPO, capture_output=True, text=True, timeout=600
    )


def test_ruff() -> None:
    result = _run("ruff", "check", "dicomflow", "tests", "benchmarks", "examples")
    assert result.returncode == 0, result.stdout


def test_mypy() -> None:
    result = _run("mypy", "dicomflow")
    assert result.returncode == 0, result.stdout
