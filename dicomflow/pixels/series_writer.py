"""Write a series' pixel stacks in three phases, so one series can use many workers.

1. :func:`plan_series` (one task): plan the stacks from the header rows, decode
   the first instance of each stack to learn its dtype, create each stack's
   Zarr array in a temporary directory, and list the remaining instances as
   work items with their frame offsets.
2. :func:`write_items` (many tasks): decode work items and write their frames
   into disjoint frame ranges (one Zarr chunk per frame, so writers never
   touch the same chunk). Memory: one instance at a time.
3. :func:`commit_series` (one task): set the attributes and QC flags, rename
   every stack into place, point each instance row at its frames, and emit the
   ``series`` rows.

An instance that cannot be decoded becomes an error row and its stack is
flagged ``missing_frames``; the rest of the series is still written.

In a local lake with one frame per chunk, :mod:`dicomflow.pixels.early` replaces
phases 1 and 2: frames are decoded while the headers are read, and the plan
moves them into place. Phase 3 is the same.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, BinaryIO, cast

import numpy as np
from fsspec.core import url_to_fs
from pydicom.dataset import Dataset

from dicomflow.dicom.geometry import SliceInfo, Stack, split_stacks
from dicomflow.errors import ErrorCode, describe_failure, is_instance_fault
from dicomflow.lake.layout import LakeLayout
from dicomflow.lake.zarr_store import (
    FrameWriter,
    StackLocation,
    commit_stack,
    committed_array,
    create_temporary_stack,
    discard_stack,
    open_temporary_array,
)
from dicomflow.pixels.decode import (
    DEFAULT_MEMORY_BUDGET,
    DecodedPixels,
    PixelDecodeError,
    decode,
    read_dataset,
)
from dicomflow.pixels.header_dataset import dataset_from_header
from dicomflow.pixels.slices import slice_infos
from dicomflow.records import (
    INSTANCES_OUTPUT,
    Batch,
    ErrorInfo,
    Header,
    InstanceRecord,
    RunContext,
)
from dicomflow.schemas.series import SERIES_SCHEMA_VERSION

STAGE = "write_pixels"
INSTANCES = INSTANCES_OUTPUT


@dataclass(frozen=True)
class PixelOptions:
    """How pixels are read and written (resolved on the client, shipped to workers)."""

    layout: LakeLayout
    storage_options: dict[str, Any] = field(default_factory=dict)
    memory_budget: int = DEFAULT_MEMORY_BUDGET
    frames_per_chunk: int = 1
    expand_palette: bool = False  # PALETTE COLOR as RGB instead of indices + palette


@dataclass(frozen=True)
class WorkItem:
    """One instance to decode: which record, which stack, where its frames go."""

    record: int
    stack: int
    frame: int
    frames: int
    url: str


@dataclass
class StackPlan:
    name: str
    location: StackLocation
    stack: Stack
    temporary: str | None = None
    reference: dict[str, Any] | None = None
    dtype: str | None = None
    shape: tuple[int, ...] | None = None


@dataclass
class SeriesPlan:
    """Everything phases 2 and 3 need; small enough to travel between workers."""

    records: list[InstanceRecord]
    stacks: list[StackPlan]
    items: list[WorkItem]
    outcomes: dict[int, ErrorInfo | None]  # record index -> None (written) or the error
    started: float = 0.0  # wall-clock time the series' first task began (for run reports)
    run_id: str = ""
    scratch: tuple[str, ...] = ()  # where frames decoded early wait (see pixels.early)


@dataclass(frozen=True)
class PixelWork:
    """The part of a plan the decode-and-write shares need: small, so it moves freely
    between workers (the plan itself carries every header row)."""

    items: tuple[WorkItem, ...]
    temporaries: dict[int, str]
    locations: dict[int, StackLocation]
    run_id: str


def pixel_work(plan: SeriesPlan) -> PixelWork:
    temporaries = {i: s.temporary for i, s in enumerate(plan.stacks) if s.temporary}
    locations = {i: s.location for i, s in enumerate(plan.stacks)}
    return PixelWork(tuple(plan.items), temporaries, locations, plan.run_id)


def plan_stacks(
    records: Sequence[InstanceRecord], infos: Sequence[SliceInfo] | None = None
) -> list[StackPlan]:
    """The series' stacks, split and ordered, each with its place in the lake (from the
    records' slice facts, or ``infos`` when they were taken already)."""
    if infos is None:
        infos = slice_infos(records)
    stacks = []
    for number, stack in enumerate(split_stacks(infos)):
        first_row = records[stack.slices[0].index].outputs[INSTANCES]
        location = StackLocation(
            first_row.get("StudyInstanceUID") or "unknown-study",
            first_row.get("SeriesInstanceUID") or "unknown-series",
            f"stack-{number}",
        )
        stacks.append(StackPlan(location.stack, location, stack))
    return stacks


