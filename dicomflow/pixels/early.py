"""Decode a series' pixels while its headers are read, before its stacks are planned.

Where each frame goes is known only once every header of the series is read and
its stacks are planned. Rather than wait for that, the tasks reading the headers
also decode each image and write its frames, encoded exactly as their chunks will
be, into a scratch folder of the run; the plan then renames every frame into its
chunk. Decoding so overlaps the header work instead of following it.

Only for local lakes with one frame per chunk (:func:`applies`): object stores
cannot rename, and larger chunks mix instances. An instance whose decoded type or
shape differs from its stack's is decoded again and written the ordinary way.
"""

from __future__ import annotations

import hashlib
import logging
import shutil
from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path

import zarr

from dicomflow.dicom.geometry import SliceInfo
from dicomflow.errors import is_instance_fault
from dicomflow.lake.zarr_store import (
    PIXELS_ROOT,
    ChunkEncoder,
    FrameWriter,
    committed_array,
    stack_temporary,
)
from dicomflow.pixels.series_writer import (
    InstancePixels,
    PixelOptions,
    SeriesPlan,
    StackPlan,
    WorkItem,
    check_fits,
    decode_item,
    error_info,
    plan_stacks,
    start_stack,
)
from dicomflow.records import Batch, ErrorInfo, InstanceRecord

logger = logging.getLogger(__name__)

Decoded = Mapping[int, InstancePixels | ErrorInfo]  # record index in the series -> outcome


def applies(options: PixelOptions) -> bool:
    """Whether a series is decoded early: local lake, one frame per chunk."""
    return options.layout.is_local() and options.frames_per_chunk == 1


def scratch_folder(options: PixelOptions, series: str, run_id: str) -> str:
    """The series' scratch folder for this run: hidden and ``.tmp``, so what a killed run
    leaves is swept with its other temporaries."""
    _, root = options.layout.filesystem()
    token = hashlib.sha256(run_id.encode()).hexdigest()[:16]
    return f"{root}/{PIXELS_ROOT}/.scratch-{series}-{token}.tmp"


def decode_to_scratch(
    records: Sequence[InstanceRecord],
    infos: Sequence[SliceInfo],
    chunks: Sequence[str],
    scratch: str,
    options: PixelOptions,
) -> dict[int, InstancePixels | ErrorInfo]:
    """Decode the images among ``records`` (``infos`` describes them, indexed by their
    position in ``records``) and write frame ``f`` of record ``i``, encoded as its chunk,
    to ``{chunks[i]}.{f}`` in the ``scratch`` folder."""
    try:
        Path(scratch).mkdir(parents=True, exist_ok=True)
    except OSError:  # the plan decodes these instances itself
        logger.warning("cannot create a pixel scratch folder; decoding at the plan instead")
        return {}
    encode = ChunkEncoder()
    decoded: dict[int, InstancePixels | ErrorInfo] = {}
    for info in infos:
        index = info.index
        record = records[index]
        try:
            item = WorkItem(index, -1, 0, info.frames, record.ref.url)
            pixels = decode_item(item, options, record.header)
            written = []
            for frame, data in enumerate(map(encode, pixels.array)):
                if data is not None:
                    Path(f"{chunks[index]}.{frame}").write_bytes(data)
                    written.append(frame)
            decoded[index] = InstancePixels.of(pixels, tuple(written))
        except BaseException as exc:  # one bad instance must not sink the series
            if not is_instance_fault(exc):  # Ctrl-C, exit: not the instance's fault
                raise
            decoded[index] = error_info(exc)
    return decoded


def plan_decoded(
    batch: Batch,
    decoded: Decoded,
    chunks: Sequence[str],
    scratch: Sequence[str],
    options: PixelOptions,
    infos: Sequence[SliceInfo] | None = None,
) -> SeriesPlan:
    """Plan the stacks and move every decoded frame into its chunk: the whole pixel work
    of the series but its commit (the plan has no work items left). An instance not
    decoded early is decoded here; one of another type or shape than its stack's is
    decoded again and cast if its values fit."""
    records = list(batch.records)  # the reading tasks dropped the headers already
    run_id = batch.context.run_id
    stacks = plan_stacks(records, infos)
    plan = SeriesPlan(records, stacks, [], {}, run_id=run_id, scratch=tuple(scratch))
    for number, stack_plan in enumerate(plan.stacks):
        committed = committed_array(options.layout, stack_plan.location, run_id)
        if committed is not None:
            _recount(stack_plan, number, plan, decoded, committed, options)
        else:
            _place(stack_plan, number, plan, decoded, chunks, options)
    return plan


