"""HTML for notebooks: a lake at a glance and a table's schema with its first rows.

Pure functions of what the lake already holds (row counts from Parquet footers, the
latest run reports, error counts by code), so showing a lake reads no pixel data and
no more than one small slice of any table. Every value is escaped: table cells come
from DICOM headers and must not become markup.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Sequence
from html import escape
from typing import Any

import pyarrow as pa

RUNS_DIR = "_runs"  # where the pipelines write run reports (see dicomflow.pipelines.report)
PREVIEW_ROWS = 5
CELL_CHARS = 80  # a longer cell (a DICOM JSON header, say) is cut, with an ellipsis
STYLE = (
    "<style>.dicomflow table{border-collapse:collapse;font-size:12px}"
    ".dicomflow th,.dicomflow td{padding:2px 8px;text-align:left;"
    "border-bottom:1px solid #ddd;vertical-align:top}"
    ".dicomflow caption{text-align:left;font-weight:bold;padding:4px 0}</style>"
)


def html_table(
    header: Sequence[str],
    rows: Iterable[Sequence[Any]],
    *,
    caption: str | None = None,
    chars: int = CELL_CHARS,
) -> str:
    """An HTML table of ``rows`` (every cell escaped and cut to ``chars`` characters)."""
    head = "".join(f"<th>{escape(str(h))}</th>" for h in header)
    body = "".join(
        "<tr>" + "".join(f"<td>{escape(cell_text(v, chars))}</td>" for v in row) + "</tr>"
        for row in rows
    )
    title = f"<caption>{escape(caption)}</caption>" if caption else ""
    return f"<table>{title}<thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>"


def cell_text(value: Any, chars: int = CELL_CHARS) -> str:
    """A value as one line of at most ``chars`` characters."""
    text = "" if value is None else str(value)
    text = " ".join(text.split())
    return text if len(text) <= chars else text[: chars - 1] + "…"


def wrap(*parts: str) -> str:
    """Parts of a display in one styled block."""
    return f'<div class="dicomflow">{STYLE}{"".join(parts)}</div>'


def latest_runs(fs: Any, root: str, count: int = 3) -> list[dict[str, Any]]:
    """The ``count`` latest run reports of the lake (newest first); unreadable ones skipped."""
    paths = sorted(fs.glob(f"{root}/{RUNS_DIR}/*.json"), reverse=True)[:count]
    reports = []
    for path in paths:
        try:
            reports.append(json.loads(fs.cat_file(path)))
        except (OSError, ValueError):
            continue
    return reports


def runs_html(reports: list[dict[str, Any]]) -> str:
    """The latest runs: name, start, seconds and counts."""
    if not reports:
        return ""
    rows = []
    for report in reports:
        counts = report.get("counts") or {}
        rows.append(
            (
                report.get("run_id"),
                report.get("name"),
                report.get("seconds"),
                counts.get("inputs"),
                counts.get("rows"),
                counts.get("error_rows"),
            )
        )
    header = ("run", "name", "seconds", "inputs", "rows", "error rows")
    return html_table(header, rows, caption="latest runs (_runs/)")


def counts_by(table: pa.Table, column: str) -> list[tuple[Any, int]]:
    """``(value, count)`` pairs of ``column``, most frequent first."""
    if table.num_rows == 0 or column not in table.column_names:
        return []
    counted = table.group_by(column).aggregate([([], "count_all")])
    pairs = zip(counted[column].to_pylist(), counted["count_all"].to_pylist(), strict=True)
    return sorted(pairs, key=lambda p: (-p[1], str(p[0])))


def lake_html(
    root: str,
    tables: Sequence[tuple[str, int, int, str | None]],
    *,
    errors_by_code: Sequence[tuple[Any, int]] = (),
    modalities: Sequence[tuple[Any, int]] = (),
    runs: Sequence[dict[str, Any]] = (),
) -> str:
    """A lake at a glance: ``tables`` as ``(name, rows, parts, schema version)``."""
    boxes = [html_table(("table", "rows", "parts", "schema"), tables, caption="tables")]
    if modalities:
        boxes.append(html_table(("Modality", "instances"), modalities, caption="modalities"))
    if errors_by_code:
        boxes.append(html_table(("code", "error rows"), errors_by_code, caption="errors"))
    return wrap(
        f"<b>dicomflow lake</b> <code>{escape(root)}</code>",
        '<div style="display:flex;gap:24px;align-items:flex-start">',
        *boxes,
        "</div>",
        runs_html(list(runs)),
    )


def table_html(name: str, schema: pa.Schema, rows: int, preview: pa.Table) -> str:
    """A table's size, schema version, columns and first rows."""
    version = (schema.metadata or {}).get(b"dicomflow.schema_version", b"").decode() or None
    title = f"<b>{escape(name)}</b>: {rows:,} rows, {len(schema)} columns"
    if version:
        title += f", schema {escape(version)}"
    columns = html_table(
        ("column", "type"), [(f.name, str(f.type)) for f in schema], caption="columns"
    )
    shown = preview.to_pylist()
    first = html_table(
        preview.column_names,
        [[r[c] for c in preview.column_names] for r in shown],
        caption=f"first {len(shown)} rows",
    )
    return wrap(
        title,
        '<div style="display:flex;gap:24px;align-items:flex-start">',
        f'<div style="max-height:320px;overflow:auto">{columns}</div>',
        f'<div style="overflow:auto">{first}</div>',
        "</div>",
    )
