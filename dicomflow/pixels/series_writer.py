"""Write a series' pixel stacks: frames encoded where they are decoded, shards written whole.

Every series takes one path (:mod:`dicomflow.pipelines.series_tasks` builds its graph):

1. The tasks that read the series' headers also decode its images and encode every
   frame as its Zarr chunk (:func:`encode_images`): the work that grows with the
   series is shared by those tasks, and overlaps the header reading.
2. One task plans the stacks from the rows (:func:`write_series`), gathers each
   shard's chunks from the encoded frames and writes it whole (one file or object a
   shard: :mod:`dicomflow.lake.shards`), adds pyramid levels to large 2-D images,
3. and commits (:func:`commit_series`): attributes and QC flags, every stack renamed
   into place, each instance row pointed at its frames, the ``series`` rows.

An instance that cannot be decoded becomes an error row and its stack is
flagged ``missing_frames``; the rest of the series is still written. The task of
steps 2 and 3 may be computed again (its worker died): it writes the same stacks
again, or, once its run committed them, only counts the outcomes again.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, BinaryIO, cast

import numpy as np
from fsspec.core import url_to_fs
from pydicom.dataset import Dataset

from dicomflow.dicom.clamped import ClampedReads
from dicomflow.dicom.geometry import SliceInfo, Stack, split_stacks
from dicomflow.errors import ErrorCode, describe_failure, is_instance_fault
from dicomflow.lake.layout import LakeLayout
from dicomflow.lake.shards import Chunk, shard_parts
from dicomflow.lake.zarr_store import (
    ChunkEncoder,
    ShardWriter,
    StackLocation,
    as_chunk,
    commit_stack,
    committed_array,
    create_temporary_stack,
    decoded_frame_shape,
    discard_stack,
    frames_per_shard,
    stack_shape,
    stack_temporary,
    write_level,
)
from dicomflow.pixels.decode import (
    DEFAULT_MEMORY_BUDGET,
    DecodedPixels,
    PixelDecodeError,
    decode,
    read_dataset,
)
from dicomflow.pixels.header_dataset import dataset_from_header
from dicomflow.pixels.plain import PlainImage
from dicomflow.pixels.pyramid import pyramid
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
# Where a record carries its frames encoded when the run's instance operators decoded it
# already (:class:`dicomflow.operators.write_pixels.EncodeFrames`), until its series' reading
# task collects them.
ENCODED_OUTPUT = "encoded_frames"
INSTANCES = INSTANCES_OUTPUT


@dataclass(frozen=True)
class PixelOptions:
    """How pixels are read and written (resolved on the client, shipped to workers)."""

    layout: LakeLayout
    storage_options: dict[str, Any] = field(default_factory=dict)
    memory_budget: int = DEFAULT_MEMORY_BUDGET
    frames_per_chunk: int = 1
    expand_palette: bool = False  # PALETTE COLOR as RGB instead of indices + palette
    pyramid: bool = False  # pyramid levels for volumes too, not only large 2-D images


@dataclass(frozen=True)
class EncodedImage:
    """One decoded instance as its stack needs it: each frame encoded as its chunk (None
    for an all-zero frame, which has none), and the facts of the decode."""

    dtype: str
    shape: tuple[int, ...]  # as decoded: (frames, rows, cols[, samples])
    reference: dict[str, Any]
    chunks: tuple[Chunk | None, ...]

    @property
    def nbytes(self) -> int:
        return sum(len(c) for c in self.chunks if c is not None)


Encoded = Mapping[int, EncodedImage | ErrorInfo]  # record index in the series -> outcome


def encode_images(
    records: Sequence[InstanceRecord], infos: Sequence[SliceInfo], options: PixelOptions
) -> dict[int, EncodedImage | ErrorInfo]:
    """Decode the images among ``records`` (``infos`` describes them, indexed by their
    position in ``records``) and encode each frame as its chunk; one instance's pixels
    are held at a time."""
    encode = ChunkEncoder()
    encoded: dict[int, EncodedImage | ErrorInfo] = {}
    for info in infos:
        record = records[info.index]
        ready = record.outputs.get(ENCODED_OUTPUT)  # encoded as the run's operators decoded it
        try:
            if not isinstance(ready, EncodedImage):
                ready = encode_decoded(
                    decode_instance(record.ref.url, options, record.header), encode
                )
            encoded[info.index] = with_frames(ready, info.frames)
        except BaseException as exc:  # one bad instance must not sink the series
            if not is_instance_fault(exc):  # Ctrl-C, exit: not the instance's fault
                raise
            encoded[info.index] = error_info(exc)
    return encoded


@dataclass
class StackPlan:
    name: str
    location: StackLocation
    stack: Stack
    temporary: str | None = None
    reference: dict[str, Any] | None = None
    dtype: str | None = None
    shape: tuple[int, ...] | None = None  # the array's, in its axis order
    levels: int = 1


@dataclass
class SeriesPlan:
    """A series' stacks as written, and the outcome of each of its images."""

    records: list[InstanceRecord]
    stacks: list[StackPlan]
    outcomes: dict[int, ErrorInfo | None]  # record index -> None (written) or the error
    started: float = 0.0  # wall-clock time the series' first task began (for run reports)
    run_id: str = ""


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


