"""Build an Arrow table from rows whose values may not fit their columns.

A column is built in one call while every value fits its type. When one does not
(bytes that are not UTF-8 in a string column, text in a number column, a number
out of range, a string holding lone surrogates), only that column is built value
by value: the values that do not fit become null, and each is reported by row
and column name, never by value, so one input's bad value can never fail the
table of its neighbours.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import pyarrow as pa

# What pyarrow raises for a value that does not fit a type (UnicodeError is a
# ValueError: a lone surrogate in a string).
_MISFIT = (pa.ArrowInvalid, pa.ArrowTypeError, OverflowError, ValueError, TypeError)


@dataclass(frozen=True)
class Misfits:
    """Which columns of which rows held a value that did not fit (and became null)."""

    by_row: dict[int, list[str]] = field(default_factory=dict)

    def add(self, row: int, column: str) -> None:
        self.by_row.setdefault(row, []).append(column)

    def warnings(self, row: int) -> list[str]:
        """One warning per column of ``row`` whose value became null (no value in it)."""
        return [f"{name}: value does not fit the column type" for name in self.by_row.get(row, [])]


def fitted_column(
    rows: Sequence[Mapping[str, Any]], column: pa.Field, misfits: Misfits
) -> pa.Array:
    """``column`` of ``rows``; values that do not fit become null and go to ``misfits``.

    A column that cannot be null keeps its failure: such a value is the program's
    own (a provenance field), not a file's.
    """
    values = [row.get(column.name) for row in rows]
    try:
        return pa.array(values, type=column.type)
    except _MISFIT:
        if not column.nullable:
            raise
    fitted = []
    for number, value in enumerate(values):
        if value is not None and not _fits(value, column.type):
            misfits.add(number, column.name)
            value = None
        fitted.append(value)
    return pa.array(fitted, type=column.type)


def fitted_table(
    rows: Sequence[Mapping[str, Any]], schema: pa.Schema, *, skip: Sequence[str] = ()
) -> tuple[dict[str, pa.Array], Misfits]:
    """Every column of ``schema`` (except ``skip``, which the caller builds) from
    ``rows``, and the values that became null."""
    misfits = Misfits()
    columns = {f.name: fitted_column(rows, f, misfits) for f in schema if f.name not in skip}
    return columns, misfits


def table_from_rows(rows: Sequence[Mapping[str, Any]], schema: pa.Schema) -> pa.Table:
    """``rows`` as a table of ``schema``; a value that does not fit becomes null (for
    tables without a per-row warnings column, such as operator-declared ones)."""
    columns, _ = fitted_table(rows, schema)
    return pa.Table.from_arrays([columns[f.name] for f in schema], schema=schema)


def _fits(value: Any, type_: pa.DataType) -> bool:
    try:
        pa.array([value], type=type_)
    except _MISFIT:
        return False
    return True
