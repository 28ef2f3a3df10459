"""Write a mask on a lake's image stack back out as a DICOM Segmentation (highdicom).

A model's output is usually an array on the grid of the stack it was given
(``open_series(..., as_numpy=True)``): its slices are the stack's slices, in the stack's
order. :func:`write_seg` finds the instance of each slice (the ``instances`` rows of
the stack, by ``frame_index``), reads those instances, and has highdicom build a binary
SEG that references them, with one segment per value of the mask. The SEG can go into
the lake (``ingest --labels`` places it back on the same stack) or to a PACS (``send``).
"""

from __future__ import annotations

import io
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import fsspec
import highdicom as hd
import numpy as np
import pydicom
from pydicom.dataset import Dataset
from pydicom.sr.codedict import codes
from pydicom.uid import generate_uid

from dicomflow._version import __version__
from dicomflow.errors import ConfigError
from dicomflow.labels.segment_info import SegmentInfo
from dicomflow.lake.reader import Lake


def stack_sources(
    lake: Lake, series_uid: str, stack: str | None = None
) -> tuple[str, list[Mapping[str, Any]]]:
    """The stack of ``series_uid`` (its largest, or the one whose path ends in ``stack``)
    and the ``instances`` rows of its slices, in the stack's order."""
    columns = ["SOPInstanceUID", "SeriesInstanceUID", "zarr_path", "frame_index", "source"]
    rows = [
        r
        for r in lake.instances(columns=columns).to_pylist()
        if r["SeriesInstanceUID"] == series_uid and r.get("zarr_path")
    ]
    paths = sorted({r["zarr_path"] for r in rows})
    if stack is not None:
        paths = [p for p in paths if p.rsplit("/", 1)[-1] == stack]
    if not paths:
        raise ConfigError("the lake has no image stack of that series (ingest it with --pixels)")
    chosen = max(paths, key=lambda p: sum(r["zarr_path"] == p for r in rows))
    slices = sorted((r for r in rows if r["zarr_path"] == chosen), key=lambda r: r["frame_index"])
    return chosen, slices


def write_seg(
    lake: Lake,
    series_uid: str,
    mask: np.ndarray,
    out: str | Path,
    *,
    segments: Mapping[int, SegmentInfo] | None = None,
    stack: str | None = None,
    storage_options: Mapping[str, Any] | None = None,
) -> Path:
    """Write ``mask`` (z, y, x on the stack's grid: 0 for background, n for segment n;
    or booleans for one segment) as a binary SEG at ``out``; return its path."""
    _, slices = stack_sources(lake, series_uid, stack)
    labels = np.asarray(mask)
    if labels.dtype == bool:
        labels = labels.astype(np.uint8)
    if not np.issubdtype(labels.dtype, np.integer) or labels.min(initial=0) < 0:
        raise ConfigError("a mask holds booleans or non-negative segment numbers")
    numbers = sorted(int(v) for v in np.unique(labels) if v)
    if not numbers:
        raise ConfigError("the mask is empty: a SEG needs at least one segment")
    sources = [_read(str(r["source"]), storage_options or {}) for r in slices]
    grid = (len(sources), int(sources[0].Rows), int(sources[0].Columns))
    if labels.shape != grid:
        raise ConfigError(f"the mask's shape {labels.shape} is not the stack's {grid}")
    if any(int(s.get("NumberOfFrames") or 1) > 1 for s in sources):
        raise ConfigError("SEGs of multi-frame images are not written yet")
    described = dict(segments or {})
    descriptions = [  # a SEG numbers its segments 1..n: n-th value of the mask, n-th segment
        _description(index, described.get(value, SegmentInfo(f"Segment {value}")))
        for index, value in enumerate(numbers, start=1)
    ]
    seg = hd.seg.Segmentation(
        source_images=sources,
        pixel_array=_renumbered(labels, numbers),
        segmentation_type=hd.seg.SegmentationTypeValues.BINARY,
        segment_descriptions=descriptions,
        series_instance_uid=generate_uid(),
        series_number=900,
        sop_instance_uid=generate_uid(),
        instance_number=1,
        manufacturer="dicomflow",
        manufacturer_model_name="dicomflow",
        software_versions=__version__,
        device_serial_number="0",
    )
    target = Path(out)
    seg.save_as(target)
    return target


def _renumbered(labels: np.ndarray, numbers: Sequence[int]) -> np.ndarray:
    """Segment numbers 1..n in the order of ``numbers`` (a SEG numbers its segments from
    one without gaps), as the label map highdicom expects."""
    if list(numbers) == list(range(1, len(numbers) + 1)):
        return labels.astype(np.uint16 if len(numbers) > 255 else np.uint8)
    out = np.zeros(labels.shape, np.uint16 if len(numbers) > 255 else np.uint8)
    for index, number in enumerate(numbers, start=1):
        out[labels == number] = index
    return out


def _description(number: int, info: SegmentInfo) -> hd.seg.SegmentDescription:
    return hd.seg.SegmentDescription(
        segment_number=number,
        segment_label=info.label,
        segmented_property_category=hd.sr.CodedConcept(*info.category),
        segmented_property_type=hd.sr.CodedConcept(*info.type),
        algorithm_type=hd.seg.SegmentAlgorithmTypeValues.AUTOMATIC,
        algorithm_identification=hd.AlgorithmIdentificationSequence(
            name=info.algorithm,
            family=codes.cid7162.ArtificialIntelligence,
            version=info.algorithm_version,
        ),
    )


def _read(source: str, storage_options: Mapping[str, Any]) -> Dataset:
    try:
        with fsspec.open(source, "rb", **storage_options) as handle:
            return pydicom.dcmread(io.BytesIO(handle.read()))
    except (OSError, pydicom.errors.InvalidDicomError) as exc:
        raise ConfigError(
            f"a slice's instance cannot be read from the lake's source ({type(exc).__name__})"
        ) from None
