"""The values that flow through a pipeline: source references, instance records, batches.

Everything here is small and picklable. A record holds no open file or socket:
connectors open resources inside the task that uses them.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any, NamedTuple

from dicomflow.errors import ErrorCode
from dicomflow.urls import redact_url

UNDEFINED_LENGTH = 0xFFFFFFFF
INSTANCES_OUTPUT = "instances"  # the output holding a record's flattened row


class Element(NamedTuple):
    """One data element.

    ``value`` is the encoded bytes; ``None`` when the value was not read (bulk
    data left in the source at ``offset``); for ``SQ`` a tuple of items, each a
    tuple of elements. When ``converted`` is true, ``value`` is already a Python
    value (pydicom resolved an ambiguous VR and decoded it).
    """

    tag: int
    vr: str
    value: Any
    offset: int | None
    length: int
    little_endian: bool = True
    converted: bool = False


Elements = tuple[Element, ...]


@dataclass(frozen=True, slots=True)
class SourceRef:
    """Where one input lives: a URL plus the identity facts the listing gave us.

    ``url`` is what is fetched (it may carry a signed query string); ``source`` is
    what rows, error rows and logs show, with credentials and query removed.
    ``label``, when set, is shown instead of the URL (a pseudonymous identifier
    for an input whose path may carry PHI). ``identity``, when set, is the
    ledger identity of the original input this one was derived from (a
    de-identified file stands for the file it was made from).
    """

    url: str
    size: int | None = None
    modified: datetime | None = None
    label: str | None = None
    identity: str | None = None

    @property
    def source(self) -> str:
        return self.label if self.label is not None else redact_url(self.url)


@dataclass(frozen=True, slots=True)
class ErrorInfo:
    """Why one instance failed: a code, the stage (operator name) and a PHI-free message."""

    stage: str
    code: ErrorCode
    message: str

    @property
    def warning(self) -> str:
        """How the row of an instance that kept it names this fault in ``warnings``."""
        return f"{self.stage}: {self.code}"


@dataclass(frozen=True, slots=True)
class Header:
    """A parsed DICOM header (everything but the Pixel Data value) plus where that value sits."""

    elements: Elements
    file_meta: Elements
    transfer_syntax_uid: str | None
    is_little_endian: bool
    is_implicit_vr: bool
    deflated: bool
    pixel_data_tag: int | None = None
    pixel_data_vr: str | None = None
    pixel_data_offset: int | None = None
    pixel_data_length: int | None = None
    trailing_parsed: bool = True
    pixel_data_end: int | None = None  # past the value (and its delimiter); fast reader only


@dataclass(frozen=True, slots=True)
class InstanceRecord:
    """One DICOM instance as it moves through the operators of a partition.

    Operators return new records (``dataclasses.replace``) rather than mutating.
    ``outputs`` collects what the record produced, keyed by output name
    (for example ``"instances"`` → one flattened row). ``error`` is why the
    instance has no row at all; ``faults`` are the failures of operators that ran
    after its row was made (each an error row; the row stays, noting them in its
    ``warnings``). ``image`` is its decoded pixels while the operators that asked
    for them run (never shipped between tasks: see
    :mod:`dicomflow.operators.images`).
    """

    ref: SourceRef
    kind: str = "instance"
    header: Header | None = None
    outputs: dict[str, Any] = field(default_factory=dict)
    error: ErrorInfo | None = None
    faults: tuple[ErrorInfo, ...] = ()
    image: Any = field(default=None, compare=False, repr=False)

    @property
    def failed(self) -> bool:
        return self.error is not None

    @property
    def problems(self) -> tuple[ErrorInfo, ...]:
        """Every failure of this instance, each one an error row."""
        return (*self.faults, self.error) if self.error is not None else self.faults

    def with_error(self, stage: str, code: ErrorCode, message: str) -> InstanceRecord:
        """The record failed as a whole: it will have an error row and no row."""
        return dataclasses.replace(self, error=ErrorInfo(stage, code, message), image=None)

    def with_fault(self, stage: str, code: ErrorCode, message: str) -> InstanceRecord:
        """Operator ``stage`` failed on this instance: only that operator's outputs are
        lost. Once the instance has its ``instances`` row, the row stays (the fault named
        in its ``warnings``) and later operators still run; before, the record fails."""
        row = self.outputs.get(INSTANCES_OUTPUT)
        if self.failed or row is None:
            return self.with_error(stage, code, message)
        fault = ErrorInfo(stage, code, message)
        warnings = [*(row.get("warnings") or ()), fault.warning]
        return dataclasses.replace(
            self,
            outputs={**self.outputs, INSTANCES_OUTPUT: {**row, "warnings": warnings}},
            faults=(*self.faults, fault),
        )

    def with_output(self, name: str, value: Any) -> InstanceRecord:
        return dataclasses.replace(self, outputs={**self.outputs, name: value})


@dataclass(frozen=True, slots=True)
class RunContext:
    """Facts about the run that every partition needs (resolved on the client)."""

    run_id: str
    started_at: datetime


@dataclass(frozen=True, slots=True)
class Batch:
    """The records of one partition plus the run context.

    ``tables`` holds rows that belong to the batch rather than to one record
    (for example one ``series`` row per stack), keyed by table name.
    ``instances``, when set, is the ``instances`` table of ``records`` built ahead
    (an Arrow table, by tasks that ran in parallel); new records drop it.
    """

    records: tuple[InstanceRecord, ...]
    context: RunContext
    tables: dict[str, tuple[dict[str, Any], ...]] = field(default_factory=dict)
    instances: Any = None

    def replace_records(self, records: list[InstanceRecord] | tuple[InstanceRecord, ...]) -> Batch:
        return Batch(tuple(records), self.context, self.tables)

    def with_table_rows(self, table: str, rows: list[dict[str, Any]]) -> Batch:
        tables = {**self.tables, table: (*self.tables.get(table, ()), *rows)}
        return Batch(self.records, self.context, tables, self.instances)
