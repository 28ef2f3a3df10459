"""The notebooks run top to bottom on a real Jupyter kernel, and are committed clean.

Each notebook runs in a fresh IPython kernel of this environment (nbclient), in a
temporary working directory, so what it writes (its lake) stays out of the
repository. A failing cell fails the test with the cell and its traceback.
"""

from __future__ import annotations

import json
import os
import sys
import time
from pathlib import Path

import nbformat
import pytest
from nbclient import NotebookClient

from tests.conftest import CORPUS, REPO, require
from tests.peers.orthanc import orthanc_binary

NOTEBOOKS = sorted((REPO / "notebooks").glob("*.ipynb"))
KERNEL = "dicomflow-tests"
CELL_TIMEOUT = 240  # seconds for any one cell; whole notebooks take 5-40 s here
NEEDS_ORTHANC = {"cohort_extraction.ipynb"}
NEEDS_CORPUS = {"analytics.ipynb"}


@pytest.fixture(scope="module")
def kernel_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A kernelspec for this interpreter, so the notebooks run against this environment
    whatever kernels the machine has installed."""
    root = tmp_path_factory.mktemp("jupyter")
    spec = root / "kernels" / KERNEL
    spec.mkdir(parents=True)
    argv = [sys.executable, "-m", "ipykernel_launcher", "-f", "{connection_file}"]
    spec.joinpath("kernel.json").write_text(
        json.dumps({"argv": argv, "display_name": "dicomflow tests", "language": "python"})
    )
    return root


def test_there_are_the_four_notebooks() -> None:
    names = {p.name for p in NOTEBOOKS}
    assert {
        "quickstart.ipynb",
        "cohort_extraction.ipynb",
        "analytics.ipynb",
        "ml_preparation.ipynb",
    } <= names


@pytest.mark.parametrize("notebook", NOTEBOOKS, ids=[p.name for p in NOTEBOOKS])
def test_notebook_is_committed_without_outputs(notebook: Path) -> None:
    nb = nbformat.read(notebook, as_version=4)
    nbformat.validate(nb)
    for cell in nb.cells:
        if cell.cell_type == "code":
            assert cell.outputs == [] and cell.execution_count is None, cell.source[:60]


@pytest.mark.integration
@pytest.mark.slow
@pytest.mark.parametrize("notebook", NOTEBOOKS, ids=[p.name for p in NOTEBOOKS])
def test_notebook_runs_on_a_kernel(
    notebook: Path, tmp_path: Path, kernel_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    if notebook.name in NEEDS_ORTHANC:
        require(orthanc_binary() is not None, "Orthanc (for the cohort extraction notebook)")
    if notebook.name in NEEDS_CORPUS:
        require(CORPUS.exists(), f"the shared corpus at {CORPUS}")
    monkeypatch.setenv("JUPYTER_PATH", str(kernel_dir))
    monkeypatch.setenv("JUPYTER_PLATFORM_DIRS", "1")
    monkeypatch.setenv("DICOMFLOW_CORPUS", str(CORPUS))
    monkeypatch.setenv("PYDEVD_DISABLE_FILE_VALIDATION", "1")
    nb = nbformat.read(notebook, as_version=4)
    client = NotebookClient(
        nb,
        kernel_name=KERNEL,
        timeout=CELL_TIMEOUT,
        resources={"metadata": {"path": str(tmp_path)}},
    )
    started = time.perf_counter()
    client.execute()
    seconds = time.perf_counter() - started
    outputs = [o for c in nb.cells if c.cell_type == "code" for o in c.outputs]
    assert not [o for o in outputs if o.output_type == "error"]
    assert any("text/html" in o.get("data", {}) for o in outputs)  # rich display reached
    assert any("image/png" in o.get("data", {}) for o in outputs)
    print(f"{notebook.name}: {seconds:.1f} s on a kernel")
    assert os.listdir(tmp_path)  # it wrote its lake where it was run, not in the repository
