"""CAD reports: TID 4000 (Mammography CAD) and TID 4100 (Chest CAD), a row per finding.

Every Single Image Finding (111059) and Composite Feature (111015) is a ``cad_finding``
row: ``concept_*`` says which of the two it is, ``finding_*`` what was found (the
item's coded value), ``value``/``unit`` its likelihood (Certainty of Finding 111012,
else Probability of cancer 111047, as stored), ``value_*`` its Rendering Intent, the
region and images of its own Center or Outline (SCOORD and their SELECTED FROM
images), and the algorithm that found it. A composite feature's row carries its own
coordinates, not those of the findings it is made of (each of which has its row).
Reports are recognised by their root concept, whichever SOP class holds them.
"""

from __future__ import annotations

from typing import Any

from dicomflow.sr import codes
from dicomflow.sr.tid1500 import code_value, content_item, references
from dicomflow.sr.tree import ContentNode, ContentTree, first_code
from dicomflow.sr.values import code_columns, numeric_value

Row = dict[str, Any]
FINDINGS = (*codes.SINGLE_IMAGE_FINDING, *codes.COMPOSITE_FEATURE)
LIKELIHOOD = (codes.CERTAINTY_OF_FINDING, codes.PROBABILITY_OF_CANCER)


def is_cad_report(tree: ContentTree) -> bool:
    return tree.root.named(codes.MAMMOGRAPHY_CAD_REPORT) or tree.root.named(codes.CHEST_CAD_REPORT)


def cad_rows(tree: ContentTree) -> list[Row]:
    """One row per finding of a Mammography or Chest CAD report, in document order."""
    template = "4000" if tree.root.named(codes.MAMMOGRAPHY_CAD_REPORT) else "4100"
    rows: list[Row] = []
    for node in tree.nodes:
        if node.by_reference or node.value_type != "CODE" or not node.named(FINDINGS):
            continue
        row: Row = {"kind": "cad_finding", "template": template, "path": node.path}
        row["group_path"] = node.parent.path if node.parent is not None else None
        row.update(code_columns("concept", node.source.concept if node.source else None))
        row.update(code_columns("finding", first_code(content_item(node), "ConceptCodeSequence")))
        row.update(_likelihood(node))
        row.update(code_columns("value", code_value(node.child(codes.RENDERING_INTENT, "CODE"))))
        own = [c for c in node.children if c.value_type in ("SCOORD", "SCOORD3D", "IMAGE")]
        row.update(references(own))
        row.update(_algorithm(node))
        rows.append(row)
    return rows


def _likelihood(node: ContentNode) -> Row:
    for names in LIKELIHOOD:
        found = node.child(names, "NUM")
        measured = content_item(found).get("MeasuredValueSequence") if found else None
        if measured:
            unit = first_code(measured[0], "MeasurementUnitsCodeSequence")
            return {"value": numeric_value(measured[0]), "unit": unit[0] if unit else None}
    return {}


def _algorithm(node: ContentNode) -> Row:
    name = node.child(codes.ALGORITHM_NAME, "TEXT")
    if name is None:
        return {}
    version = node.child(codes.ALGORITHM_VERSION, "TEXT")
    return {
        "algorithm_name": content_item(name).get("TextValue"),
        "algorithm_version": content_item(version).get("TextValue") if version else None,
    }
