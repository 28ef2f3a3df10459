"""Stack-planning facts per instance, taken from its flattened header row."""

from __future__ import annotations

import json
import math
from collections.abc import Sequence
from typing import Any

from dicomflow.dicom.geometry import SliceInfo
from dicomflow.records import INSTANCES_OUTPUT, InstanceRecord

INSTANCES = INSTANCES_OUTPUT


def slice_infos(records: Sequence[InstanceRecord], start: int = 0) -> list[SliceInfo]:
    """The facts of every image among ``records`` (the series' records ``start`` onwards)."""
    return [info for i, r in enumerate(records, start) if (info := slice_info(i, r)) is not None]


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
    if pixel_spacing and not all(math.isfinite(v) and v > 0 for v in pixel_spacing):
        pixel_spacing = None  # a spacing of 0 (or worse) says nothing: treated as missing
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
