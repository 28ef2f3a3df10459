"""The ``labels`` operator: every segmentation (DICOM SEG) and RT Structure Set in the
lake, as masks on the image stack it segments or outlines (an OME-Zarr ``labels`` group
beside the image; contours rasterized, :mod:`dicomflow.labels.contours`) and as rows
of the ``segments`` table (a segment or an ROI a row).

It is a *lake* operator: it runs once the run's series are committed, over the whole
lake, so a SEG finds its images whether they came in the same run or another one. A
SEG whose images are not in the lake yet is indexed (its segments, with the status
``waiting``) and placed by a later run with ``labels`` once they arrive. Work is done
on the cluster: one task reads each SEG, then one task per image stack places the
SEGs that land on it (one writer a stack). It returns one record per SEG carrying
its ``segments`` rows, plus a failed record for each SEG that cannot be placed (its
error row; the SEG keeps its ``instances`` row).
"""

from __future__ import annotations

import io
from collections import Counter
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any, ClassVar

import fsspec
import highdicom as hd
import pydicom
from distributed import Client

from dicomflow.errors import ErrorCode
from dicomflow.labels.contours import (
    RTSTRUCT_CLASS,
    contour_label_images,
    referenced_instances,
    roi_rows,
)
from dicomflow.labels.place import write_label
from dicomflow.labels.segments import (
    SEG_CLASSES,
    SEGMENTS_SCHEMA,
    SEGMENTS_TABLE,
    NotPlaceable,
    Target,
    label_images,
    placed,
    segment_rows,
)
from dicomflow.lake.layout import LakeLayout, safe_uid_component
from dicomflow.lake.reader import Lake
from dicomflow.lake.zarr_store import open_stack_group
from dicomflow.operators.base import OperatorKind, Outputs, RunSettings, TableOutput
from dicomflow.records import Batch, InstanceRecord, SourceRef
from dicomflow.schemas.spec import LabelsOperator

STAGE = "labels"
LABEL_CLASSES = SEG_CLASSES | {RTSTRUCT_CLASS}
COLUMNS = ["SOPInstanceUID", "SOPClassUID", "FrameOfReferenceUID", "source"]
PIXEL_COLUMNS = ["zarr_path", "frame_index"]
WAITING = "waiting for the images it segments"
SPREAD = "it references instances of more than one image stack (outside its series)"


@dataclass(frozen=True)
class Described:
    """What a task read from one SEG: its rows and the instances it references."""

    source: str
    rows: list[dict[str, Any]]
    references: list[str]
    error: str | None = None


@dataclass(frozen=True)
class Labels:
    """Place every SEG of the lake on its stack; fill ``segments``."""

    storage_options: dict[str, Any] = field(default_factory=dict, repr=False, compare=False)

    name: ClassVar[str] = "labels"
    kind: ClassVar[OperatorKind] = "lake"
    Config: ClassVar[type[LabelsOperator]] = LabelsOperator
    outputs: ClassVar[Outputs] = Outputs(
        tables=(TableOutput(SEGMENTS_TABLE, SEGMENTS_SCHEMA, "1"),)
    )
    needs_pixels: ClassVar[bool] = False

    @classmethod
    def build(cls, config: LabelsOperator, run: RunSettings) -> Labels:
        return cls(dict(run.source_storage_options))

    def __call__(self, batch: Batch) -> Batch:
        return batch  # a lake operator sees the lake, not batches (see on_lake)

    def on_lake(self, client: Client, layout: LakeLayout) -> list[InstanceRecord]:
        """Index and place every SEG of the lake at ``layout``; its records."""
        lake = Lake(layout.root, layout.storage_options)
        present = set(lake.dataset("instances").schema.names)
        columns = [c for c in COLUMNS + PIXEL_COLUMNS if c in present]
        rows = lake.instances(columns=columns).to_pylist()
        segs = [r for r in rows if r.get("SOPClassUID") in LABEL_CLASSES and r.get("source")]
        if not segs:
            return []
        sources = sorted({r["source"] for r in segs})
        described: list[Described] = client.gather(
            client.map(_describe, sources, storage_options=self.storage_options, pure=False)
        )
        slices: dict[str, dict[str, int]] = {}
        frames_of_reference: dict[str, str | None] = {}
        where: dict[str, str] = {}
        for row in rows:
            path = row.get("zarr_path")
            if path and row.get("frame_index") is not None:
                slices.setdefault(path, {})[row["SOPInstanceUID"]] = int(row["frame_index"])
                frames_of_reference.setdefault(path, row.get("FrameOfReferenceUID"))
                where[row["SOPInstanceUID"]] = path
        by_stack: dict[str, list[Described]] = {}
        records: list[InstanceRecord] = []
        for seg in described:
            found = Counter(where[uid] for uid in seg.references if uid in where)
            if seg.error is None and len(found) > 1:
                why = f"not placed: {SPREAD}"
                records.extend(_records(seg.source, placed(seg.rows, None, {}, why), why))
                continue
            if seg.error is not None or not found:
                status = WAITING if seg.error is None else f"not placed: {seg.error}"
                records.extend(_records(seg.source, placed(seg.rows, None, {}, status), seg.error))
                continue
            by_stack.setdefault(found.most_common(1)[0][0], []).append(seg)
        stacks = sorted(by_stack)
        done = client.gather(
            client.map(
                _place_on_stack,
                stacks,
                [by_stack[s] for s in stacks],
                [slices[s] for s in stacks],
                [frames_of_reference[s] for s in stacks],
                layout=layout,
                storage_options=self.storage_options,
                pure=False,
            )
        )
        for results in done:
            for source, rows_placed, error in results:
                records.extend(_records(source, rows_placed, error))
        return records


