"""A DICOM Segmentation as ``segments`` rows and as masks on the grid of its source stack.

highdicom reads the SEG (binary, fractional and label map). Frames are placed by
the source instances they reference: each source instance is one slice of the
image stack in the lake, found by its SOP Instance UID. That needs the SEG's
frames on the source's pixel grid (same frame of reference, rows and columns);
dcmqi and others leave Spatial Locations Preserved out, so the grid is checked
here instead of that attribute. Fractional segments are thresholded at 0.5.
Segments that do not overlap share one label image whose values are the segment
numbers; overlapping segments get a label image each.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import pyarrow as pa

SEG_CLASSES = frozenset({"1.2.840.10008.5.1.4.1.1.66.4", "1.2.840.10008.5.1.4.1.1.66.7"})
SEGMENTS_TABLE = "segments"
SEGMENTS_SCHEMA = pa.schema(
    [
        ("SOPInstanceUID", pa.string()),  # the SEG's, as in ``instances``
        ("SeriesInstanceUID", pa.string()),
        ("segmentation_type", pa.string()),
        ("segment_number", pa.int32()),
        ("segment_label", pa.string()),
        ("category_code", pa.string()),
        ("category_scheme", pa.string()),
        ("category_meaning", pa.string()),
        ("type_code", pa.string()),
        ("type_scheme", pa.string()),
        ("type_meaning", pa.string()),
        ("algorithm_type", pa.string()),
        ("algorithm_name", pa.string()),
        ("source_series_uid", pa.string()),
        ("zarr_path", pa.string()),  # the image stack the masks land on
        ("label_path", pa.string()),  # the label image (None until placed)
        ("label_value", pa.int32()),
        ("status", pa.string()),  # placed, or why not (yet)
    ]
)
FRACTIONAL_THRESHOLD = 0.5


class NotPlaceable(ValueError):
    """The SEG's masks cannot be placed on the stack it references (a PHI-free reason)."""


def _code(sequence: Any) -> tuple[str | None, str | None, str | None]:
    if not sequence:
        return None, None, None
    item = sequence[0]
    return (
        str(item.get("CodeValue", "") or item.get("LongCodeValue", "")) or None,
        str(item.get("CodingSchemeDesignator", "")) or None,
        str(item.get("CodeMeaning", "")) or None,
    )


def segment_rows(seg: Any) -> list[dict[str, Any]]:
    """One ``segments`` row per segment of ``seg`` (a highdicom Segmentation), without
    where it lands (see :func:`placed`)."""
    rows = []
    kind = str(getattr(seg.segmentation_type, "value", seg.segmentation_type))
    source_series = {uids[1] for uids in seg.get_source_image_uids()}
    for item in seg.SegmentSequence:
        category = _code(item.get("SegmentedPropertyCategoryCodeSequence"))
        kind_code = _code(item.get("SegmentedPropertyTypeCodeSequence"))
        rows.append(
            {
                "SOPInstanceUID": str(seg.SOPInstanceUID),
                "SeriesInstanceUID": str(seg.SeriesInstanceUID),
                "segmentation_type": kind,
                "segment_number": int(item.SegmentNumber),
                "segment_label": str(item.get("SegmentLabel", "")) or None,
                "category_code": category[0],
                "category_scheme": category[1],
                "category_meaning": category[2],
                "type_code": kind_code[0],
                "type_scheme": kind_code[1],
                "type_meaning": kind_code[2],
                "algorithm_type": str(item.get("SegmentAlgorithmType", "")) or None,
                "algorithm_name": str(item.get("SegmentAlgorithmName", "")) or None,
                "source_series_uid": ",".join(sorted(source_series)) or None,
                "zarr_path": None,
                "label_path": None,
                "label_value": None,
                "status": None,
            }
        )
    return rows


@dataclass(frozen=True)
class Target:
    """The image stack a SEG or structure set lands on: its path, shape (z, y, x), the
    slice of each source instance, its frame of reference and its affine."""

    zarr_path: str
    shape: tuple[int, int, int]
    slices: Mapping[str, int]
    frame_of_reference: str | None
    affine: Any = None  # index (z, y, x) to LPS mm, 4x4 (contours need it)


@dataclass(frozen=True)
class LabelImage:
    """One label image: a name suffix, its array (z, y, x), and segment → value."""

    suffix: str
    data: np.ndarray
    values: Mapping[int, int]


def label_images(seg: Any, target: Target) -> list[LabelImage]:
    """The SEG's masks on ``target``'s grid: one label image, or one a segment when
    segments overlap. Raises :class:`NotPlaceable` when its frames are not on the
    source's grid."""
    sources = [uids[2] for uids in seg.get_source_image_uids() if uids[2] in target.slices]
    if not sources:
        raise NotPlaceable("none of the instances it segments is a slice of the stack")
    if (int(seg.Rows), int(seg.Columns)) != target.shape[1:]:
        raise NotPlaceable("its frames are not on the pixel grid of the images it segments")
    ours = str(seg.get("FrameOfReferenceUID", "") or "") or None
    if ours and target.frame_of_reference and ours != target.frame_of_reference:
        raise NotPlaceable("it is in another frame of reference than the images it segments")
    numbers = [int(item.SegmentNumber) for item in seg.SegmentSequence]
    masks = seg.get_pixels_by_source_instance(
        sources, segment_numbers=numbers, ignore_spatial_locations=True
    )  # (instances, rows, columns, segments); fractional ones in [0, 1]
    if np.issubdtype(masks.dtype, np.floating):
        masks = masks >= FRACTIONAL_THRESHOLD
    masks = masks.astype(bool)
    dtype = np.uint8 if max(numbers, default=0) < 256 else np.uint16
    slices = [target.slices[uid] for uid in sources]
    if int(masks.sum(axis=3).max(initial=0)) <= 1:  # no pixel in two segments
        data = np.zeros(target.shape, dtype)
        for index, number in enumerate(numbers):
            for slice_index, mask in zip(slices, masks[..., index], strict=True):
                data[slice_index][mask] = number
        return [LabelImage("", data, {n: n for n in numbers})]
    images = []
    for index, number in enumerate(numbers):
        data = np.zeros(target.shape, dtype)
        for slice_index, mask in zip(slices, masks[..., index], strict=True):
            data[slice_index][mask] = number
        images.append(LabelImage(f"-segment-{number}", data, {number: number}))
    return images


def placed(
    rows: Sequence[dict[str, Any]],
    target: Target | None,
    paths: Mapping[int, str],
    status: str,
    values: Mapping[int, int] | None = None,
) -> list[dict[str, Any]]:
    """``rows`` with where each segment landed (``paths``: segment → label path;
    ``values``: segment → its value there, the segment number when not given)."""
    return [
        {
            **row,
            "zarr_path": target.zarr_path if target else None,
            "label_path": paths.get(row["segment_number"]),
            "label_value": (values or {}).get(row["segment_number"], row["segment_number"])
            if row["segment_number"] in paths
            else None,
            "status": status,
        }
        for row in rows
    ]
