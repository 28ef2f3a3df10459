"""``sr_content`` rows: one per content item, its value typed (see :mod:`dicomflow.sr.tables`)."""

from __future__ import annotations

from typing import Any

from dicomflow.sr.context import observation_contexts
from dicomflow.sr.tree import ContentTree
from dicomflow.sr.values import code_columns, typed_value


def content_rows(tree: ContentTree, sop_instance_uid: str | None) -> list[dict[str, Any]]:
    """The rows of every item of ``tree``, in document order; a problem the walk found
    at an item is named on its row."""
    contexts = observation_contexts(tree)
    problems = {p.path: p.code for p in tree.problems}
    rows = []
    for node in tree.nodes:
        source = node.source
        row: dict[str, Any] = {
            "SOPInstanceUID": sop_instance_uid,
            "path": node.path,
            "parent_path": node.parent.path if node.parent is not None else None,
            "relationship_type": node.relationship,
            "by_reference": node.by_reference,
            "referenced_path": node.target,
            "observation_context": list(contexts[node.path]),
        }
        problem = problems.get(node.path)
        if source is not None:
            value_type = source.value_type
            row["value_type"] = value_type
            row.update(code_columns("concept", source.concept))
            values, value_problem = typed_value(value_type, source.item)
            row.update(values)
            problem = problem or value_problem
        row["problem"] = problem
        rows.append(row)
    return rows
