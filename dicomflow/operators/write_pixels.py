"""The ``write_pixels`` operator: decode a series, assemble its stacks, write them as OME-Zarr.

The batch is one series. Stacks are planned from the flattened header rows
(no pixels needed), then each instance is decoded and its frames written in
slice order, one instance at a time, so memory stays at one instance plus one
frame chunk. Every instance row learns its ``zarr_path`` and ``frame_index``;
each stack adds one row to the batch's ``series`` table. An instance that cannot
be decoded becomes an error row and its stack is flagged ``missing_frames``;
the rest of the series is still written.
"""

from __future__ import annotations

import dataclasses
import json
from contextlib import ExitStack
from dataclasses import dataclass, field
from typing import Any, ClassVar

import numpy as np
from fsspec.core import url_to_fs

from dicomflow.dicom.geometry import SliceInfo, Stack, split_stacks
from dicomflow.errors import ErrorCode
from dicomflow.lake.layout import LakeLayout
from dicomflow.lake.zarr_store import StackLocation, stack_writer
from dicomflow.operators.base import describe_failure
from dicomflow.operators.flatten import OUTPUT as INSTANCES
from dicomflow.pixels.decode import (
    DEFAULT_MEMORY_BUDGET,
    DecodedPixels,
    PixelDecodeError,
    decode,
    read_dataset,
)
from dicomflow.records import Batch, InstanceRecord
from dicomflow.schemas.series import SERIES_SCHEMA_VERSION

STAGE = "write_pixels"


@dataclass(frozen=True)
class WritePixels:
    """Write every image stack of the batch's series under ``<lake>/pixels.zarr``."""

    layout: LakeLayout
    storage_options: dict[str, Any] = field(default_factory=dict)
    memory_budget: int = DEFAULT_MEMORY_BUDGET
    frames_per_chunk: int = 1

    name: ClassVar[str] = "write_pixels"

    def __call__(self, batch: Batch) -> Batch:
        records = list(batch.records)
        infos = [
            info for i, record in enumerate(records) if (info := slice_info(i, record)) is not None
        ]
        series_rows = []
        for number, stack in enumerate(split_stacks(infos)):
            row = self._write_stack(records, stack, f"stack-{number}", batch.context.run_id)
            if row is not None:
                series_rows.append(row)
        return batch.replace_records(records).with_table_rows("series", series_rows)

    def _write_stack(
        self, records: list[InstanceRecord], stack: Stack, name: str, run_id: str
    ) -> dict[str, Any] | None:
        """Decode in slice order and write frames as they come: one instance in memory."""
        first_row = records[stack.slices[0].index].outputs[INSTANCES]
        location = StackLocation(
            first_row.get("StudyInstanceUID") or "unknown-study",
            first_row.get("SeriesInstanceUID") or "unknown-series",
            name,
        )
        flags = list(stack.qc_flags)
        reference: DecodedPixels | None = None
        with ExitStack() as scope:
            array = None
            slab = _Slab()
            frame = 0
            for info in stack.slices:
                record = records[info.index]
                try:
                    pixels = self._decode(record)
                    if pixels.array.shape[0] != info.frames:
                        raise PixelDecodeError("decoded frame count differs from the header",
                                               code=ErrorCode.DECODE_FAILED)
                    if array is None:
                        reference = pixels
                        array = scope.enter_context(self._open(location, stack, pixels, flags))
                    _check_fits(pixels.array, array)
                    slab.add(array, frame, pixels.array)
                    records[info.index] = _locate(record, location, frame)
                except Exception as exc:  # one bad instance must not sink the series
                    code, message = describe_failure(exc)
                    records[info.index] = record.with_error(STAGE, code, message)
                    if "missing_frames" not in flags:
                        flags.append("missing_frames")
                frame += info.frames
            if array is None or reference is None:
                return None
            slab.flush(array)
        return {
            "StudyInstanceUID": first_row.get("StudyInstanceUID"),
            "SeriesInstanceUID": first_row.get("SeriesInstanceUID"),
            "stack": name,
            "Modality": first_row.get("Modality"),
            "frames": int(array.shape[0]),
            "shape": [int(n) for n in array.shape],
            "dtype": str(array.dtype),
            "spacing": list(stack.spacing),
            "affine": [float(v) for v in np.asarray(stack.affine).ravel()],
            "qc_flags": flags,
            "photometric_interpretation": reference.photometric_interpretation,
            "units": reference.units,
            "rescale_applied": reference.rescale_applied,
            "zarr_path": location.relative_path,
            "sop_instance_uids": _frame_uids(stack),
            "run_id": run_id,
            "schema_version": SERIES_SCHEMA_VERSION,
        }

    def _open(
        self, location: StackLocation, stack: Stack, reference: DecodedPixels, flags: list[str]
    ) -> Any:
        shape = (stack.frames, *reference.array.shape[1:])
        attributes = {
            "sop_instance_uids": _frame_uids(stack),
            "rescale_applied": reference.rescale_applied,
            "units": reference.units,
            "photometric_interpretation": reference.photometric_interpretation,
            "window": {"center": reference.window_center, "width": reference.window_width},
            "qc_flags": flags,
        }
        return stack_writer(
            self.layout,
            location,
            shape=shape,
            dtype=reference.array.dtype,
            spacing=stack.spacing,
            affine=stack.affine,
            attributes=attributes,
            frames_per_chunk=self.frames_per_chunk,
        )

    def _decode(self, record: InstanceRecord) -> DecodedPixels:
        fs, path = url_to_fs(record.ref.url, **self.storage_options)
        try:
            with fs.open(path, "rb") as fp:
                ds = read_dataset(fp)
        except OSError as exc:
            raise PixelDecodeError(
                f"cannot read the source ({type(exc).__name__})", code=ErrorCode.UNREADABLE
            ) from exc
        return decode(ds, memory_budget=self.memory_budget)