def _place(
    stack_plan: StackPlan,
    number: int,
    plan: SeriesPlan,
    decoded: Decoded,
    chunks: Sequence[str],
    options: PixelOptions,
) -> None:
    writer: FrameWriter | None = None
    first: InstancePixels | None = None
    for item, outcome in _decoded_slices(stack_plan, number, plan, decoded):
        try:
            pixels = None
            if outcome is None:  # not decoded early
                pixels = decode_item(item, options)
                outcome = InstancePixels.of(pixels)
            if writer is None or first is None:
                temporary = start_stack(stack_plan, outcome, options, plan.run_id)
                writer, first = FrameWriter(temporary, options.layout), outcome
            if pixels is None and _fits(outcome, first, item.frames):
                for written in outcome.written:
                    writer.place(item.frame + written, Path(f"{chunks[item.record]}.{written}"))
            else:
                pixels = decode_item(item, options) if pixels is None else pixels
                check_fits(pixels.array, writer.array)
                writer.write(item.frame, pixels.array)
            plan.outcomes[item.record] = None
        except BaseException as exc:  # one bad instance must not sink the series
            if not is_instance_fault(exc):  # Ctrl-C, exit: not the instance's fault
                raise
            plan.outcomes[item.record] = error_info(exc)


def _recount(
    stack_plan: StackPlan,
    number: int,
    plan: SeriesPlan,
    decoded: Decoded,
    array: zarr.Array,
    options: PixelOptions,
) -> None:
    """The stack was committed by this run already (the plan is computed again because the
    worker holding its result died before the commit's result was fetched): take each
    instance's outcome again, as the first plan found it, and touch no frame."""
    first: InstancePixels | None = None
    for item, outcome in _decoded_slices(stack_plan, number, plan, decoded):
        try:
            if outcome is None or (first is not None and not _fits(outcome, first, item.frames)):
                pixels = decode_item(item, options)
                check_fits(pixels.array, array)
                outcome = InstancePixels.of(pixels)
            first = first or outcome
            plan.outcomes[item.record] = None
        except BaseException as exc:
            if not is_instance_fault(exc):  # Ctrl-C, exit: not the instance's fault
                raise
            plan.outcomes[item.record] = error_info(exc)
    if first is not None:
        stack_plan.reference, stack_plan.dtype = first.reference, first.dtype
        stack_plan.shape = (stack_plan.stack.frames, *first.shape[1:])
        stack_plan.temporary = stack_temporary(options.layout, stack_plan.location, plan.run_id)


def _decoded_slices(
    stack_plan: StackPlan, number: int, plan: SeriesPlan, decoded: Decoded
) -> Iterator[tuple[WorkItem, InstancePixels | None]]:
    """Each slice of the stack as a work item with what early decoding made of it; the
    slices that failed there get their error in the plan and are left out."""
    frame = 0
    for info in stack_plan.stack.slices:
        item = WorkItem(info.index, number, frame, info.frames, plan.records[info.index].ref.url)
        frame += info.frames
        outcome = decoded.get(info.index)
        if isinstance(outcome, ErrorInfo):
            plan.outcomes[info.index] = outcome
        else:
            yield item, outcome


def remove_scratch(scratch: Sequence[str]) -> None:
    """Drop what is left of a series' scratch folders (frames of failed instances)."""
    for folder in scratch:
        shutil.rmtree(folder, ignore_errors=True)


def _fits(outcome: InstancePixels, first: InstancePixels, frames: int) -> bool:
    return (
        outcome.dtype == first.dtype
        and outcome.shape[1:] == first.shape[1:]
        and outcome.shape[0] == frames
    )
