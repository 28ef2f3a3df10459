"""Observation context (PS3.3 C.17.5), inherited down the content tree.

The HAS OBS CONTEXT children of an item state context (observer, subject, procedure)
for that item and its whole subtree. An item's context is its parent's, updated by its
own HAS OBS CONTEXT children: an entry whose concept name the item restates replaces
the inherited one, others are added. Entries are shared between the items of a
subtree (one tuple each level), so a deep tree costs no copies.
"""

from __future__ import annotations

from typing import Any

from dicomflow.sr.tree import ContentNode, ContentTree
from dicomflow.sr.values import typed_value

HAS_OBS_CONTEXT = "HAS OBS CONTEXT"
TEXT_COLUMNS = ("text_value", "person_name", "uid_value", "numeric_value")
TEMPORAL_COLUMNS = ("date_value", "time_value", "datetime_value")

Entry = dict[str, Any]


def observation_contexts(tree: ContentTree) -> dict[str, tuple[Entry, ...]]:
    """Each item's observation context (by path), in document order of declaration."""
    contexts: dict[str, tuple[Entry, ...]] = {}
    for node in tree.nodes:  # document order: a parent comes before its children
        inherited = contexts[node.parent.path] if node.parent is not None else ()
        declared = [entry(child) for child in node.children if _declares_context(child)]
        if not declared:
            contexts[node.path] = inherited
            continue
        restated = {(e["concept_code_value"], e["concept_scheme"]) for e in declared}
        kept = [
            e for e in inherited if (e["concept_code_value"], e["concept_scheme"]) not in restated
        ]
        contexts[node.path] = (*kept, *declared)
    return contexts


def entry(node: ContentNode) -> Entry:
    """One context entry: where it is declared, its concept and its value (a code's
    three parts, or any other value as text)."""
    source = node.source or node
    concept = source.concept or ("", "", "")
    value_type = source.value_type
    columns, _ = typed_value(value_type, source.item)
    text = next((columns[c] for c in TEXT_COLUMNS if c in columns), None)
    if text is None:
        temporal = next((columns[c] for c in TEMPORAL_COLUMNS if c in columns), None)
        text = None if temporal is None else temporal.isoformat()
    return {
        "path": node.path,
        "concept_code_value": concept[0],
        "concept_scheme": concept[1],
        "concept_meaning": concept[2],
        "value_type": value_type,
        "text": None if text is None else str(text),
        "code_value": columns.get("value_code_value"),
        "code_scheme": columns.get("value_scheme"),
        "code_meaning": columns.get("value_meaning"),
    }


def _declares_context(node: ContentNode) -> bool:
    return node.relationship == HAS_OBS_CONTEXT and node.source is not None
