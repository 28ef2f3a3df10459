"""Shared fixtures: the shared corpus, pydicom's bundled files, and Dask clients.

Integration tests (marked ``integration``) need ``../shared/corpus`` or an
external peer. In CI (``CI=true``) a missing peer is a failure; elsewhere the
test skips and the session ends with a loud banner listing what was skipped.
"""

from __future__ import annotations

import csv
import os
import shutil
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pydicom.data
import pytest

REPO = Path(__file__).resolve().parents[1]
CORPUS = Path(os.environ.get("DICOMFLOW_CORPUS", REPO.parent / "shared" / "corpus"))
PYDICOM_TEST_FILES = Path(pydicom.data.__file__).parent / "test_files"
PLUGIN = REPO / "tests" / "plugins" / "sequence_stats"
IN_CI = os.environ.get("CI", "").lower() in ("1", "true", "yes")

# gcsfs (2026.x) first asks the gRPC Storage Control API for each bucket's type, which
# an emulator does not serve: every call would wait 60 s for it. Set before gcsfs is
# imported here, in worker processes and in command-line subprocesses alike.
os.environ.setdefault("GCSFS_EXPERIMENTAL_ZB_HNS_SUPPORT", "false")

_SKIPPED_INTEGRATION: list[str] = []


def require(condition: bool, what: str) -> None:
    """Skip (outside CI) or fail (in CI) when an integration prerequisite is missing."""
    if condition:
        return
    if IN_CI:
        pytest.fail(f"CI=true but {what} is not available")
    _SKIPPED_INTEGRATION.append(what)
    pytest.skip(f"INTEGRATION SKIPPED (not in CI): {what} is not available")


def corpus_manifest() -> list[dict[str, str]]:
    manifest = CORPUS / "MANIFEST.tsv"
    if not manifest.exists():
        return []
    with manifest.open(newline="") as fh:
        return list(csv.DictReader(fh, delimiter="\t"))


def corpus_files() -> list[Path]:
    if not CORPUS.exists():
        return []
    return sorted(p for p in CORPUS.rglob("*") if p.is_file())


def pydicom_files() -> list[Path]:
    return sorted(p for p in PYDICOM_TEST_FILES.rglob("*") if p.is_file())


@pytest.fixture(scope="session")
def plugin_path(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The example plugin package installed, with its entry points, into a folder of
    its own (put it on PYTHONPATH with :func:`plugin_env`)."""
    target = tmp_path_factory.mktemp("plugin-site")
    package = tmp_path_factory.mktemp("plugin-source") / PLUGIN.name
    shutil.copytree(PLUGIN, package)  # the build writes beside its sources, never in the repo
    install = [sys.executable, "-m", "pip", "install", "--quiet", "--no-deps"]
    install += ["--no-build-isolation", "--target", str(target), str(package)]
    subprocess.run(install, check=True, capture_output=True, timeout=300)
    return target


def plugin_env(plugin_path: Path) -> dict[str, str]:
    """The environment of a subprocess that finds the installed plugin."""
    return {**os.environ, "PYTHONPATH": os.pathsep.join([str(plugin_path), os.getcwd()])}


@pytest.fixture(scope="session")
def corpus() -> Path:
    require(CORPUS.exists(), f"the shared corpus at {CORPUS}")
    return CORPUS


@pytest.fixture(scope="session")
def client() -> Iterator[object]:
    """A two-process local cluster shared by the pipeline tests (the product's own)."""
    from dicomflow.pipelines.cluster import open_client

    with open_client(workers=2) as c:
        yield c


def pytest_terminal_summary(terminalreporter: pytest.TerminalReporter) -> None:
    if _SKIPPED_INTEGRATION:
        tr = terminalreporter
        tr.section("INTEGRATION TESTS SKIPPED", sep="!", red=True, bold=True)
        for what in sorted(set(_SKIPPED_INTEGRATION)):
            tr.line(f"  missing: {what}", red=True)
        tr.line("  These run in CI (CI=true), where a missing peer fails the build.", red=True)
