"""Open a lake written by dicomflow: its tables as pyarrow datasets or tables."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import pyarrow as pa

from dicomflow.lake.layout import LakeLayout
from dicomflow.lake.ledger import Ledger
from dicomflow.schemas import errors_schema, instances_schema, series_schema

if TYPE_CHECKING:
    import pyarrow.dataset as pads

_SCHEMAS = {"instances": instances_schema, "errors": errors_schema, "series": series_schema}


@dataclass(frozen=True)
class Lake:
    """A lake on any fsspec filesystem. ``lake.instances()`` and ``lake.errors()`` give tables."""

    root: str
    storage_options: dict[str, Any] = field(default_factory=dict)

    @property
    def layout(self) -> LakeLayout:
        return LakeLayout(self.root, self.storage_options)

    def dataset(self, table: str) -> pads.Dataset:
        """A lazy pyarrow dataset over the committed parts of ``<lake>/<table>/``.

        When the lake has a ledger, only parts a live ledger entry committed are read
        (never the leftovers of an interrupted run, nor superseded parts).
        """
        import pyarrow.dataset as pads  # heavy (imports pandas); workers never need it

        fs, root = self.layout.filesystem()
        directory = self.layout.table_dir(table)
        parts = sorted(p for p in fs.glob(f"{directory}/*.parquet"))
        ledger = Ledger(self.layout)
        if ledger.exists():
            live = {f"{root}/{p}" for p in ledger.live_parts()}
            parts = [p for p in parts if p in live]
        known = _SCHEMAS.get(table)
        if known is None and not parts:
            if table not in self.tables():
                raise KeyError(f"the lake has no table {table!r}; it has {self.tables()}")
            return pads.dataset(pa.table({}))
        schema = known() if known is not None else None  # an operator's: as its parts say
        if not parts:
            assert schema is not None
            return pads.dataset(
                pa.table({f.name: pa.array([], f.type) for f in schema}, schema=schema)
            )
        if schema is not None:  # with the columns operators added, where parts have them
            schema = with_added_columns(schema, parts, fs)
        return pads.dataset(parts, schema=schema, format="parquet", filesystem=fs)

    def tables(self) -> list[str]:
        """The names of the lake's tables: the built-ins and every one an operator of
        a committed run declared."""
        from dicomflow.lake.ledger import table_names

        fs, root = self.layout.filesystem()
        return table_names(fs, root)

    def table(self, name: str, columns: list[str] | None = None) -> pa.Table:
        """Any table of the lake (an operator's own included), its committed parts only."""
        return self.dataset(name).to_table(columns=columns)

    def instances(self, columns: list[str] | None = None) -> pa.Table:
        return self.dataset("instances").to_table(columns=columns)

    def errors(self) -> pa.Table:
        return self.dataset("errors").to_table()

    def series(self) -> pa.Table:
        """One row per pixel stack written by ``ingest --pixels``."""
        return self.dataset("series").to_table()


def with_added_columns(schema: pa.Schema, parts: list[str], fs: Any) -> pa.Schema:
    """``schema`` plus every column a part has beyond it (an operator's, such as
    ``render_path``), read from the parts' footers."""
    import pyarrow.parquet as pq

    extra: dict[str, pa.Field] = {}
    for part in parts:
        for column in pq.read_schema(part, filesystem=fs):
            if column.name not in schema.names:
                extra.setdefault(column.name, column)
    return pa.schema([*schema, *extra.values()], metadata=schema.metadata)


def read_lake(path: str, *, storage_options: dict[str, Any] | None = None) -> Lake:
    """Open the lake at ``path`` (a local path or any fsspec URL)."""
    return Lake(path, dict(storage_options or {}))
