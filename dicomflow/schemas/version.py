"""Schema versions stamped on every output."""

INSTANCES_SCHEMA_VERSION = "1.1"
ERRORS_SCHEMA_VERSION = "1.0"