def write_series(
    records: Sequence[InstanceRecord],
    encoded: Encoded,
    options: PixelOptions,
    run_id: str,
    infos: Sequence[SliceInfo] | None = None,
) -> SeriesPlan:
    """Plan the series' stacks and write each one's shards and pyramid levels from the
    ``encoded`` images; an image missing from ``encoded`` is decoded here. A stack this
    run committed already (the task is computed again) is only counted again."""
    plan = SeriesPlan(list(records), plan_stacks(records, infos), {}, run_id=run_id)
    for stack_plan in plan.stacks:
        frames = _stack_frames(stack_plan, plan, encoded, options)
        if frames is None:
            continue
        if committed_array(options.layout, stack_plan.location, run_id) is not None:
            stack_plan.temporary = stack_temporary(options.layout, stack_plan.location, run_id)
            continue
        _write_stack(stack_plan, frames, options, run_id)
    return plan


def _stack_frames(
    stack_plan: StackPlan, plan: SeriesPlan, encoded: Encoded, options: PixelOptions
) -> list[Chunk | None] | None:
    """Every frame of the stack as its chunk bytes, in stack order (None for frames that
    are all zero or whose instance failed), typed and shaped by the stack's first
    decoded instance; None when no instance decoded. Records each outcome."""
    first: EncodedImage | None = None
    placed: dict[int, tuple[Chunk | None, ...]] = {}  # first frame -> the instance's chunks
    offset = 0
    for info in stack_plan.stack.slices:
        start, offset = offset, offset + info.frames
        outcome = encoded.get(info.index)
        try:
            if outcome is None:  # not decoded where it was read
                outcome = encode_images(plan.records, [info], options)[info.index]
            if isinstance(outcome, ErrorInfo):
                plan.outcomes[info.index] = outcome
                continue
            first = first or outcome
            placed[start] = fitted(outcome, first)
            plan.outcomes[info.index] = None
        except BaseException as exc:  # one bad instance must not sink the series
            if not is_instance_fault(exc):
                raise
            plan.outcomes[info.index] = error_info(exc)
    if first is None:  # nothing decoded: no frames are held for what headers claimed
        return None
    frames: list[Chunk | None] = [None] * stack_plan.stack.frames
    for start, chunks in placed.items():
        frames[start : start + len(chunks)] = chunks
    stack_plan.reference, stack_plan.dtype = first.reference, first.dtype
    stack_plan.shape = stack_shape(stack_plan.stack.frames, first.shape[1:])
    stack_plan.levels = len(pyramid_shapes(stack_plan.shape, options))
    return frames


def fitted(image: EncodedImage, first: EncodedImage) -> tuple[Chunk | None, ...]:
    """``image``'s chunks as its stack (typed and shaped by ``first``) holds them: as they
    are, or decoded, cast (when every value fits) and encoded again."""
    if image.shape[1:] != first.shape[1:]:
        raise PixelDecodeError(
            "frame shape differs from the rest of the stack", code=ErrorCode.DECODE_FAILED
        )
    if image.dtype == first.dtype:
        return image.chunks
    codec, target = ChunkEncoder(), np.dtype(first.dtype)
    frame_shape = (1, *image.shape[1:])
    chunks = []
    for data in image.chunks:
        frame = codec.decode(data, np.dtype(image.dtype), frame_shape)
        check_fits(frame, target)
        chunks.append(codec(frame.astype(target)))
    return tuple(chunks)


