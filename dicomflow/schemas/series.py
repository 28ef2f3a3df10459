"""The Arrow schema of the ``series`` table: one row per stack written to Zarr."""

from __future__ import annotations

from functools import cache

import pyarrow as pa

SERIES_SCHEMA_VERSION = "1.0"


@cache
def series_schema() -> pa.Schema:
    return pa.schema(
        [
            pa.field("StudyInstanceUID", pa.string()),
            pa.field("SeriesInstanceUID", pa.string()),
            pa.field("stack", pa.string(), nullable=False),
            pa.field("Modality", pa.string()),
            pa.field("frames", pa.int64(), nullable=False),
            pa.field("shape", pa.list_(pa.int64()), nullable=False),
            pa.field("dtype", pa.string(), nullable=False),
            pa.field("spacing", pa.list_(pa.float64()), nullable=False),
            pa.field("affine", pa.list_(pa.float64()), nullable=False),
            pa.field("qc_flags", pa.list_(pa.string()), nullable=False),
            pa.field("photometric_interpretation", pa.string()),
            pa.field("units", pa.string()),
            pa.field("rescale_applied", pa.bool_()),
            pa.field("zarr_path", pa.string(), nullable=False),
            pa.field("sop_instance_uids", pa.list_(pa.string()), nullable=False),
            pa.field("run_id", pa.string(), nullable=False),
            pa.field("schema_version", pa.string(), nullable=False),
        ],
        metadata={"dicomflow.table": "series", "dicomflow.schema_version": SERIES_SCHEMA_VERSION},
    )