def start_stack(
    stack_plan: StackPlan, first: InstancePixels, options: PixelOptions, run_id: str
) -> str:
    """Create the stack's array, typed and shaped by its first decoded instance; return
    its temporary."""
    stack_plan.reference = first.reference
    stack_plan.dtype = first.dtype
    stack_plan.shape = (stack_plan.stack.frames, *first.shape[1:])
    stack_plan.temporary = create_temporary_stack(
        options.layout,
        stack_plan.location,
        shape=stack_plan.shape,
        dtype=np.dtype(first.dtype),
        frames_per_chunk=options.frames_per_chunk,
        run_id=run_id,
    )
    return stack_plan.temporary


@dataclass(frozen=True)
class InstancePixels:
    """What a stack needs to know of one decoded instance (small: it travels between
    workers); ``written`` lists the frames that have a chunk (all-zero frames have none)."""

    dtype: str
    shape: tuple[int, ...]
    reference: dict[str, Any]
    written: tuple[int, ...] = ()

    @classmethod
    def of(cls, pixels: DecodedPixels, written: tuple[int, ...] = ()) -> InstancePixels:
        array = pixels.array
        return cls(str(array.dtype), tuple(array.shape), reference_attributes(pixels), written)


def plan_series(batch: Batch, options: PixelOptions) -> SeriesPlan:
    """Phase 1: plan stacks, create their arrays, write each stack's first instance."""
    records = [dataclasses.replace(r, header=None) for r in batch.records]  # headers stay here
    run_id = batch.context.run_id
    plan = SeriesPlan(records, plan_stacks(records), [], {}, run_id=run_id)
    for number, stack_plan in enumerate(plan.stacks):
        frame = 0
        for info in stack_plan.stack.slices:
            item = WorkItem(info.index, number, frame, info.frames, records[info.index].ref.url)
            frame += info.frames
            if stack_plan.temporary is not None:
                plan.items.append(item)
                continue
            try:
                pixels = decode_item(item, options)
                temporary = start_stack(stack_plan, InstancePixels.of(pixels), options, run_id)
                open_temporary_array(temporary, options.layout)[
                    item.frame : item.frame + item.frames
                ] = pixels.array
                plan.outcomes[item.record] = None
            except BaseException as exc:  # one bad instance must not sink the series
                if not is_instance_fault(exc):  # Ctrl-C, exit: not the instance's fault
                    raise
                plan.outcomes[item.record] = error_info(exc)
    return plan


def share_items(
    items: Sequence[WorkItem], part: int, parts: int, frames_per_chunk: int = 1
) -> list[WorkItem]:
    """The ``part``-th of ``parts`` shares of ``items``. With several frames per chunk, the
    items that write into one chunk stay in one share: zarr writes part of a chunk by
    reading and rewriting it, so two shares writing one chunk at once would lose frames."""
    if parts <= 1:
        return list(items)
    if frames_per_chunk == 1:
        return list(items[part::parts])
    groups: list[list[WorkItem]] = []
    for item in items:  # in frame order per stack: chunk-sharing items are neighbours
        if groups and groups[-1][-1].stack == item.stack and item.frame % frames_per_chunk:
            groups[-1].append(item)
        else:
            groups.append([item])
    return [item for group in groups[part::parts] for item in group]


