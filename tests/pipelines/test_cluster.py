"""Local clusters start their workers ready for pixel work."""

from __future__ import annotations

import os

import dask

from dicomflow.pipelines.cluster import WORKER_MALLOC_ENV, open_client
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
        environment = client.run(os.environ.get, "MALLOC_MMAP_THRESHOLD_")
        loaded = client.run(eval, LOADED.format(names=wanted | {"tabnanny"}))
    assert list(environment.values()) == [WORKER_MALLOC_ENV["MALLOC_MMAP_THRESHOLD_"]]
    assert list(loaded.values()) == [sorted(wanted | {"tabnanny"})]
