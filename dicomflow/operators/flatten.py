"""The ``flatten`` operator: each header becomes one row of the ``instances`` table."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, ClassVar

from pydicom import config as pydicom_config

from dicomflow.dicom.header import pydicom_mode
from dicomflow.dicom.rows import RowContext, header_to_row
from dicomflow.errors import ErrorCode, MalformedDicomError
from dicomflow.operators.base import (
    OperatorKind,
    Outputs,
    RunSettings,
    TableOutput,
    map_records,
)
from dicomflow.records import INSTANCES_OUTPUT, Batch, InstanceRecord
from dicomflow.schemas import INSTANCES_SCHEMA_VERSION, instances_schema
from dicomflow.schemas.spec import FlattenOperator

OUTPUT = INSTANCES_OUTPUT


@dataclass(frozen=True)
class Flatten:
    """Flatten headers into typed columns plus the full header as DICOM JSON.

    ``inline_binary_limit``: binary values up to this many bytes are inlined as
    base64; longer ones (and all pixel, overlay and waveform data) become a
    ``BulkDataURI`` into the source.
    """

    inline_binary_limit: int = 1024

    name: ClassVar[str] = "flatten"
    kind: ClassVar[OperatorKind] = "instance"
    Config: ClassVar[type[FlattenOperator]] = FlattenOperator
    outputs: ClassVar[Outputs] = Outputs(
        tables=(TableOutput(OUTPUT, instances_schema(), INSTANCES_SCHEMA_VERSION),)
    )
    needs_pixels: ClassVar[bool] = False

    @classmethod
    def build(cls, config: FlattenOperator, run: RunSettings) -> Flatten:
        return cls(inline_binary_limit=config.inline_binary_limit)

    def __call__(self, batch: Batch) -> Batch:
        ctx = RowContext(batch.context.run_id, batch.context.started_at, self.inline_binary_limit)
        memo: dict[Any, Any] = {}  # decoded values repeat across a batch's files
        with pydicom_mode(pydicom_config.WARN):  # charset lookups may warn; keep them quiet
            return map_records(batch, self.name, lambda record: flatten_record(record, ctx, memo))


def flatten_record(
    record: InstanceRecord, ctx: RowContext, memo: dict[Any, Any] | None = None
) -> InstanceRecord:
    if record.header is None:
        raise MalformedDicomError("no header was read", code=ErrorCode.INTERNAL)
    return record.with_output(OUTPUT, header_to_row(record.header, record.ref, ctx, memo))
