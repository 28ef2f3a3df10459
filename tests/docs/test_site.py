"""The documentation site builds with warnings as errors, its API reference included."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

from tests.conftest import REPO


def test_site_builds_strictly(tmp_path: Path) -> None:
    env = {**os.environ, "NO_MKDOCS_2_WARNING": "1"}
    result = subprocess.run(
        [sys.executable, "-m", "mkdocs", "build", "--strict", "--site-dir", str(tmp_path)],
        cwd=REPO,
        capture_output=True,
        text=True,
        env=env,
        check=False,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    api = (tmp_path / "reference" / "api" / "index.html").read_text()
    for name in ("ingest", "read_lake", "open_series", "view_series", "contact_sheet"):
        assert f"dicomflow.api.{name}" in api, name
    for page in (
        "getting-started",
        "lake",
        "operators",
        "connectors",
        "pipelines",
        "deidentification",
        "benchmarks",
    ):
        assert (tmp_path / page / "index.html").exists(), page
