"""Query matches (C-FIND identifiers, QIDO-RS results) as a table typed like ``instances``.

DIMSE and DICOMweb queries answer with the same thing, data sets of matching keys;
both become one row per match through the same flattening as a file's header, so a
query's table joins the lake's tables column for column.
"""

from __future__ import annotations

from collections.abc import Iterable
from datetime import UTC, datetime
from typing import Any

import pyarrow as pa
from pydicom.dataset import Dataset

from dicomflow.dicom.pydicom_tree import tree_from_dataset
from dicomflow.dicom.rows import RowContext, header_to_row, rows_to_table
from dicomflow.records import Header, SourceRef


def matches_table(matches: Iterable[Dataset], source: str, level: str) -> pa.Table:
    """Matches as an Arrow table with the ``instances`` schema (typed columns,
    ``dicom_json``), one row per match; ``source`` is ``<peer>#<level>/<number>`` and
    ``kind`` is ``query:<level>``."""
    context = RowContext(f"query-{datetime.now(UTC):%Y%m%dT%H%M%SZ}", datetime.now(UTC))
    memo: dict[object, object] = {}
    rows: list[dict[str, Any]] = []
    for number, found in enumerate(matches):
        header = Header(tree_from_dataset(found), (), None, True, False, deflated=False)
        row = header_to_row(header, SourceRef(f"{source}#{level}/{number}"), context, memo)
        row["kind"] = f"query:{level}"
        rows.append(row)
    return rows_to_table(rows)
