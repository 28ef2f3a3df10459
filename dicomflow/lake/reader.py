"""Open a lake written by dicomflow: its tables as pyarrow datasets or tables."""

from __future__ import annotations

from collections.abc import Sequence
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

    def __getitem__(self, name: str) -> LakeTable:
        """One table, for a notebook: ``lake["instances"]`` shows its columns and first rows."""
        if name not in self.tables() and name not in _SCHEMAS:
            raise KeyError(f"the lake has no table {name!r}; it has {self.tables()}")
        return LakeTable(self, name)

    def _repr_html_(self) -> str:
        """The lake at a glance: its tables with row counts, modalities, errors by code
        and the latest runs (Parquet footers and run reports only; no pixels read)."""
        from dicomflow.lake import html

        fs, root = self.layout.filesystem()
        rows = []
        for name in self.tables():
            dataset = self.dataset(name)
            version = (dataset.schema.metadata or {}).get(b"dicomflow.schema_version", b"")
            rows.append((name, dataset.count_rows(), len(dataset.files), version.decode() or None))
        errors = self.dataset("errors").to_table(columns=["code"])
        modalities = self.dataset("instances").to_table(columns=["Modality"])
        return html.lake_html(
            self.root,
            rows,
            errors_by_code=html.counts_by(errors, "code"),
            modalities=html.counts_by(modalities, "Modality"),
            runs=html.latest_runs(fs, root),
        )


PREVIEW_COLUMNS = 12  # a table's preview shows this many columns (headers as JSON left out)


@dataclass(frozen=True)
class LakeTable:
    """One table of a lake, as ``lake[name]`` gives it: shown in a notebook as its
    columns and first rows, and read with :meth:`to_arrow` or :meth:`to_pandas`."""

    lake: Lake
    name: str

    @property
    def schema(self) -> pa.Schema:
        return self.lake.dataset(self.name).schema

    @property
    def num_rows(self) -> int:
        return int(self.lake.dataset(self.name).count_rows())

    def to_arrow(self, columns: list[str] | None = None) -> pa.Table:
        return self.lake.table(self.name, columns=columns)

    def to_pandas(self, columns: list[str] | None = None) -> Any:
        return self.to_arrow(columns).to_pandas()

    def _repr_html_(self) -> str:
        from dicomflow.lake import html

        dataset = self.lake.dataset(self.name)
        shown = [n for n in dataset.schema.names if not n.endswith("_json")][:PREVIEW_COLUMNS]
        preview = dataset.head(html.PREVIEW_ROWS, columns=shown)
        return html.table_html(self.name, dataset.schema, dataset.count_rows(), preview)


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


def run_rows(
    layout: LakeLayout, run_id: str, table: str, columns: Sequence[str]
) -> list[dict[str, Any]]:
    """The rows (``columns``, those a part has) of ``table``'s parts that run ``run_id``
    committed: what a run's report needs, read from its own parts with pyarrow.parquet
    rather than through a dataset over the whole lake (which also imports pandas)."""
    import pyarrow.parquet as pq

    fs, root = layout.filesystem()
    rows: list[dict[str, Any]] = []
    for part in Ledger(layout).run_parts(run_id, table):
        with fs.open(f"{root}/{part}", "rb") as handle:
            parquet = pq.ParquetFile(handle)
            present = [c for c in columns if c in parquet.schema_arrow.names]
            rows += parquet.read(columns=present).to_pylist()
    return rows
