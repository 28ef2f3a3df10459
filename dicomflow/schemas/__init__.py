"""Versioned contracts: the Arrow schemas of every output table."""

from dicomflow.schemas.errors import errors_schema
from dicomflow.schemas.instances import ColumnSpec, column_specs, instances_schema
from dicomflow.schemas.series import SERIES_SCHEMA_VERSION, series_schema
from dicomflow.schemas.version import ERRORS_SCHEMA_VERSION, INSTANCES_SCHEMA_VERSION

__all__ = [
    "ERRORS_SCHEMA_VERSION",
    "INSTANCES_SCHEMA_VERSION",
    "SERIES_SCHEMA_VERSION",
    "ColumnSpec",
    "column_specs",
    "errors_schema",
    "instances_schema",
    "series_schema",
]