def _write_stack(
    stack_plan: StackPlan, frames: list[Chunk | None], options: PixelOptions, run_id: str
) -> None:
    """Create the stack's array and write its shards (each whole) and pyramid levels."""
    assert stack_plan.shape is not None and stack_plan.dtype is not None
    dtype, shape = np.dtype(stack_plan.dtype), stack_plan.shape
    per_chunk = options.frames_per_chunk
    temporary = create_temporary_stack(
        options.layout,
        stack_plan.location,
        shape=shape,
        dtype=dtype,
        frames_per_chunk=per_chunk,
        run_id=run_id,
    )
    stack_plan.temporary = temporary
    chunks = frames if per_chunk == 1 else _grouped(frames, per_chunk, dtype, shape)
    per_shard = frames_per_shard(shape, dtype, per_chunk) // per_chunk
    write = ShardWriter(temporary, options.layout, len(shape))
    for number in range(math.ceil(len(chunks) / per_shard)):
        shard = list(chunks[number * per_shard : (number + 1) * per_shard])
        parts = shard_parts(shard + [None] * (per_shard - len(shard)))
        if parts is not None:
            write(number, parts)
    if stack_plan.levels > 1:
        codec, frame = ChunkEncoder(), (1, *decoded_frame_shape(shape))
        volume = np.concatenate([codec.decode(f, dtype, frame) for f in frames])
        nearest = "palette" in (stack_plan.reference or {})
        levels = pyramid(volume, stack_plan.levels, nearest=nearest)
        for level, halved in enumerate(levels[1:], 1):
            write_level(temporary, options.layout, level, as_chunk(halved))


def _grouped(
    frames: Sequence[Chunk | None], per_chunk: int, dtype: np.dtype, shape: tuple[int, ...]
) -> list[bytes | None]:
    """Frames encoded one a chunk as chunks of ``per_chunk`` frames each."""
    codec, frame_shape = ChunkEncoder(), (1, *decoded_frame_shape(shape))
    chunks = []
    for start in range(0, len(frames), per_chunk):
        group = [codec.decode(f, dtype, frame_shape) for f in frames[start : start + per_chunk]]
        group += [np.zeros(frame_shape, dtype)] * (per_chunk - len(group))
        chunks.append(codec(np.concatenate(group)))
    return chunks


LARGEST_FLAT = 2048  # a 2-D image whose longest side exceeds this gets pyramid levels
SMALLEST_LEVEL = 512  # levels halve y and x until the longest side is at most this


def pyramid_shapes(shape: tuple[int, ...], options: PixelOptions) -> list[tuple[int, int]]:
    """The (rows, cols) of each resolution level of a stack shaped ``shape`` (the array's
    axis order): a 2-D image longer than :data:`LARGEST_FLAT`, or any stack with
    ``options.pyramid``, halves until its longest side is :data:`SMALLEST_LEVEL` or less."""
    rows, cols = shape[-2], shape[-1]
    frames = shape[-3]
    levels = [(rows, cols)]
    if not (frames == 1 and max(rows, cols) > LARGEST_FLAT) and not options.pyramid:
        return levels
    while max(rows, cols) > SMALLEST_LEVEL:
        rows, cols = math.ceil(rows / 2), math.ceil(cols / 2)
        levels.append((rows, cols))
    return levels


