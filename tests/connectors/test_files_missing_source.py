"""A source that does not exist is a configuration error (exit code 2), not an empty run;
a glob pattern that matches nothing stays a reported failure of that input."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from dicomflow.connectors.files import FilesConnector
from dicomflow.errors import ConfigError
from tests.conftest import PYDICOM_TEST_FILES

EXIT_CONFIG = 2


def _run_cli(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "dicomflow", *args], capture_output=True, text=True, timeout=300
    )


def test_cli_scan_of_a_path_that_does_not_exist_exits_two(tmp_path: Path) -> None:
    missing = tmp_path / "does" / "not" / "exist"
    lake = tmp_path / "lake"
    result = _run_cli("scan", str(missing), "--out", str(lake), "--workers", "1")
    assert result.returncode == EXIT_CONFIG, (result.stdout, result.stderr)
    assert "error: " in result.stderr
    assert "does not exist" in result.stderr and str(missing) in result.stderr
    assert not (lake / "instances").exists()


def test_cli_scan_with_one_missing_input_among_real_ones_exits_two(tmp_path: Path) -> None:
    missing = tmp_path / "typo.dcm"
    result = _run_cli(
        "scan",
        str(PYDICOM_TEST_FILES / "CT_small.dcm"),
        str(missing),
        "--out",
        str(tmp_path / "lake"),
        "--workers",
        "1",
    )
    assert result.returncode == EXIT_CONFIG, (result.stdout, result.stderr)
    assert str(missing) in result.stderr
    assert "CT_small.dcm" not in result.stderr  # only the missing input is named


def test_a_missing_url_is_named_without_its_credentials() -> None:
    with pytest.raises(ConfigError) as info:
        FilesConnector(("memory://user:hunter2@bucket/missing.dcm",)).query()
    assert "does not exist" in str(info.value)
    assert "hunter2" not in str(info.value)
    assert "missing.dcm" in str(info.value)


def test_a_glob_matching_nothing_is_a_failure_not_a_config_error(tmp_path: Path) -> None:
    listing = FilesConnector((str(tmp_path / "*.dcm"),)).query()
    assert listing.refs == [] and len(listing.failures) == 1
