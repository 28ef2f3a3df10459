"""An operator from outside dicomflow: one row per top-level sequence of each instance.

It shows everything a plugin declares: a registry name (its entry point), a
pydantic configuration model, its kind, and a table of its own with an Arrow
schema and a schema version. dicomflow writes, tracks and reads that table as
it does its own.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar, Literal

import pyarrow as pa
from pydantic import Field

from dicomflow.operators.base import (
    OperatorKind,
    Outputs,
    RunSettings,
    TableOutput,
    map_records,
)
from dicomflow.records import Batch, InstanceRecord
from dicomflow.schemas.spec import OperatorConfig

TABLE = "sequence_stats"
SCHEMA = pa.schema(
    [
        ("SOPInstanceUID", pa.string()),
        ("tag", pa.string()),  # "(GGGG,EEEE)"
        ("items", pa.int32()),
    ]
)


class SequenceStatsConfig(OperatorConfig):
    """Count the items of each top-level sequence with at least ``min_items`` items."""

    name: Literal["sequence_stats"] = "sequence_stats"
    min_items: int = Field(default=0, ge=0)


@dataclass(frozen=True)
class SequenceStats:
    """One ``sequence_stats`` row per top-level sequence of each instance."""

    min_items: int = 0

    name: ClassVar[str] = "sequence_stats"
    kind: ClassVar[OperatorKind] = "instance"
    Config: ClassVar[type[SequenceStatsConfig]] = SequenceStatsConfig
    outputs: ClassVar[Outputs] = Outputs(tables=(TableOutput(TABLE, SCHEMA, "1"),))
    needs_pixels: ClassVar[bool] = False

    @classmethod
    def build(cls, config: SequenceStatsConfig, run: RunSettings) -> SequenceStats:
        return cls(min_items=config.min_items)

    def __call__(self, batch: Batch) -> Batch:
        return map_records(batch, self.name, self._one)

    def _one(self, record: InstanceRecord) -> InstanceRecord:
        assert record.header is not None
        uid = record.outputs["instances"]["SOPInstanceUID"]  # runs after flatten
        rows = [
            {
                "SOPInstanceUID": uid,
                "tag": f"({element.tag >> 16:04X},{element.tag & 0xFFFF:04X})",
                "items": len(element.value or ()),
            }
            for element in record.header.elements
            if element.vr == "SQ" and len(element.value or ()) >= self.min_items
        ]
        return record.with_output(TABLE, rows)
