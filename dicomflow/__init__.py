"""dicomflow: turn DICOM sources into analysis-ready data at cohort scale, on Dask.

The public API is small: :func:`scan` a source into an Arrow table or a lake,
and :func:`read_lake` to open a lake again.
"""

from __future__ import annotations

import logging

from dicomflow._version import __version__
from dicomflow.api import Lake, ingest, open_series, read_lake, scan

logging.getLogger(__name__).addHandler(logging.NullHandler())

__all__ = ["Lake", "__version__", "ingest", "open_series", "read_lake", "scan"]
