"""Decoded pixels for the instance operators that ask for them, decoded once per run.

An instance operator that declares ``needs_pixels`` reads ``image_of(record)``: the
instance as pydicom reads it plus its decoded frames. The compiler wraps the run's
operators from the first that needs pixels to the last in :class:`WithImages`, which
takes a batch a few instances at a time, decodes each of them once, runs those
operators, and drops the pixels before the next few. However many operators ask,
an instance is decoded once, and a batch never holds more than one slice of
decoded pixels (:data:`SLICE_BUDGET`).

A decoding failure is kept on the record rather than written: each operator that
asks for those pixels then fails in its own stage, with its own error row, and the
instance keeps its ``instances`` row (:meth:`InstanceRecord.with_fault`).
"""

from __future__ import annotations

import dataclasses
import warnings
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any, ClassVar

from pydicom.dataset import Dataset

from dicomflow.errors import DicomReadError, describe_failure, is_instance_fault
from dicomflow.operators.base import Operator
from dicomflow.pixels.decode import DEFAULT_MEMORY_BUDGET, DecodedPixels
from dicomflow.pixels.plain import decode_with_header
from dicomflow.pixels.series_writer import open_dataset
from dicomflow.records import Batch, ErrorInfo, InstanceRecord

SLICE_BUDGET = 256 * 1024**2  # decoded bytes held at once by one batch's slice


@dataclass(frozen=True)
class Image:
    """One instance's pixels: the dataset pydicom read (for its LUTs, overlays, ICC
    profile…) and its frames decoded (:func:`dicomflow.pixels.decode.decode`)."""

    dataset: Dataset
    pixels: DecodedPixels


@dataclass(frozen=True)
class _Undecodable:
    error: ErrorInfo


class ImageError(DicomReadError):
    """The instance's pixels could not be decoded (raised in the operator that asks)."""


def image_of(record: InstanceRecord) -> Image | None:
    """The record's decoded pixels; None when it has no image to decode. Raises
    :class:`ImageError` (with the decoder's code) when decoding failed."""
    image = record.image
    if isinstance(image, _Undecodable):
        raise ImageError(image.error.message, code=image.error.code)
    return image if isinstance(image, Image) else None


@dataclass(frozen=True)
class WithImages:
    """Run ``operators`` over a batch with each instance's pixels decoded once.

    The batch is taken in slices of at most ``budget`` decoded bytes (by the header's
    worst case); each slice is decoded, passed through every operator in order, and
    its pixels dropped. Rows an operator adds to ``batch.tables`` are kept.
    """

    operators: tuple[Operator, ...]
    storage_options: dict[str, Any] = field(default_factory=dict, repr=False)
    budget: int = SLICE_BUDGET
    memory_budget: int = DEFAULT_MEMORY_BUDGET  # one instance's ceiling, as decode has it

    name: ClassVar[str] = "decode"

    def __call__(self, batch: Batch) -> Batch:
        records: list[InstanceRecord] = []
        tables = dict(batch.tables)
        for piece in self._slices(batch.records):
            with warnings.catch_warnings():  # pydicom's warnings quote values
                warnings.simplefilter("ignore")
                part = Batch(tuple(self._decoded(r) for r in piece), batch.context)
                for operator in self.operators:
                    part = operator(part)
            records.extend(dataclasses.replace(r, image=None) for r in part.records)
            for table, rows in part.tables.items():
                tables[table] = (*tables.get(table, ()), *rows)
        return Batch(tuple(records), batch.context, tables)

    def _slices(self, records: Sequence[InstanceRecord]) -> Iterator[list[InstanceRecord]]:
        piece: list[InstanceRecord] = []
        held = 0
        for record in records:
            weight = _decoded_bytes(record)
            if piece and held + weight > self.budget:
                yield piece
                piece, held = [], 0
            piece.append(record)
            held += weight
        if piece:
            yield piece

    def _decoded(self, record: InstanceRecord) -> InstanceRecord:
        if record.failed or not _has_image(record):
            return record
        try:
            ds = open_dataset(record.ref.url, self.storage_options, record.header)
            pixels = decode_with_header(ds, record.header, memory_budget=self.memory_budget)
            image: Image | _Undecodable = Image(ds, pixels)
        except BaseException as exc:  # kept for the operators that ask, each its own row
            if not is_instance_fault(exc):
                raise
            code, message = describe_failure(exc)
            image = _Undecodable(ErrorInfo(self.name, code, message))
        return dataclasses.replace(record, image=image)


def _has_image(record: InstanceRecord) -> bool:
    """Whether the instance has pixels to decode: by its row when flattened, else by
    where its header found Pixel Data."""
    row = record.outputs.get("instances")
    if row is not None:
        return bool(row.get("has_pixel_data")) and bool(row.get("Rows"))
    header = record.header
    return header is not None and header.pixel_data_offset is not None


def _decoded_bytes(record: InstanceRecord) -> int:
    row = record.outputs.get("instances") or {}
    try:
        return (
            int(row.get("Rows") or 0)
            * int(row.get("Columns") or 0)
            * int(row.get("NumberOfFrames") or 1)
            * int(row.get("SamplesPerPixel") or 1)
            * 8
        )
    except (TypeError, ValueError):
        return 0