def write_items(
    work: PixelWork, part: int, parts: int, options: PixelOptions
) -> dict[int, ErrorInfo | None]:
    """Phase 2: decode and write the ``part``-th of ``parts`` shares of the work items.

    A share Dask computes again after its series was committed (the worker holding
    its result died before the commit's result was fetched) finds the stack
    committed by its run: it decodes its items again, to report the outcomes the
    first attempt had, and writes nothing."""
    items = share_items(work.items, part, parts, options.frames_per_chunk)
    outcomes: dict[int, ErrorInfo | None] = {}
    writers: dict[int, FrameWriter] = {}
    committed: dict[int, Any] = {}  # stack -> its array, committed by this run already
    for item in items:
        try:
            writer = writers.get(item.stack)
            if writer is None and item.stack not in committed:
                array = committed_array(options.layout, work.locations[item.stack], work.run_id)
                if array is not None:
                    committed[item.stack] = array
                else:
                    temporary = work.temporaries[item.stack]
                    writer = writers[item.stack] = FrameWriter(temporary, options.layout)
            pixels = decode_item(item, options)
            check_fits(pixels.array, writer.array if writer else committed[item.stack])
            if writer is not None:
                writer.write(item.frame, pixels.array)
            outcomes[item.record] = None
        except BaseException as exc:  # one bad instance must not sink the series
            if not is_instance_fault(exc):  # Ctrl-C, exit: not the instance's fault
                raise
            outcomes[item.record] = error_info(exc)
    return outcomes


def commit_series(
    plan: SeriesPlan,
    shares: Sequence[dict[int, ErrorInfo | None]],
    context: RunContext,
    options: PixelOptions,
) -> Batch:
    """Phase 3: commit every stack, annotate rows, record errors, emit ``series`` rows."""
    outcomes = dict(plan.outcomes)
    for share in shares:
        outcomes.update(share)
    records = list(plan.records)
    series_rows = []
    for stack_plan in plan.stacks:
        written = [i for i in stack_plan.stack.slices if outcomes.get(i.index, True) is None]
        flags = list(stack_plan.stack.qc_flags)
        if len(written) < len(stack_plan.stack.slices):
            flags.append("missing_frames")
        if stack_plan.temporary is None or stack_plan.reference is None:
            continue
        if not written:
            discard_stack(stack_plan.temporary, options.layout)
            continue
        uids = [i.sop_instance_uid or "" for i in stack_plan.stack.slices for _ in range(i.frames)]
        commit_stack(
            stack_plan.temporary,
            options.layout,
            stack_plan.location,
            spacing=stack_plan.stack.spacing,
            affine=stack_plan.stack.affine,
            attributes={**stack_plan.reference, "sop_instance_uids": uids, "qc_flags": flags},
            run_id=context.run_id,
            shape=stack_plan.shape,
        )
        frame = 0
        for info in stack_plan.stack.slices:
            if outcomes.get(info.index, True) is None:
                records[info.index] = _locate(records[info.index], stack_plan.location, frame)
            frame += info.frames
        series_rows.append(_series_row(records, stack_plan, flags, uids, context.run_id))
    for index, outcome in outcomes.items():
        if outcome is not None:
            records[index] = records[index].with_fault(outcome.stage, outcome.code, outcome.message)
    placed = {info.index for s in plan.stacks for info in s.stack.slices}
    for index, record in enumerate(records):
        if index not in placed and has_image_row(record):
            records[index] = record.with_fault(
                STAGE, ErrorCode.UNSUPPORTED_PIXELS, "the image has no rows or no columns"
            )
    return Batch(tuple(records), context).with_table_rows("series", series_rows)