def commit_series(plan: SeriesPlan, context: RunContext, options: PixelOptions) -> Batch:
    """Commit every stack, annotate rows, record errors, emit ``series`` rows."""
    outcomes = plan.outcomes
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
        assert stack_plan.shape is not None
        uids = [i.sop_instance_uid or "" for i in stack_plan.stack.slices for _ in range(i.frames)]
        commit_stack(
            stack_plan.temporary,
            options.layout,
            stack_plan.location,
            spacing=stack_plan.stack.spacing,
            affine=stack_plan.stack.affine,
            attributes={**stack_plan.reference, "sop_instance_uids": uids, "qc_flags": flags},
            shape=stack_plan.shape,
            run_id=context.run_id,
            levels=stack_plan.levels,
            units=space_units(flags),
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


def space_units(flags: Sequence[str]) -> tuple[str | None, str | None, str | None]:
    """The unit of the z, y and x axes of a stack with QC ``flags``: millimetres where
    the geometry gives them, None (pixels) where it is missing."""
    z = None if "missing_geometry" in flags else "millimeter"
    yx = None if "missing_pixel_spacing" in flags else "millimeter"
    return z, yx, yx


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


@contextmanager
def _reading(url: str, storage_options: Mapping[str, Any]) -> Iterator[BinaryIO]:
    """The source at ``url``, its reads clamped (a damaged length costs no more); failing
    to read it is the instance's :class:`PixelDecodeError`."""
    try:
        with _open(url, storage_options) as opened:
            yield cast(BinaryIO, ClampedReads.of(opened))
    except OSError as exc:
        raise PixelDecodeError(
            f"cannot read the source ({type(exc).__name__})", code=ErrorCode.UNREADABLE
        ) from exc


def open_dataset(
    url: str, storage_options: Mapping[str, Any], header: Header | None = None
) -> Dataset:
    """The whole instance at ``url`` as pydicom reads it, Pixel Data included; with the
    ``header`` its scan read, only Pixel Data is read from the file
    (:mod:`dicomflow.pixels.header_dataset`)."""
    with _reading(url, storage_options) as fp:
        ds = dataset_from_header(header, fp) if header is not None else None
        if ds is None:
            fp.seek(0)
            ds = read_dataset(fp)
    return ds


def decode_instance(url: str, options: PixelOptions, header: Header | None = None) -> DecodedPixels:
    """Decode the instance at ``url``: a plain monochrome image (native or RLE) straight
    from its ``header`` and Pixel Data (:mod:`dicomflow.pixels.plain`), any other through
    pydicom (see :func:`open_dataset`)."""
    image = PlainImage.of(header, options.memory_budget)
    if image is not None:
        with _reading(url, options.storage_options) as fp:
            pixels = image.read(fp)
        if pixels is not None:
            return pixels
    ds = open_dataset(url, options.storage_options, header)
    return decode(ds, memory_budget=options.memory_budget, expand_palette=options.expand_palette)


def encode_decoded(pixels: DecodedPixels, encode: ChunkEncoder) -> EncodedImage:
    """An instance's decoded ``pixels`` as its stack's chunks, one per frame."""
    array = pixels.array
    chunks = tuple(encode(array[f : f + 1]) for f in range(len(array)))
    return EncodedImage(str(array.dtype), tuple(array.shape), reference_attributes(pixels), chunks)


def with_frames(image: EncodedImage, frames: int) -> EncodedImage:
    """``image``, whose header says it holds ``frames`` frames, if it decoded to that many."""
    if image.shape[0] != frames:
        raise PixelDecodeError(
            "decoded frame count differs from the header", code=ErrorCode.DECODE_FAILED
        )
    return image


def _locate(record: InstanceRecord, location: StackLocation, frame: int) -> InstanceRecord:
    row = {**record.outputs[INSTANCES], "zarr_path": location.relative_path, "frame_index": frame}
    return dataclasses.replace(record, outputs={**record.outputs, INSTANCES: row})


def check_fits(pixels: np.ndarray, dtype: np.dtype) -> None:
    """An instance decoded to another type than its stack's must hold values that fit."""
    if pixels.dtype == dtype or np.can_cast(pixels.dtype, dtype):
        return
    both_integer = np.issubdtype(dtype, np.integer) and np.issubdtype(pixels.dtype, np.integer)
    limits = np.iinfo(dtype) if both_integer else None
    if limits is None or not (limits.min <= pixels.min() and pixels.max() <= limits.max):
        raise PixelDecodeError(
            "pixel values do not fit the stack's data type", code=ErrorCode.DECODE_FAILED
        )
