"""The output lake: atomic Parquet parts under deterministic names, and reading them back."""

from dicomflow.lake.layout import LakeLayout, safe_uid_component
from dicomflow.lake.reader import Lake, read_lake
from dicomflow.lake.writer import write_part

__all__ = ["Lake", "LakeLayout", "read_lake", "safe_uid_component", "write_part"]
