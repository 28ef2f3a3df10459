"""An operator that does what a careless plugin might: it copies a value it was given
into its own table (with the instance's UIDs), and may log it.

The de-identification proof's tests give it an identifying value of an input (read
from the original file) and expect the run to fail: the value reaches an output
through a path the de-identification profile does not cover.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import ClassVar, Literal

import pyarrow as pa

from dicomflow.operators.base import OperatorKind, Outputs, RunSettings, TableOutput, map_records
from dicomflow.records import Batch, InstanceRecord
from dicomflow.schemas.spec import OperatorConfig

logger = logging.getLogger(__name__)

TABLE = "leak_probe"
SCHEMA = pa.schema(
    [
        ("SOPInstanceUID", pa.string()),
        ("StudyInstanceUID", pa.string()),
        ("note", pa.string()),
    ]
)


class LeakProbeConfig(OperatorConfig):
    """Copy ``value`` into the ``leak_probe`` table (``table``) and the log (``log``)."""

    name: Literal["leak_probe"] = "leak_probe"
    value: str
    table: bool = True
    log: bool = False


@dataclass(frozen=True)
class LeakProbe:
    """One ``leak_probe`` row per instance holding a value from outside the data."""

    value: str
    table: bool = True
    log: bool = False

    name: ClassVar[str] = "leak_probe"
    kind: ClassVar[OperatorKind] = "instance"
    Config: ClassVar[type[LeakProbeConfig]] = LeakProbeConfig
    outputs: ClassVar[Outputs] = Outputs(tables=(TableOutput(TABLE, SCHEMA, "1"),))
    needs_pixels: ClassVar[bool] = False

    @classmethod
    def build(cls, config: LeakProbeConfig, run: RunSettings) -> LeakProbe:
        return cls(config.value, config.table, config.log)

    def __call__(self, batch: Batch) -> Batch:
        return map_records(batch, self.name, self._one)

    def _one(self, record: InstanceRecord) -> InstanceRecord:
        row = record.outputs["instances"]  # runs after flatten
        if self.log:
            logger.warning("probe note for this instance: %s", self.value)
        if not self.table:
            return record
        note = f"seen: {self.value}"
        return record.with_output(
            TABLE,
            [
                {
                    "SOPInstanceUID": row["SOPInstanceUID"],
                    "StudyInstanceUID": row["StudyInstanceUID"],
                    "note": note,
                }
            ],
        )
