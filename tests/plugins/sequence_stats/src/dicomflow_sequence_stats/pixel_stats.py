"""An operator from outside dicomflow that reads decoded pixels: one row per instance
with the range and mean of its values (after the Modality LUT).

It declares ``needs_pixels``; dicomflow decodes each instance once for every operator
that asks, and hands the pixels over with :func:`dicomflow.operators.images.image_of`.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar, Literal

import numpy as np
import pyarrow as pa

from dicomflow.operators.base import OperatorKind, Outputs, RunSettings, TableOutput, map_records
from dicomflow.operators.images import image_of
from dicomflow.records import Batch, InstanceRecord
from dicomflow.schemas.spec import OperatorConfig

TABLE = "pixel_stats"
SCHEMA = pa.schema(
    [
        ("SOPInstanceUID", pa.string()),
        ("frames", pa.int32()),
        ("minimum", pa.float64()),
        ("maximum", pa.float64()),
        ("mean", pa.float64()),
    ]
)


class PixelStatsConfig(OperatorConfig):
    """Summarise each image's decoded values."""

    name: Literal["pixel_stats"] = "pixel_stats"


@dataclass(frozen=True)
class PixelStats:
    """One ``pixel_stats`` row per instance with an image."""

    name: ClassVar[str] = "pixel_stats"
    kind: ClassVar[OperatorKind] = "instance"
    Config: ClassVar[type[PixelStatsConfig]] = PixelStatsConfig
    outputs: ClassVar[Outputs] = Outputs(tables=(TableOutput(TABLE, SCHEMA, "1"),))
    needs_pixels: ClassVar[bool] = True

    @classmethod
    def build(cls, config: PixelStatsConfig, run: RunSettings) -> PixelStats:
        return cls()

    def __call__(self, batch: Batch) -> Batch:
        return map_records(batch, self.name, self._one)

    def _one(self, record: InstanceRecord) -> InstanceRecord:
        image = image_of(record)
        if image is None:
            return record
        values = np.asarray(image.pixels.array, dtype=np.float64)
        row = {
            "SOPInstanceUID": record.outputs["instances"]["SOPInstanceUID"],
            "frames": int(values.shape[0]),
            "minimum": float(values.min()),
            "maximum": float(values.max()),
            "mean": float(values.mean()),
        }
        return record.with_output(TABLE, row)
