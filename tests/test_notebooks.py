"""The example notebooks run top to bottom (their code cells, in order)."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

from tests.conftest import REPO

NOTEBOOKS = sorted((REPO / "notebooks").glob("*.ipynb"))


@pytest.mark.parametrize("notebook", NOTEBOOKS, ids=[p.name for p in NOTEBOOKS])
def test_notebook_runs(notebook: Path, tmp_path: Path, client: object) -> None:
    cells = json.loads(notebook.read_text())["cells"]
    namespace: dict[str, object] = {}
    cwd = Path.cwd()
    os.chdir(tmp_path)
    try:
        for cell in cells:
            if cell["cell_type"] == "code":
                exec(compile("".join(cell["source"]), str(notebook), "exec"), namespace)
    finally:
        os.chdir(cwd)
    assert namespace["summary"].rows > 0  # type: ignore[attr-defined]
    assert namespace["volume"].ndim >= 3  # type: ignore[attr-defined]
