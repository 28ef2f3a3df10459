"""The operator contract: a frozen, picklable configuration applied to a batch.

An operator is called as ``operator(batch) -> batch``. It keeps no state between
batches, and a fault in one instance never escapes: :func:`map_records` turns it
into an error on that record (code, operator name, a message without values)
and the batch goes on.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, ClassVar, Literal, Protocol, runtime_checkable

import pyarrow as pa

from dicomflow.errors import describe_failure, is_instance_fault
from dicomflow.lake.layout import TABLE_NAME, LakeLayout
from dicomflow.records import Batch, InstanceRecord
from dicomflow.schemas.spec import SourceConfig

logger = logging.getLogger(__name__)


@runtime_checkable
class Operator(Protocol):
    """What every operator provides: a registry name and ``__call__(batch) -> batch``."""

    name: ClassVar[str]

    def __call__(self, batch: Batch) -> Batch: ...


def map_records(
    batch: Batch,
    stage: str,
    fn: Callable[[InstanceRecord], InstanceRecord],
) -> Batch:
    """Apply ``fn`` to every record that has not failed yet, isolating per-record faults:
    a fault costs the record only this operator's outputs (see
    :meth:`InstanceRecord.with_fault`)."""
    out = []
    for record in batch.records:
        if record.failed:
            out.append(record)
            continue
        try:
            out.append(fn(record))
        except BaseException as exc:  # one bad instance must not sink the batch
            if not is_instance_fault(exc):
                raise
            code, message = describe_failure(exc)
            out.append(record.with_fault(stage, code, message))
    return batch.replace_records(out)


# instance: batch -> batch; series: a whole series once its stacks are written; lake:
# once a run's outputs are committed, over the whole lake (``on_lake(client, layout)``).
OperatorKind = Literal["instance", "series", "lake"]


@dataclass(frozen=True)
class TableOutput:
    """A table an operator makes: ``<lake>/<name>/part-*.parquet``, one part a commit.

    Records carry their rows in ``record.outputs[name]`` (one row as a mapping, or a
    list of them); the lake sink writes them with ``schema`` and files the
    ``version`` with the commit. Tables are named in snake_case.
    """

    name: str
    schema: pa.Schema
    version: str

    def __post_init__(self) -> None:
        if not TABLE_NAME.fullmatch(self.name) or self.name in RESERVED_TABLES:
            raise ValueError(f"not a usable table name: {self.name!r}")


RESERVED_TABLES = frozenset({"errors", "pixels", "dicom", "renders"})


@dataclass(frozen=True)
class FileOutput:
    """Files an operator writes under the lake: ``pattern`` names one, relative to the
    lake (``renders/{study}/{series}/{sop}.png``); its folder is the first component."""

    pattern: str

    @property
    def folder(self) -> str:
        return self.pattern.split("/", 1)[0]


@dataclass(frozen=True)
class Outputs:
    """What an operator makes: columns it fills in on ``instances``, its own tables, and
    the files it writes under the lake.

    A column named by a string is one of the ``instances`` schema's own (``zarr_path``);
    a column given as an Arrow field is added to ``instances`` by this operator (records
    carry its value in their row, ``record.outputs["instances"][name]``).
    """

    columns: tuple[str | pa.Field, ...] = ()

    @property
    def added_columns(self) -> tuple[pa.Field, ...]:
        """The columns this operator adds to ``instances``."""
        return tuple(c for c in self.columns if isinstance(c, pa.Field))

    tables: tuple[TableOutput, ...] = ()
    files: tuple[FileOutput, ...] = ()


@dataclass(frozen=True)
class RunSettings:
    """What an operator may need to know about the run it is built for (resolved on the
    client): the lake it writes to, how to read the source (and the source's own
    configuration), how gently to treat peers."""

    lake: LakeLayout
    source_storage_options: dict[str, Any] = field(default_factory=dict)
    max_associations: int = 2
    name: str = "pipeline"
    source: SourceConfig | None = None


@runtime_checkable
class OperatorDefinition(Protocol):
    """What a class registered in ``dicomflow.operators`` declares, besides being an
    :class:`Operator` once built:

    - ``name``: its registry name (also the ``name`` of its spec entry);
    - ``kind``: ``"instance"`` (``batch -> batch`` on a partition's records) or
      ``"series"`` (a batch is one series);
    - ``Config``: its pydantic configuration model (a
      :class:`dicomflow.schemas.spec.OperatorConfig`), which the JSON Schema shows;
    - ``outputs``: the columns, tables and files it makes;
    - ``needs_pixels``: whether it reads ``record.pixels`` (decoded once per run);
    - ``build(config, run)``: the operator for one run.
    """

    name: ClassVar[str]
    kind: ClassVar[OperatorKind]
    Config: ClassVar[type[Any]]
    outputs: ClassVar[Outputs]
    needs_pixels: ClassVar[bool]

    @classmethod
    def build(cls, config: Any, run: RunSettings) -> Operator: ...
