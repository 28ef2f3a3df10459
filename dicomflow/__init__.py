"""dicomflow: turn DICOM sources into analysis-ready data at cohort scale, on Dask.

The public API is small. A :class:`Pipeline` (a spec: source, operators in order,
sinks) is built in Python, from YAML or by the CLI, and :func:`run` runs it;
:func:`scan` and :func:`ingest` build and run the common ones; :func:`read_lake`
and :func:`open_series` open what they wrote; :func:`query`, :func:`send` and
:func:`echo` talk to a PACS; :func:`view_series` and :func:`contact_sheet` show
a stack's slices in a notebook. Names are imported on first use, so a worker
process that unpickles an operator does not import the whole API.
"""

from __future__ import annotations

import importlib
import logging
from typing import TYPE_CHECKING, Any

from dicomflow._version import __version__

if TYPE_CHECKING:
    from dicomflow.api import (
        AnonymizeOperator,
        FlattenOperator,
        LabelsOperator,
        Lake,
        Picture,
        Pipeline,
        PixelsOperator,
        RenderOperator,
        SeriesView,
        SrOperator,
        contact_sheet,
        echo,
        ingest,
        open_series,
        query,
        read_frames,
        read_lake,
        run,
        scan,
        send,
        view_series,
        write_seg,
        write_sr,
    )

logging.getLogger(__name__).addHandler(logging.NullHandler())

__all__ = [
    "AnonymizeOperator",
    "FlattenOperator",
    "LabelsOperator",
    "Lake",
    "Picture",
    "Pipeline",
    "PixelsOperator",
    "RenderOperator",
    "SeriesView",
    "SrOperator",
    "__version__",
    "contact_sheet",
    "echo",
    "ingest",
    "open_series",
    "query",
    "read_frames",
    "read_lake",
    "run",
    "scan",
    "send",
    "view_series",
    "write_seg",
    "write_sr",
]


def __getattr__(name: str) -> Any:
    if name in __all__:
        return getattr(importlib.import_module("dicomflow.api"), name)
    raise AttributeError(f"module 'dicomflow' has no attribute {name!r}")
