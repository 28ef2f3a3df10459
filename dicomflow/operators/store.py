"""The ``store`` operator: send each instance's file to a DICOM peer with C-STORE, or to a
DICOMweb server with STOW-RS.

One association (or a few bounded STOW requests) per batch, optionally under a
concurrency limit shared across the cluster. An instance the peer did not
store becomes an error row ``not_stored``; if the peer cannot be reached at
all, every instance of the batch does. Records keep their other outputs.
"""

from __future__ import annotations

from collections.abc import Callable
from contextlib import AbstractContextManager, nullcontext
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar

import pyarrow as pa

from dicomflow.connectors.dicomweb.address import DicomwebAddress, DicomwebError, DicomwebOptions
from dicomflow.connectors.dimse.address import DimseAddress, DimseOptions
from dicomflow.connectors.dimse.errors import DimseError
from dicomflow.connectors.local_copies import local_copies
from dicomflow.connectors.outcomes import StoreOutcome
from dicomflow.errors import ConfigError, DicomflowError, ErrorCode
from dicomflow.operators.base import OperatorKind, Outputs, TableOutput, map_records
from dicomflow.records import Batch, InstanceRecord

SENT_TABLE = "sent"
SENT_SCHEMA = pa.schema(
    [
        ("peer", pa.string()),
        ("SOPClassUID", pa.string()),
        ("SOPInstanceUID", pa.string()),
    ]
)


class NotStoredError(DicomflowError):
    code = ErrorCode.NOT_STORED


@dataclass(frozen=True)
class Store:
    """C-STORE (or STOW-RS, for a DICOMweb address) every record's file to ``address``.

    Files in a bucket are fetched to a temporary folder first (``storage_options``
    reach them). ``limit``, when given, is called in the task to get a context
    manager that holds one association slot (a cluster-wide semaphore in
    pipelines); it is taken only once the files are local.
    """

    address: DimseAddress | DicomwebAddress
    options: DimseOptions | DicomwebOptions
    limit: Callable[[], AbstractContextManager[Any]] | None = None
    storage_options: dict[str, Any] = field(default_factory=dict, repr=False, compare=False)

    name: ClassVar[str] = "store"
    kind: ClassVar[OperatorKind] = "instance"
    outputs: ClassVar[Outputs] = Outputs(tables=(TableOutput(SENT_TABLE, SENT_SCHEMA, "1"),))
    needs_pixels: ClassVar[bool] = False

    def __call__(self, batch: Batch) -> Batch:
        urls = [r.ref.url for r in batch.records if not r.failed]
        if not urls:
            return batch
        try:
            with local_copies(urls, self.storage_options) as local:
                with self.limit() if self.limit is not None else nullcontext():
                    sent = {o.path: o for o in self._send(list(local.values()))}
                outcomes = {url: sent.get(str(path)) for url, path in local.items()}
        except (DimseError, DicomwebError, ConfigError) as exc:  # config: e.g. a secret's
            # variable missing on this worker; the message names it
            message = f"not stored: {exc}"
            return map_records(batch, self.name, lambda r: _fail(message))
        except OSError as exc:  # a file in a bucket could not be fetched
            message = f"not stored: the file could not be read ({type(exc).__name__})"
            return map_records(batch, self.name, lambda r: _fail(message))
        return map_records(batch, self.name, lambda r: _check(r, outcomes, str(self.address)))

    def _send(self, paths: list[Path]) -> list[StoreOutcome]:
        # Each protocol's client is imported when this sink sends: building a pipeline
        # (or any run that does not send) imports neither dicomweb-client nor pynetdicom.
        if isinstance(self.address, DicomwebAddress):
            from dicomflow.connectors.dicomweb.stow import stow

            assert isinstance(self.options, DicomwebOptions)
            return stow(self.address, paths, self.options)
        from dicomflow.connectors.dimse.store import c_store

        assert isinstance(self.options, DimseOptions)
        return c_store(self.address, paths, self.options)


def _fail(message: str) -> InstanceRecord:
    raise NotStoredError(message)


def _check(
    record: InstanceRecord, outcomes: dict[str, StoreOutcome | None], peer: str
) -> InstanceRecord:
    """The record, with its ``sent`` row, when the peer stored it."""
    outcome = outcomes.get(record.ref.url)
    if outcome is None or not outcome.ok:
        reason = outcome.message if outcome is not None else "not sent"
        raise NotStoredError(f"the peer did not store it ({reason})")
    row = {
        "peer": peer,
        "SOPClassUID": outcome.sop_class_uid,
        "SOPInstanceUID": outcome.sop_instance_uid,
    }
    return record.with_output(SENT_TABLE, [row])
