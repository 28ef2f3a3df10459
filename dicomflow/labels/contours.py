"""An RT Structure Set as ``segments`` rows and as masks rasterized on its image stack.

Each ROI is one row (its number, name, interpreted type and generation algorithm).
Each closed planar contour is taken from patient space (LPS mm) into the stack's
index space with the inverse of the stack's affine, must lie on one slice (within a
quarter of the slice spacing), and is filled there by the even-odd rule on pixel
centres: a contour inside another of the same ROI on the same slice cuts a hole, as
PS3.3 C.8.8.6 describes. Points and open contours carry no area and are skipped. ROIs
that do not overlap share one label image whose values are the ROI numbers;
overlapping ROIs get a label image each, like the segments of a SEG.
"""

from __future__ import annotations

import math
from collections.abc import Iterator
from typing import Any

import numpy as np

from dicomflow.labels.segments import LabelImage, NotPlaceable, Target

RTSTRUCT_CLASS = "1.2.840.10008.5.1.4.1.1.481.3"
OFF_SLICE = 0.25  # how far from a slice (in slices) a contour's points may lie


def roi_rows(structure_set: Any) -> list[dict[str, Any]]:
    """One ``segments`` row per ROI of ``structure_set`` (a pydicom dataset), without
    where it lands."""
    observed = {
        int(item.ReferencedROINumber): item
        for item in structure_set.get("RTROIObservationsSequence") or []
        if "ReferencedROINumber" in item
    }
    series = sorted(
        str(item.SeriesInstanceUID)
        for frame in structure_set.get("ReferencedFrameOfReferenceSequence") or []
        for study in frame.get("RTReferencedStudySequence") or []
        for item in study.get("RTReferencedSeriesSequence") or []
        if "SeriesInstanceUID" in item
    )
    rows = []
    for roi in structure_set.get("StructureSetROISequence") or []:
        number = int(roi.ROINumber)
        observation = observed.get(number)
        kind = str(observation.get("RTROIInterpretedType", "") or "") if observation else ""
        rows.append(
            {
                "SOPInstanceUID": str(structure_set.SOPInstanceUID),
                "SeriesInstanceUID": str(structure_set.get("SeriesInstanceUID", "")) or None,
                "segmentation_type": "RTSTRUCT",
                "segment_number": number,
                "segment_label": str(roi.get("ROIName", "")) or None,
                "category_code": None,
                "category_scheme": None,
                "category_meaning": None,
                "type_code": None,
                "type_scheme": None,
                "type_meaning": kind or None,
                "algorithm_type": str(roi.get("ROIGenerationAlgorithm", "")) or None,
                "algorithm_name": None,
                "source_series_uid": ",".join(series) or None,
                "zarr_path": None,
                "label_path": None,
                "label_value": None,
                "status": None,
            }
        )
    return rows


def referenced_instances(structure_set: Any) -> list[str]:
    """The SOP Instance UIDs of the images the contours were drawn on: each contour's
    Contour Image Sequence, or, when no contour has one, the structure set's own list of
    referenced images (which often names the whole series)."""
    found: list[str] = []
    for roi in structure_set.get("ROIContourSequence") or []:
        for contour in roi.get("ContourSequence") or []:
            found += _image_uids(contour.get("ContourImageSequence"))
    if not found:
        for frame in structure_set.get("ReferencedFrameOfReferenceSequence") or []:
            for study in frame.get("RTReferencedStudySequence") or []:
                for series in study.get("RTReferencedSeriesSequence") or []:
                    found += _image_uids(series.get("ContourImageSequence"))
    return list(dict.fromkeys(found))


def _image_uids(sequence: Any) -> list[str]:
    return [
        str(item.ReferencedSOPInstanceUID)
        for item in sequence or []
        if "ReferencedSOPInstanceUID" in item
    ]


def contour_label_images(
    structure_set: Any, target: Target, affine: np.ndarray
) -> Iterator[LabelImage]:
    """The ROIs' masks on ``target``'s grid (``affine``: index (z, y, x) to LPS mm), one
    label image at a time. Every contour is placed before the first image is made, so
    :class:`NotPlaceable` (a contour off the stack's slices or outside it) comes before
    anything is written. Label values are the ROI numbers, or 1..n when a number cannot
    be one (0, or above 65,535)."""
    planes = _planes(structure_set, target, affine)
    numbers = sorted(planes)
    usable = all(0 < n < 65536 for n in numbers)
    values = {n: (n if usable else i) for i, n in enumerate(numbers, start=1)}
    dtype = np.uint8 if max(values.values()) < 256 else np.uint16
    return _label_images(planes, values, target.shape, dtype)


