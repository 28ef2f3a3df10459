"""The ``write_pixels`` operator: decode a series, assemble its stacks, write them as OME-Zarr.

The batch is one series. This operator runs the three phases of
:mod:`dicomflow.pixels.series_writer` back to back in one process; the ingest
pipeline runs the same phases as separate tasks so a long series is decoded
by several workers at once.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

from dicomflow.lake.layout import PIXELS_ROOT
from dicomflow.operators.base import FileOutput, OperatorKind, Outputs, RunSettings, TableOutput
from dicomflow.pixels.series_writer import (
    PixelOptions,
    commit_series,
    pixel_work,
    plan_series,
    write_items,
)
from dicomflow.records import Batch
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
            )
        )

    def __call__(self, batch: Batch) -> Batch:
        plan = plan_series(batch, self.options)
        shares = [write_items(pixel_work(plan), 0, 1, self.options)]
        return commit_series(plan, shares, batch.context, self.options)