def _records(source: str, rows: list[dict[str, Any]], error: str | None) -> list[InstanceRecord]:
    """The SEG's record with its ``segments`` rows, and a failed one for its error row."""
    found = [InstanceRecord(SourceRef(f"{source}#labels")).with_output(SEGMENTS_TABLE, rows)]
    if error is not None:
        failed = InstanceRecord(SourceRef(f"{source}#labels-not-placed"))
        found.append(failed.with_error(STAGE, ErrorCode.NOT_PLACED, error))
    return found


def _read(source: str, storage_options: dict[str, Any]) -> Any:
    """A highdicom Segmentation, or a pydicom dataset for an RT Structure Set."""
    with fsspec.open(source, "rb", **storage_options) as handle:
        data = handle.read()
    dataset = pydicom.dcmread(io.BytesIO(data), force=True)
    if str(dataset.get("SOPClassUID", "")) == RTSTRUCT_CLASS:
        return dataset
    return hd.seg.segread(io.BytesIO(data))


def _is_structure_set(labels: Any) -> bool:
    return not isinstance(labels, hd.seg.Segmentation)


def _describe(source: str, *, storage_options: dict[str, Any]) -> Described:
    """Task: one SEG's or structure set's ``segments`` rows and the SOP Instance UIDs it
    segments or outlines."""
    try:
        labels = _read(source, storage_options)
        if _is_structure_set(labels):
            return Described(source, roi_rows(labels), referenced_instances(labels))
        return Described(
            source, segment_rows(labels), [uids[2] for uids in labels.get_source_image_uids()]
        )
    except Exception as exc:  # any reading fault of this one file
        return Described(source, [], [], f"the labels cannot be read ({type(exc).__name__})")


def _place_on_stack(
    zarr_path: str,
    segs: Sequence[Described],
    slices: dict[str, int],
    frame_of_reference: str | None,
    *,
    layout: LakeLayout,
    storage_options: dict[str, Any],
) -> list[tuple[str, list[dict[str, Any]], str | None]]:
    """Task: place each of ``segs`` on the stack at ``zarr_path`` (the one writer of its
    ``labels`` group in this run)."""
    stack = open_stack_group(layout, zarr_path)
    attrs: Any = dict(stack.attrs)  # JSON, as written by the pixels operator
    (multiscale, *_) = attrs["ome"]["multiscales"]
    level: Any = stack[str(multiscale["datasets"][0]["path"])]
    shape = level.shape[-3:]
    target = Target(
        zarr_path,
        (int(shape[0]), int(shape[1]), int(shape[2])),
        slices,
        frame_of_reference,
        attrs.get("affine"),
    )
    results: list[tuple[str, list[dict[str, Any]], str | None]] = []
    for described in segs:
        try:
            labels = _read(described.source, storage_options)
            paths: dict[int, str] = {}
            values: dict[int, int] = {}
            name = safe_uid_component(str(labels.SOPInstanceUID))
            uids = {"SOPInstanceUID": str(labels.SOPInstanceUID)}
            for image in _label_images(labels, target):
                written = write_label(layout, zarr_path, name + image.suffix, image, uids)
                paths.update(dict.fromkeys(image.values, written))
                values.update(image.values)
            rows = placed(described.rows, target, paths, "placed", values)
            results.append((described.source, rows, None))
        except NotPlaceable as exc:
            why = f"not placed: {exc}"
            results.append((described.source, placed(described.rows, target, {}, why), why))
        except Exception as exc:  # this SEG only
            why = f"not placed: the masks could not be made ({type(exc).__name__})"
            results.append((described.source, placed(described.rows, target, {}, why), why))
    return results


def _label_images(labels: Any, target: Target) -> Iterable[Any]:
    """A SEG's masks, or a structure set's rasterized contours, on ``target``."""
    if not _is_structure_set(labels):
        return label_images(labels, target)
    if target.affine is None:
        raise NotPlaceable("the stack it outlines has no geometry to rasterize contours on")
    return contour_label_images(labels, target, target.affine)
