"""The Arrow schema of the ``errors`` table: one row per input that produced no output."""

from __future__ import annotations

from functools import cache

import pyarrow as pa

from dicomflow.schemas.version import ERRORS_SCHEMA_VERSION


@cache
def errors_schema() -> pa.Schema:
    return pa.schema(
        [
            pa.field("source", pa.string(), nullable=False),
            pa.field("stage", pa.string(), nullable=False),
            pa.field("code", pa.string(), nullable=False),
            pa.field("message", pa.string(), nullable=False),
            pa.field("run_id", pa.string(), nullable=False),
            pa.field("schema_version", pa.string(), nullable=False),
        ],
        metadata={"dicomflow.table": "errors", "dicomflow.schema_version": ERRORS_SCHEMA_VERSION},
    )
