"""Repository hygiene: nothing the repository ignores is tracked by it."""

from __future__ import annotations

import shutil
import subprocess

import pytest

from tests.conftest import REPO


def test_no_tracked_file_is_under_an_ignored_path() -> None:
    git = shutil.which("git")
    if git is None or not (REPO / ".git").exists():
        pytest.skip("not a git checkout")
    listed = subprocess.run(
        [git, "ls-files", "--cached", "--ignored", "--exclude-standard", "-z"],
        cwd=REPO,
        capture_output=True,
        check=True,
    ).stdout.decode()
    tracked = [p for p in listed.split("\0") if p]
    assert tracked == [], f"tracked but ignored by .gitignore: {tracked[:20]}"
