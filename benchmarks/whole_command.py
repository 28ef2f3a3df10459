"""Timing whole commands, as a user waits for them: a fresh process each, imports and
cluster start and stop included."""

from __future__ import annotations

import compileall
import os
import subprocess
import sys
import time
from pathlib import Path

import dicomflow

# As pip compiles an installed package, so that no command pays for compiling it (an
# editable install is not compiled where PYTHONDONTWRITEBYTECODE is set).
compileall.compile_dir(Path(dicomflow.__file__).parent, quiet=1)


def whole(command: list[str]) -> float:
    """Seconds for ``command`` to run to its end (dirty pages flushed first, so it does
    not pay for an earlier run's writes)."""
    os.sync()
    start = time.perf_counter()
    subprocess.run(command, check=True, capture_output=True)
    return time.perf_counter() - start


def dicomflow_ingest(src: Path, lake: Path, *flags: str, workers: int | None = None) -> list[str]:
    """The ``dicomflow ingest`` command line a user would type for this benchmark."""
    command = [sys.executable, "-m", "dicomflow", "ingest", str(src), "--out", str(lake)]
    command += [*flags, "--no-progress"]
    return command + (["--workers", str(workers)] if workers else [])


def end_to_end(items: int, baseline: float, ours: float) -> str:
    """The line that compares the two whole commands."""
    return (
        f"end to end:  baseline {baseline:5.2f} s ({items / baseline:6.1f}/s) | dicomflow "
        f"{ours:5.2f} s ({items / ours:6.1f}/s) (ratio {baseline / ours:.2f}x), whole commands"
    )