class _Slab:
    """Consecutive decoded frames, written to Zarr in one call (per-frame writes are slow)."""

    LIMIT_BYTES = 64 * 1024 * 1024

    def __init__(self) -> None:
        self.start = 0
        self.parts: list[np.ndarray] = []
        self.nbytes = 0

    def add(self, array: Any, frame: int, pixels: np.ndarray) -> None:
        if self.parts and frame != self.start + sum(len(p) for p in self.parts):
            self.flush(array)  # a failed instance left a gap: keep slabs contiguous
        if not self.parts:
            self.start = frame
        self.parts.append(pixels)
        self.nbytes += pixels.nbytes
        if self.nbytes >= self.LIMIT_BYTES:
            self.flush(array)

    def flush(self, array: Any) -> None:
        if self.parts:
            block = np.concatenate(self.parts).astype(array.dtype, copy=False)
            array[self.start:self.start + len(block)] = block
        self.parts, self.nbytes = [], 0


def _check_fits(pixels: np.ndarray, array: Any) -> None:
    """A later instance must fit the stack's array exactly (shape and value range)."""
    if pixels.shape[1:] != tuple(array.shape[1:]):
        raise PixelDecodeError(
            "frame shape differs from the rest of the stack", code=ErrorCode.DECODE_FAILED
        )
    if pixels.dtype == array.dtype or np.can_cast(pixels.dtype, array.dtype):
        return
    both_integer = np.issubdtype(array.dtype, np.integer) and np.issubdtype(
        pixels.dtype, np.integer
    )
    limits = np.iinfo(array.dtype) if both_integer else None
    if limits is None or not (limits.min <= pixels.min() and pixels.max() <= limits.max):
        raise PixelDecodeError(
            "pixel values do not fit the stack's data type", code=ErrorCode.DECODE_FAILED
        )


def _frame_uids(stack: Stack) -> list[str]:
    return [info.sop_instance_uid or "" for info in stack.slices for _ in range(info.frames)]


def _locate(record: InstanceRecord, location: StackLocation, frame: int) -> InstanceRecord:
    row = {**record.outputs[INSTANCES], "zarr_path": location.relative_path, "frame_index": frame}
    return dataclasses.replace(record, outputs={**record.outputs, INSTANCES: row})


def slice_info(index: int, record: InstanceRecord) -> SliceInfo | None:
    """Stack-planning facts from a flattened row; None for instances without image pixels."""
    if record.failed or INSTANCES not in record.outputs:
        return None
    row = record.outputs[INSTANCES]
    if not row.get("has_pixel_data") or not row.get("Rows") or not row.get("Columns"):
        return None
    orientation, positions, spacing = _functional_groups(row)
    orientation = orientation or _floats(row.get("ImageOrientationPatient"), 6)
    position = _floats(row.get("ImagePositionPatient"), 3) or (positions[0] if positions else None)
    pixel_spacing = spacing or _floats(row.get("PixelSpacing"), 2)
    image_type = [str(v).upper() for v in row.get("ImageType") or []]
    return SliceInfo(
        index=index,
        sop_instance_uid=row.get("SOPInstanceUID"),
        rows=int(row["Rows"]),
        columns=int(row["Columns"]),
        samples=int(row.get("SamplesPerPixel") or 1),
        frames=int(row.get("NumberOfFrames") or 1),
        orientation=tuple(orientation) if orientation else None,
        position=tuple(position) if position else None,
        pixel_spacing=(pixel_spacing[0], pixel_spacing[1]) if pixel_spacing else None,
        acquisition=row.get("AcquisitionNumber"),
        echo=tuple(row.get("EchoNumbers") or ()) or None,
        temporal=row.get("TemporalPositionIdentifier"),
        localizer="LOCALIZER" in image_type,
        instance_number=row.get("InstanceNumber"),
        spacing_between_slices=row.get("SpacingBetweenSlices"),
        slice_thickness=row.get("SliceThickness"),
        frame_positions=tuple(positions) if positions else None,
    )


def _floats(values: Any, n: int) -> list[float] | None:
    if not values or len(values) != n or any(v is None for v in values):
        return None
    return [float(v) for v in values]


def _json_floats(element: dict[str, Any] | None, n: int) -> list[float] | None:
    if not element:
        return None
    return _floats(element.get("Value"), n)


def _functional_groups(
    row: dict[str, Any],
) -> tuple[list[float] | None, list[tuple[float, ...]], list[float] | None]:
    """Orientation, per-frame positions and pixel spacing of enhanced multi-frame images."""
    if not row.get("NumberOfFrames") or int(row["NumberOfFrames"]) < 2:
        return None, [], None
    header = json.loads(row["dicom_json"])
    shared = (header.get("52009229", {}).get("Value") or [{}])[0]
    per_frame = header.get("52009230", {}).get("Value") or []

    def group(item: dict[str, Any], sequence: str, tag: str, n: int) -> list[float] | None:
        items = item.get(sequence, {}).get("Value") or []
        return _json_floats(items[0].get(tag), n) if items else None

    orientation = group(shared, "00209116", "00200037", 6)
    spacing = group(shared, "00289110", "00280030", 2)
    positions = []
    for item in per_frame:
        orientation = orientation or group(item, "00209116", "00200037", 6)
        spacing = spacing or group(item, "00289110", "00280030", 2)
        position = group(item, "00209113", "00200032", 3)
        if position is None:
            return orientation, [], spacing
        positions.append(tuple(position))
    return orientation, positions, spacing