def has_image_row(record: InstanceRecord) -> bool:
    """Whether the record's row says it has Pixel Data (an image the stacks should hold)."""
    row = record.outputs.get(INSTANCES)
    return not record.failed and row is not None and bool(row.get("has_pixel_data"))


def _series_row(
    records: list[InstanceRecord],
    stack_plan: StackPlan,
    flags: list[str],
    uids: list[str],
    run_id: str,
) -> dict[str, Any]:
    first_row = records[stack_plan.stack.slices[0].index].outputs[INSTANCES]
    reference = stack_plan.reference or {}
    return {
        "StudyInstanceUID": first_row.get("StudyInstanceUID"),
        "SeriesInstanceUID": first_row.get("SeriesInstanceUID"),
        "stack": stack_plan.name,
        "Modality": first_row.get("Modality"),
        "frames": stack_plan.stack.frames,
        "shape": list(stack_plan.shape or ()),
        "dtype": stack_plan.dtype,
        "spacing": list(stack_plan.stack.spacing),
        "affine": [float(v) for v in np.asarray(stack_plan.stack.affine).ravel()],
        "qc_flags": flags,
        "photometric_interpretation": reference.get("photometric_interpretation"),
        "units": reference.get("units"),
        "rescale_applied": reference.get("rescale_applied"),
        "zarr_path": stack_plan.location.relative_path,
        "sop_instance_uids": uids,
        "run_id": run_id,
        "schema_version": SERIES_SCHEMA_VERSION,
    }


def reference_attributes(pixels: DecodedPixels) -> dict[str, Any]:
    return {
        "rescale_applied": pixels.rescale_applied,
        "units": pixels.units,
        "photometric_interpretation": pixels.photometric_interpretation,
        "window": {"center": pixels.window_center, "width": pixels.window_width},
        **({"palette": pixels.palette} if pixels.palette is not None else {}),
    }


def error_info(exc: BaseException) -> ErrorInfo:
    code, message = describe_failure(exc)
    return ErrorInfo(STAGE, code, message)


def _open(url: str, storage_options: Mapping[str, Any]) -> BinaryIO:
    """A local path opened directly (a quarter faster for pydicom than through fsspec's
    file wrapper); anything else through fsspec."""
    if "://" not in url:
        return Path(url).open("rb")
    fs, path = url_to_fs(url, **storage_options)
    return cast(BinaryIO, fs.open(path, "rb"))


def open_dataset(
    url: str, storage_options: Mapping[str, Any], header: Header | None = None
) -> Dataset:
    """The whole instance at ``url`` as pydicom reads it, Pixel Data included; with the
    ``header`` its scan read, only Pixel Data is read from the file
    (:mod:`dicomflow.pixels.header_dataset`)."""
    try:
        with _open(url, storage_options) as fp:
            ds = dataset_from_header(header, fp) if header is not None else None
            if ds is None:
                fp.seek(0)
                ds = read_dataset(fp)
    except OSError as exc:
        raise PixelDecodeError(
            f"cannot read the source ({type(exc).__name__})", code=ErrorCode.UNREADABLE
        ) from exc
    return ds


def decode_item(
    item: WorkItem, options: PixelOptions, header: Header | None = None
) -> DecodedPixels:
    """Decode one instance (see :func:`open_dataset`)."""
    ds = open_dataset(item.url, options.storage_options, header)
    pixels = decode(ds, memory_budget=options.memory_budget, expand_palette=options.expand_palette)
    if pixels.array.shape[0] != item.frames:
        raise PixelDecodeError(
            "decoded frame count differs from the header", code=ErrorCode.DECODE_FAILED
        )
    return pixels


def _locate(record: InstanceRecord, location: StackLocation, frame: int) -> InstanceRecord:
    row = {**record.outputs[INSTANCES], "zarr_path": location.relative_path, "frame_index": frame}
    return dataclasses.replace(record, outputs={**record.outputs, INSTANCES: row})


def check_fits(pixels: np.ndarray, array: Any) -> None:
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
