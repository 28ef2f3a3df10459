"""The ``write_pixels`` operator: decode a series, assemble its stacks, write them as OME-Zarr.

The batch is one series. This operator runs the steps of
:mod:`dicomflow.pixels.series_writer` back to back in one process; the ingest
pipeline spreads the decoding over several tasks, so a long series is decoded by
several workers at once.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import ClassVar

from dicomflow.errors import ErrorCode
from dicomflow.lake.layout import PIXELS_ROOT
from dicomflow.operators.base import (
    FileOutput,
    OperatorKind,
    Outputs,
    RunSettings,
    TableOutput,
    map_records,
)
from dicomflow.pixels.decode import PixelDecodeError
from dicomflow.pixels.series_writer import (
    STAGE,
    PixelOptions,
    commit_series,
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