def _planes(
    structure_set: Any, target: Target, affine: np.ndarray
) -> dict[int, dict[int, np.ndarray]]:
    """ROI number → slice → its filled 2-D mask (only the slices it has contours on)."""
    frame = str(structure_set.get("FrameOfReferenceUID", "") or "") or _frame_of(structure_set)
    if frame and target.frame_of_reference and frame != target.frame_of_reference:
        raise NotPlaceable("it is in another frame of reference than the images it outlines")
    to_index = np.linalg.inv(np.asarray(affine, float))
    planes: dict[int, dict[int, np.ndarray]] = {}
    for number, points in _closed_contours(structure_set):
        index = (to_index @ np.c_[points, np.ones(len(points))].T).T[:, :3]
        slice_index = round(float(index[:, 0].mean()))
        if np.abs(index[:, 0] - slice_index).max() > OFF_SLICE:
            raise NotPlaceable("a contour does not lie on a slice of the images it outlines")
        if not 0 <= slice_index < target.shape[0] or not _touches(index, target.shape):
            raise NotPlaceable("a contour lies outside the images it outlines")
        slices = planes.setdefault(number, {})
        plane = slices.setdefault(slice_index, np.zeros(target.shape[1:], bool))
        plane ^= fill_polygon(index[:, 1], index[:, 2], target.shape[1:])
    if not planes:
        raise NotPlaceable("it has no closed planar contour")
    return planes


def _label_images(
    planes: dict[int, dict[int, np.ndarray]],
    values: dict[int, int],
    shape: tuple[int, int, int],
    dtype: Any,
) -> Iterator[LabelImage]:
    """One label image for ROIs that do not overlap, else one per ROI (made one at a
    time: a structure set of many ROIs never holds them all)."""
    covered: dict[int, np.ndarray] = {}
    overlapping = False
    for slices in planes.values():
        for slice_index, plane in slices.items():
            seen = covered.setdefault(slice_index, np.zeros(shape[1:], bool))
            overlapping = overlapping or bool((seen & plane).any())
            seen |= plane
    if not overlapping:
        data = np.zeros(shape, dtype)
        for number, slices in planes.items():
            for slice_index, plane in slices.items():
                data[slice_index][plane] = values[number]
        yield LabelImage("", data, values)
        return
    for number, slices in sorted(planes.items()):
        data = np.zeros(shape, dtype)
        for slice_index, plane in slices.items():
            data[slice_index][plane] = values[number]
        yield LabelImage(f"-roi-{number}", data, {number: values[number]})


def _frame_of(structure_set: Any) -> str:
    frames = structure_set.get("ReferencedFrameOfReferenceSequence") or []
    return str(frames[0].get("FrameOfReferenceUID", "") or "") if len(frames) == 1 else ""


def _closed_contours(structure_set: Any) -> Iterator[tuple[int, np.ndarray]]:
    """(ROI number, points (n, 3) in LPS mm) of every closed planar contour."""
    for roi in structure_set.get("ROIContourSequence") or []:
        number = int(roi.ReferencedROINumber)
        for contour in roi.get("ContourSequence") or []:
            if str(contour.get("ContourGeometricType", "")) != "CLOSED_PLANAR":
                continue
            data = np.asarray([float(v) for v in contour.get("ContourData") or []], float)
            if data.size < 9 or data.size % 3:
                raise NotPlaceable("a contour has fewer than three points")
            yield number, data.reshape(-1, 3)


def _touches(index: np.ndarray, shape: tuple[int, int, int]) -> bool:
    """Whether the contour's bounding box meets the slice's pixel centres."""
    ys, xs = index[:, 1], index[:, 2]
    return bool(
        ys.max() >= 0 and xs.max() >= 0 and ys.min() <= shape[1] - 1 and xs.min() <= shape[2] - 1
    )


def fill_polygon(ys: np.ndarray, xs: np.ndarray, shape: tuple[int, int]) -> np.ndarray:
    """The pixels of a (rows, columns) grid whose centres lie inside the polygon with
    vertices (``ys``, ``xs``) in pixel coordinates, by the even-odd rule, scan line by
    scan line. A centre exactly on an edge counts as inside on a top or left edge and
    outside on a bottom or right one (the top-left rule of raster graphics), so the
    pixels filled cover the polygon's area and two ROIs that share an edge never share
    a pixel."""
    mask = np.zeros(shape, bool)
    y0, x0 = np.asarray(ys, float), np.asarray(xs, float)
    y1, x1 = np.roll(y0, -1), np.roll(x0, -1)
    first = max(0, math.ceil(float(y0.min())))
    last = min(shape[0] - 1, math.ceil(float(y0.max())) - 1)
    for row in range(first, last + 1):
        crossing = ((y0 <= row) & (y1 > row)) | ((y1 <= row) & (y0 > row))
        if not crossing.any():
            continue
        along = (row - y0[crossing]) / (y1[crossing] - y0[crossing])
        edges = np.sort(x0[crossing] + along * (x1[crossing] - x0[crossing]))
        for start, stop in zip(edges[0::2], edges[1::2], strict=False):
            left = max(0, math.ceil(float(start)))
            right = min(shape[1] - 1, math.ceil(float(stop)) - 1)
            if left <= right:
                mask[row, left : right + 1] = True
    return mask
