"""The Arrow schema of the ``instances`` table.

Three groups of columns:

* provenance (snake_case): where the row came from and when it was scanned;
* typed core attributes (pydicom keywords, see :mod:`.core_attributes`), whose
  Arrow type follows from the VR (DA→date32, TM→time64[us], DT→timestamp[us],
  DS→float64, IS→int64, binary numbers→their numeric type, text→string) and
  whose values are lists when the attribute's VM allows more than one value;
* the full header as DICOM JSON (``dicom_json``, ``file_meta_json``) plus a
  per-row ``warnings`` list.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import cache

import pyarrow as pa
from pydicom.datadict import dictionary_VM, dictionary_VR, tag_for_keyword

from dicomflow.schemas.core_attributes import core_keywords
from dicomflow.schemas.version import INSTANCES_SCHEMA_VERSION

_SCALAR_TYPES: dict[str, pa.DataType] = {
    "DA": pa.date32(),
    "TM": pa.time64("us"),
    "DT": pa.timestamp("us"),
    "DS": pa.float64(),
    "IS": pa.int64(),
    "US": pa.uint16(),
    "SS": pa.int16(),
    "UL": pa.uint32(),
    "SL": pa.int32(),
    "UV": pa.uint64(),
    "SV": pa.int64(),
    "FL": pa.float32(),
    "FD": pa.float64(),
    # Ambiguous in the dictionary; resolved per file by Pixel Representation.
    "US or SS": pa.int32(),
}


@dataclass(frozen=True)
class ColumnSpec:
    """One typed column: the keyword, its tag, its dictionary VR, and whether it is a list."""

    keyword: str
    tag: int
    vr: str
    multi: bool

    @property
    def arrow_type(self) -> pa.DataType:
        scalar = _SCALAR_TYPES.get(self.vr, pa.string())
        return pa.list_(scalar) if self.multi else scalar


PROVENANCE_FIELDS: tuple[pa.Field, ...] = (
    pa.field("source", pa.string(), nullable=False),
    pa.field("kind", pa.string(), nullable=False),
    pa.field("size_bytes", pa.int64()),
    pa.field("modified", pa.timestamp("us", tz="UTC")),
    pa.field("transfer_syntax_uid", pa.string()),
    pa.field("sop_class_name", pa.string()),
    pa.field("number_of_frames", pa.int64()),
    pa.field("has_pixel_data", pa.bool_()),
    pa.field("schema_version", pa.string(), nullable=False),
    pa.field("run_id", pa.string(), nullable=False),
    pa.field("scanned_at", pa.timestamp("us", tz="UTC"), nullable=False),
    # Set when pixels are written (ingest --pixels): where this instance's frames are.
    pa.field("zarr_path", pa.string()),
    pa.field("frame_index", pa.int64()),
)

HEADER_FIELDS: tuple[pa.Field, ...] = (
    pa.field("warnings", pa.list_(pa.string())),
    pa.field("dicom_json", pa.large_string()),
    pa.field("file_meta_json", pa.string()),
)


@cache
def column_specs() -> tuple[ColumnSpec, ...]:
    """The typed columns, in schema order."""
    specs = []
    for keyword in core_keywords():
        tag = tag_for_keyword(keyword)
        if tag is None:
            raise LookupError(f"{keyword} is not in pydicom's dictionary")
        specs.append(ColumnSpec(keyword, tag, dictionary_VR(tag), dictionary_VM(tag) != "1"))
    return tuple(specs)


@cache
def instances_schema() -> pa.Schema:
    """The full Arrow schema of the ``instances`` table, with its version in the metadata."""
    typed = [pa.field(spec.keyword, spec.arrow_type) for spec in column_specs()]
    return pa.schema(
        [*PROVENANCE_FIELDS, *typed, *HEADER_FIELDS],
        metadata={
            "dicomflow.table": "instances",
            "dicomflow.schema_version": INSTANCES_SCHEMA_VERSION,
        },
    )
