"""The ``write_pixels`` operator: decode a series, assemble its stacks, write them as OME-Zarr.

The batch is one series. This operator runs the steps of
:mod:`dicomflow.pixels.series_writer` back to back in one process; the ingest
pipeline spreads the decoding over several tasks, so a long series is decoded by
several workers at once. When instance operators of the run decode the images too
(``render``, a plugin's), the series' reading tasks encode each image's chunks from
that same decode (:func:`sharing_decode`): an instance is decoded once per run.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from dataclasses import dataclass
from typing import ClassVar

from dicomflow.errors import ErrorCode, is_instance_fault
from dicomflow.lake.layout import PIXELS_ROOT
from dicomflow.lake.zarr_store import ChunkEncoder
from dicomflow.operators.base import (
    FileOutput,
    Operator,
    OperatorKind,
    Outputs,
    RunSettings,
    TableOutput,
    map_records,
)
from dicomflow.operators.images import WithImages, image_of
from dicomflow.pixels.decode import PixelDecodeError, with_palette
from dicomflow.pixels.series_writer import (
    ENCODED_OUTPUT,
    STAGE,
    PixelOptions,
    commit_series,
    encode_decoded,
    encode_images,
    has_image_row,
    write_series,
)
from dicomflow.pixels.slices import slice_infos
from dicomflow.records import Batch, InstanceRecord
from dicomflow.schemas import SERIES_SCHEMA_VERSION, series_schema
from dicomflow.schemas.spec import PixelsOperator


@dataclass(frozen=True)
class WritePixels:
    """Write every image stack of the batch's series under ``<lake>/pixels.zarr``."""

    options: PixelOptions

    name: ClassVar[str] = "pixels"
    kind: ClassVar[OperatorKind] = "series"
    Config: ClassVar[type[PixelsOperator]] = PixelsOperator
    outputs: ClassVar[Outputs] = Outputs(
        columns=("zarr_path", "frame_index"),
        tables=(TableOutput("series", series_schema(), SERIES_SCHEMA_VERSION),),
        files=(FileOutput(PIXELS_ROOT + "/{study}/{series}/{stack}"),),
    )
    needs_pixels: ClassVar[bool] = True

    @classmethod
    def build(cls, config: PixelsOperator, run: RunSettings) -> WritePixels:
        return cls(
            PixelOptions(
                run.lake,
                run.source_storage_options,
                frames_per_chunk=config.frames_per_chunk,
                expand_palette=config.expand_palette,
                pyramid=config.pyramid,
            )
        )

    def __call__(self, batch: Batch) -> Batch:
        infos = slice_infos(batch.records)
        encoded = encode_images(batch.records, infos, self.options)
        records = [dataclasses.replace(r, header=None) for r in batch.records]
        plan = write_series(records, encoded, self.options, batch.context.run_id, infos)
        return commit_series(plan, batch.context, self.options)


@dataclass(frozen=True)
class WithoutSeries:
    """In a pixel run, an image with no stack to go to keeps its row and gets an error row
    of the pixel stage, so that every input with pixel data ends with pixels or an error
    row: by default an image that belongs to no series (no Series Instance UID); also the
    images of a series whose task kept failing, run again for their rows alone."""

    name: ClassVar[str] = STAGE
    message: str = "the image has no Series Instance UID, so no stack"
    code: ErrorCode = ErrorCode.UNSUPPORTED_PIXELS

    def __call__(self, batch: Batch) -> Batch:
        return map_records(batch, self.name, self._no_stack)

    def _no_stack(self, record: InstanceRecord) -> InstanceRecord:
        if has_image_row(record):
            raise PixelDecodeError(self.message, code=self.code)
        return record


SERIES_TASK_FAILED = WithoutSeries(
    "the series' stacks could not be written (its task kept failing)", ErrorCode.INTERNAL
)


@dataclass(frozen=True)
class EncodeFrames:
    """The pixels operator's share of an image decoded for the run's instance operators:
    its frames encoded as their stack's chunks (``record.outputs[ENCODED_OUTPUT]``),
    which the series' stacks then take instead of decoding the instance again.

    An image that failed to decode is left alone: the pixel stage decodes it itself and
    writes its own error row, exactly as when nothing else decoded it. The stage checks
    the frame count of either against the header (:func:`encode_images`).
    """

    expand_palette: bool = False

    name: ClassVar[str] = STAGE

    def __call__(self, batch: Batch) -> Batch:
        encode = ChunkEncoder()
        return batch.replace_records([self._one(r, encode) for r in batch.records])

    def _one(self, record: InstanceRecord, encode: ChunkEncoder) -> InstanceRecord:
        try:
            image = image_of(record)
            if image is None:
                return record
            pixels = with_palette(image.pixels, image.dataset, expand=self.expand_palette)
            return record.with_output(ENCODED_OUTPUT, encode_decoded(pixels, encode))
        except BaseException as exc:  # decoded again, alone, by the pixel stage
            if not is_instance_fault(exc):
                raise
            return record


def sharing_decode(operators: Sequence[Operator], options: PixelOptions) -> tuple[Operator, ...]:
    """The instance operators of a series' reading task, with the images that some of them
    decode (inside :class:`WithImages`) encoded for the stacks there and then."""
    encode = EncodeFrames(options.expand_palette)
    return tuple(
        dataclasses.replace(op, operators=(*op.operators, encode))
        if isinstance(op, WithImages)
        else op
        for op in operators
    )
