"""Series operators: steps that see a whole series once its stacks are written.

A series operator is registered like any other (``kind = "series"``, see
:class:`dicomflow.operators.base.OperatorDefinition`) and called as
``operator(batch) -> batch`` where the batch is one series, as the ``pixels``
operator committed it:

- ``batch.records``: its instances, each row with its ``zarr_path`` and
  ``frame_index`` where it landed in a stack (rows cut to the columns a commit
  reads; the whole rows are in ``batch.instances``);
- ``batch.instances``: the series' ``instances`` rows as an Arrow table, when the
  reading tasks built them (always, in the series path);
- ``batch.tables["series"]``: one row per stack (``zarr_path``, ``shape``,
  ``spacing``, ``affine``...), which :func:`open_stack` opens.

It adds rows to the tables it declares with ``batch.with_table_rows``. It runs in
the task that writes and commits the series, after the stacks are in place and
before the commit, so its rows land in the same commit, are tracked by the ledger
and are skipped with the series on a rerun. A fault in it costs the series only
that operator's outputs (:func:`run_series_operators`).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING

from dicomflow.errors import describe_failure, is_instance_fault
from dicomflow.lake.layout import LakeLayout
from dicomflow.lake.zarr_store import open_stack_group
from dicomflow.operators.base import Operator
from dicomflow.records import Batch

if TYPE_CHECKING:
    import zarr

SERIES_TABLE = "series"


def open_stack(lake: LakeLayout, zarr_path: str, level: int = 0) -> zarr.Array:
    """The array of a committed stack (its ``zarr_path`` from a ``series`` row), at
    pyramid ``level`` (0: full resolution), read-only."""
    import zarr

    array = open_stack_group(lake, zarr_path, mode="r")[str(level)]
    assert isinstance(array, zarr.Array)
    return array


def run_series_operators(batch: Batch, operators: Sequence[Operator]) -> Batch:
    """Apply the series ``operators`` in order to one series' ``batch``. An operator that
    raises gives each instance of the series a fault of its stage (an error row, the
    ``instances`` row kept) and the next operator still runs; Ctrl-C and exits pass."""
    for operator in operators:
        try:
            batch = operator(batch)
        except BaseException as exc:  # a plugin's bug must not sink the commit
            if not is_instance_fault(exc):
                raise
            code, message = describe_failure(exc)
            records = [
                r if r.failed else r.with_fault(operator.name, code, message) for r in batch.records
            ]
            batch = Batch(tuple(records), batch.context, batch.tables, batch.instances)
    return batch
