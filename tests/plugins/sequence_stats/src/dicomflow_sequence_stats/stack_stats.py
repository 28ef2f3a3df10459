"""A series operator from outside dicomflow: one row per image stack, with its extent
along z in millimetres and the range and mean of its values, read back from the lake.

It runs once a series' stacks are written (after the ``pixels`` operator), sees the
series' ``series`` rows, and opens each stack with
:func:`dicomflow.operators.series.open_stack`.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar, Literal

import numpy as np
import pyarrow as pa

from dicomflow.lake.layout import LakeLayout
from dicomflow.operators.base import OperatorKind, Outputs, RunSettings, TableOutput
from dicomflow.operators.series import SERIES_TABLE, open_stack
from dicomflow.records import Batch
from dicomflow.schemas.spec import OperatorConfig

TABLE = "stack_stats"
SCHEMA = pa.schema(
    [
        ("SeriesInstanceUID", pa.string()),
        ("zarr_path", pa.string()),
        ("instances", pa.int32()),
        ("extent_mm", pa.float64()),
        ("minimum", pa.float64()),
        ("maximum", pa.float64()),
        ("mean", pa.float64()),
    ]
)


class StackStatsConfig(OperatorConfig):
    """Summarise each stack a series became. ``fail`` raises instead (to show that a
    series operator's fault costs only its own outputs)."""

    name: Literal["stack_stats"] = "stack_stats"
    fail: bool = False


@dataclass(frozen=True)
class StackStats:
    """One ``stack_stats`` row per stack."""

    name: ClassVar[str] = "stack_stats"
    kind: ClassVar[OperatorKind] = "series"
    Config: ClassVar[type[StackStatsConfig]] = StackStatsConfig
    outputs: ClassVar[Outputs] = Outputs(tables=(TableOutput(TABLE, SCHEMA, "1"),))
    needs_pixels: ClassVar[bool] = False

    lake: LakeLayout
    fail: bool = False

    @classmethod
    def build(cls, config: StackStatsConfig, run: RunSettings) -> StackStats:
        return cls(run.lake, config.fail)

    def __call__(self, batch: Batch) -> Batch:
        if self.fail:
            raise ValueError("asked to fail")
        series = {
            r.outputs["instances"]["SeriesInstanceUID"] for r in batch.records if not r.failed
        }
        assert len(series) <= 1, "a series operator sees one series at a time"
        rows = []
        for stack in batch.tables.get(SERIES_TABLE, ()):
            values = np.asarray(open_stack(self.lake, stack["zarr_path"])[...], dtype=np.float64)
            rows.append(
                {
                    "SeriesInstanceUID": stack["SeriesInstanceUID"],
                    "zarr_path": stack["zarr_path"],
                    "instances": len(set(stack["sop_instance_uids"])),
                    "extent_mm": float(stack["spacing"][0]) * (stack["frames"] - 1),
                    "minimum": float(values.min()),
                    "maximum": float(values.max()),
                    "mean": float(values.mean()),
                }
            )
        return batch.with_table_rows(TABLE, rows)
