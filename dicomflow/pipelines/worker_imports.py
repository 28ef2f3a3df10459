"""Imported by each worker of a local cluster as it starts (Dask's ``preload``).

Without it a fresh worker imports the task modules, pydicom's pixel backends and
pandas (which pyarrow loads on its first ``pa.array`` call) inside the first
tasks of the first run, on the run's critical path: the series commit alone
waited 0.3 s for pandas. Workers import in parallel while the cluster starts.
"""

from __future__ import annotations

import importlib
import logging

logger = logging.getLogger(__name__)

MODULES = (
    "pandas",  # pyarrow imports it on first use when installed
    "pyarrow.parquet",
    "dicomflow.pipelines.ingest",
    "dicomflow.pipelines.anonymize",
    "dicomflow.pipelines.retrieve",
    "dicomflow.pixels.imagecodecs_plugin",
    "pydicom.pixels.decoders.pylibjpeg",
    "pydicom.pixels.decoders.gdcm",
    "pydicom.pixels.decoders.rle",
    "imagecodecs",
)


def dask_setup(worker: object) -> None:
    """Import :data:`MODULES`; one that is missing or fails to import is skipped (the
    task that needs it reports the problem), never the worker's start."""
    for name in MODULES:
        try:
            importlib.import_module(name)
        except Exception as exc:  # a preload must never stop the worker
            logger.debug("worker preload: %s not imported (%s)", name, type(exc).__name__)
