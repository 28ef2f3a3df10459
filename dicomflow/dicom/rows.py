"""Flatten one parsed header into one row of the ``instances`` table, and rows into Arrow."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from functools import cache
from typing import Any

import pyarrow as pa
from pydicom.uid import UID_dictionary

from dicomflow.dicom.dicomjson import EncodeContext, encode_json
from dicomflow.dicom.elements import UNDEFINED_LENGTH, Element
from dicomflow.dicom.fastread import IMPLICIT_PIXEL_VR
from dicomflow.dicom.header import DamagedHeader
from dicomflow.dicom.typed import typed_value
from dicomflow.records import Header, SourceRef
from dicomflow.schemas.instances import ColumnSpec, column_specs, instances_schema
from dicomflow.schemas.tables import Misfits, fitted_column, fitted_table
from dicomflow.schemas.version import INSTANCES_SCHEMA_VERSION

MEDIA_STORAGE_DIRECTORY = "1.2.840.10008.1.3.10"
WARNINGS = "warnings"
TRANSFER_SYNTAX_UID_TAG = 0x00020010


@dataclass(frozen=True)
class RowContext:
    """Per-run facts stamped on every row."""

    run_id: str
    scanned_at: datetime
    inline_binary_limit: int = 1024


def source_uri(url: str) -> str:
    """A URI for ``BulkDataURI``: local paths get ``file://``, URLs stay as they are."""
    return url if "://" in url else f"file://{url}"


def header_to_row(
    header: Header, ref: SourceRef, ctx: RowContext, memo: dict[Any, Any] | None = None
) -> dict[str, Any]:
    """The ``instances`` row for one header: provenance, typed columns, full JSON."""
    meta_tags, data_tags = _captured_tags()

    encode_ctx = EncodeContext(
        source=source_uri(ref.source),
        offsets_valid=not header.deflated,
        inline_limit=ctx.inline_binary_limit,
        capture_tags=data_tags,
        memo=memo if memo is not None else {},
    )
    elements = header.elements
    if header.pixel_data_tag is not None:  # located, not read: a bulk data reference
        pixel = Element(
            header.pixel_data_tag,
            header.pixel_data_vr or IMPLICIT_PIXEL_VR[header.pixel_data_tag],
            None,
            header.pixel_data_offset,
            header.pixel_data_length or UNDEFINED_LENGTH,
        )
        elements = (*elements, pixel)
    dataset_json = encode_json(elements, encode_ctx)
    meta_ctx = EncodeContext(source=encode_ctx.source, capture_tags=meta_tags, memo=encode_ctx.memo)
    meta_json = encode_json(header.file_meta, meta_ctx)

    warnings: list[str] = []
    if isinstance(header, DamagedHeader):  # the header is whole; what follows it is not
        warnings.append(header.damage)
    elif not header.trailing_parsed:
        warnings.append("bytes after Pixel Data are not a parseable data set")
    if header.transfer_syntax_uid is None and any(
        e.tag == TRANSFER_SYNTAX_UID_TAG for e in header.file_meta
    ):
        warnings.append("TransferSyntaxUID: not a UID; the encoding was inferred")
    row: dict[str, Any] = dict.fromkeys(_keywords())
    specs = _specs_by_tag()
    memo = encode_ctx.memo
    for captured in (meta_ctx.captured, encode_ctx.captured):
        for tag, components in captured.items():
            spec = specs[tag]
            key = ("typed", tag, components.vr, tuple(components.components))
            hit = memo.get(key)
            if hit is None:
                found: list[str] = []
                hit = memo[key] = (typed_value(components, spec, found), tuple(found))
            row[spec.keyword] = hit[0]
            warnings.extend(hit[1])

    sop_class = row.get("SOPClassUID") or row.get("MediaStorageSOPClassUID")
    has_pixels = header.pixel_data_tag is not None
    frames = row.get("NumberOfFrames")
    row.update(
        source=ref.source,
        kind="dicomdir" if sop_class == MEDIA_STORAGE_DIRECTORY else "instance",
        size_bytes=ref.size,
        modified=ref.modified,
        transfer_syntax_uid=header.transfer_syntax_uid,
        sop_class_name=_uid_name(sop_class),
        number_of_frames=frames if frames is not None else (1 if has_pixels else None),
        has_pixel_data=has_pixels,
        schema_version=INSTANCES_SCHEMA_VERSION,
        run_id=ctx.run_id,
        scanned_at=ctx.scanned_at,
        warnings=warnings,
        dicom_json=dataset_json,
        file_meta_json=meta_json,
    )
    return row


@cache
def _captured_tags() -> tuple[frozenset[int], frozenset[int]]:
    tags = [spec.tag for spec in column_specs()]
    return (
        frozenset(t for t in tags if t >> 16 == 0x0002),
        frozenset(t for t in tags if t >> 16 != 0x0002),
    )


@cache
def _specs_by_tag() -> dict[int, ColumnSpec]:
    return {spec.tag: spec for spec in column_specs()}


@cache
def _keywords() -> tuple[str, ...]:
    return tuple(spec.keyword for spec in column_specs())


def _uid_name(uid: str | None) -> str | None:
    if not uid:
        return None
    entry = UID_dictionary.get(uid)
    return entry[0] if entry else None


def rows_to_table(rows: list[dict[str, Any]]) -> pa.Table:
    """Build the ``instances`` table column by column, always with the full schema.

    A value that does not fit its column's type (say, bytes that are not UTF-8 where
    a UID belongs) becomes null, and its row gains a warning naming the column, as an
    invalid attribute value does: one file's value never fails its neighbours' rows.
    """
    schema = instances_schema()
    columns, misfits = fitted_table(rows, schema, skip=(WARNINGS,))
    warnings = [list(row.get(WARNINGS) or ()) + misfits.warnings(i) for i, row in enumerate(rows)]
    field = schema.field(WARNINGS)
    columns[WARNINGS] = fitted_column([{WARNINGS: w} for w in warnings], field, Misfits())
    return pa.Table.from_arrays([columns[f.name] for f in schema], schema=schema)
