"""The ``write_pixels`` operator: decode a series, assemble its stacks, write them as OME-Zarr.

The batch is one series. This operator runs the three phases of
:mod:`dicomflow.pixels.series_writer` back to back in one process; the ingest
pipeline runs the same phases as separate tasks so a long series is decoded
by several workers at once.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, ClassVar

from dicomflow.lake.layout import LakeLayout
from dicomflow.pixels.decode import DEFAULT_MEMORY_BUDGET
from dicomflow.pixels.series_writer import (
    PixelOptions,
    commit_series,
    pixel_work,
    plan_series,
    write_items,
)
from dicomflow.records import Batch


@dataclass(frozen=True)
class WritePixels:
    """Write every image stack of the batch's series under ``<lake>/pixels.zarr``."""

    layout: LakeLayout
    storage_options: dict[str, Any] = field(default_factory=dict)
    memory_budget: int = DEFAULT_MEMORY_BUDGET
    frames_per_chunk: int = 1

    name: ClassVar[str] = "write_pixels"

    @property
    def options(self) -> PixelOptions:
        return PixelOptions(
            self.layout, self.storage_options, self.memory_budget, self.frames_per_chunk
        )

    def __call__(self, batch: Batch) -> Batch:
        options = self.options
        plan = plan_series(batch, options)
        shares = [write_items(pixel_work(plan), 0, 1, options)]
        return commit_series(plan, shares, batch.context, options)
