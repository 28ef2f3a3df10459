"""The ``write_pixels`` operator: decode a series, assemble its stacks, write them as OME-Zarr.

The batch is one series. This operator runs the three phases of
:mod:`dicomflow.pixels.series_writer` back to back in one process; the ingest
pipeline runs the same phases as separate tasks so a long series is decoded
by several workers at once.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

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

    options: PixelOptions

    name: ClassVar[str] = "write_pixels"

    def __call__(self, batch: Batch) -> Batch:
        plan = plan_series(batch, self.options)
        shares = [write_items(pixel_work(plan), 0, 1, self.options)]
        return commit_series(plan, shares, batch.context, self.options)
