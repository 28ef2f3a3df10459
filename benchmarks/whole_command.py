"""Timing whole commands, as a user waits for them: a fresh process each, imports and
cluster start and stop included."""

from __future__ import annotations

import compileall
import os
import subprocess
import sys
import time
from pathlib import Path

# The environment a user's shell gives a command, taken before this process starts any
# cluster: a local cluster leaves its workers' settings in os.environ (Dask's and ours:
# MALLOC_MMAP_THRESHOLD_, OMP_NUM_THREADS…), and a command started later would inherit
# them. The malloc settings alone made the baseline loops a fifth faster than a user
# runs them.
USER_ENVIRONMENT = dict(os.environ)

import dicomflow  # noqa: E402

# As pip compiles an installed package, so that no command pays for compiling it (an
# editable install is not compiled where PYTHONDONTWRITEBYTECODE is set).
compileall.compile_dir(Path(dicomflow.__file__).parent, quiet=1)


def whole(command: list[str]) -> float:
    """Seconds for ``command`` to run to its end (dirty pages flushed first, so it does
    not pay for an earlier run's writes)."""
    os.sync()
    start = time.perf_counter()
    subprocess.run(command, check=True, capture_output=True, env=USER_ENVIRONMENT)
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
