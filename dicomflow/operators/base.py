"""The operator contract: a frozen, picklable configuration applied to a batch.

An operator is called as ``operator(batch) -> batch``. It keeps no state between
batches, and a fault in one instance never escapes: :func:`map_records` turns it
into an error on that record (code, operator name, a message without values)
and the batch goes on.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import ClassVar, Protocol, runtime_checkable

from dicomflow.errors import DicomflowError, ErrorCode
from dicomflow.records import Batch, InstanceRecord

logger = logging.getLogger(__name__)


@runtime_checkable
class Operator(Protocol):
    """What every operator provides: a registry name and ``__call__(batch) -> batch``."""

    name: ClassVar[str]

    def __call__(self, batch: Batch) -> Batch: ...


def describe_failure(exc: BaseException) -> tuple[ErrorCode, str]:
    """The error code and PHI-free message for a fault in one instance."""
    if isinstance(exc, DicomflowError):
        return exc.code, str(exc)
    if isinstance(exc, RecursionError):
        return ErrorCode.TOO_DEEP, "data nested too deeply"
    logger.warning("one instance failed (%s)", type(exc).__name__)
    return ErrorCode.INTERNAL, f"unexpected {type(exc).__name__}"


def map_records(
    batch: Batch,
    stage: str,
    fn: Callable[[InstanceRecord], InstanceRecord],
) -> Batch:
    """Apply ``fn`` to every record that has not failed yet, isolating per-record faults."""
    out = []
    for record in batch.records:
        if record.failed:
            out.append(record)
            continue
        try:
            out.append(fn(record))
        except Exception as exc:  # one bad instance must not sink the batch
            code, message = describe_failure(exc)
            out.append(record.with_error(stage, code, message))
    return batch.replace_records(out)
