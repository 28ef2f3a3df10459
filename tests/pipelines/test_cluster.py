"""Local clusters start their workers ready for pixel work."""

from __future__ import annotations

import os

import dask

from dicomflow.pipelines.cluster import WORKER_MALLOC_ENV, _pre_spawn_environ, open_client
from dicomflow.pipelines.worker_imports import MODULES

# Asked of each fresh worker before it runs any task. ``eval`` is pickled by reference,
# so asking imports nothing on the worker (a function from this module would).
LOADED = "sorted(m for m in __import__('sys').modules if m in {names!r})"


def test_local_workers_start_with_the_malloc_setting_and_the_task_imports() -> None:
    """Ours come on top of the user's own preloads (here ``tabnanny``, which nothing else
    imports), as the malloc setting comes on top of their environment."""
    wanted = {"pandas", "dicomflow.pipelines.ingest", "dicomflow.pixels.imagecodecs_plugin"}
    assert wanted <= set(MODULES)
    with (
        dask.config.set({"distributed.worker.preload": ["tabnanny"]}),
        open_client(workers=1) as client,
    ):
        environment = client.run(_malloc_environment)
        loaded = client.run(eval, LOADED.format(names=wanted | {"tabnanny"}))
    assert list(environment.values()) == [WORKER_MALLOC_ENV]
    assert list(loaded.values()) == [sorted(wanted | {"tabnanny"})]


def _malloc_environment() -> dict[str, str | None]:
    return {name: os.environ.get(name) for name in WORKER_MALLOC_ENV}


def test_a_trim_threshold_the_user_configured_is_kept() -> None:
    """Ours replaces Dask's default (64 KiB), not a value of the user's."""
    assert _pre_spawn_environ()["MALLOC_TRIM_THRESHOLD_"] == str(16 * 2**20)
    environ = {"MALLOC_TRIM_THRESHOLD_": 131072, "OMP_NUM_THREADS": 1}
    with dask.config.set({"distributed.nanny.pre-spawn-environ": environ}):
        assert _pre_spawn_environ()["MALLOC_TRIM_THRESHOLD_"] == 131072
        assert _pre_spawn_environ()["OMP_NUM_THREADS"] == 1
