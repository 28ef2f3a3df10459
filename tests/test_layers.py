"""The layers of DESIGN.md hold, and no package has an import cycle (import-linter)."""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def test_import_contracts_are_kept() -> None:
    lint_imports = shutil.which("lint-imports", path=str(Path(sys.executable).parent))
    assert lint_imports, "import-linter is a dev dependency (make install)"
    result = subprocess.run(
        [lint_imports, "--config", str(REPO / ".importlinter")],
        capture_output=True,
        text=True,
        cwd=REPO,
        timeout=300,
    )
    assert result.returncode == 0, result.stdout[-4000:]
    assert "3 kept, 0 broken" in result.stdout


# What a command that neither talks to a peer nor writes pixels never needs: pynetdicom,
# dicomweb-client and zarr (together about 0.3 s of a command's start).
UNNEEDED_FOR_A_SCAN = ("pynetdicom", "dicomweb_client", "zarr", "numcodecs")

SCAN_ONE_FILE = """
import sys
import dicomflow.api
before = sorted(m for m in {names!r} if m in sys.modules)
dicomflow.api.run_scan([{source!r}], out={out!r}, progress=False)
after = sorted(m for m in {names!r} if m in sys.modules)
print(before, after)
"""


def test_a_scan_imports_no_network_client_and_no_zarr(tmp_path: Path) -> None:
    """Importing the API, and a whole scan run in the command's process, load none of
    the modules that only retrieval, sending and pixels need."""
    from tests.conftest import PYDICOM_TEST_FILES

    code = SCAN_ONE_FILE.format(
        names=UNNEEDED_FOR_A_SCAN,
        source=str(PYDICOM_TEST_FILES / "CT_small.dcm"),
        out=str(tmp_path / "lake"),
    )
    result = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=300
    )
    assert result.returncode == 0, result.stderr[-3000:]
    assert result.stdout.strip().splitlines()[-1] == "[] []"
