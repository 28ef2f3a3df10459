"""Radiation dose reports: TID 10011 (CT) and TID 10001 (projection X-ray) as rows.

One ``dose_event`` row per irradiation event (a CT Acquisition container, TID 10013;
an Irradiation Event X-Ray Data container, TID 10003) and one ``dose_total`` row per
accumulated-dose container (CT Accumulated Dose Data, TID 10012; Accumulated X-Ray
Dose Data, TID 10002, one per acquisition plane). Values are the numbers stored in
the file, in the units the templates prescribe: CTDIvol mGy, DLP mGy·cm, scanning
length mm, dose area product Gy·m², dose (RP) Gy, average glandular dose mGy. A total
row reuses the event columns: the DLP total in ``dlp``, the DAP and dose (RP) totals
in ``dose_area_product`` and ``dose_rp``, the first accumulated average glandular
dose in ``average_glandular_dose``, and the number of events in ``event_count``.
Each value is the first one found in its container's subtree, in document order.
"""

from __future__ import annotations

from typing import Any

from dicomflow.sr import codes
from dicomflow.sr.codes import Concept
from dicomflow.sr.tree import ContentNode, ContentTree, first_code
from dicomflow.sr.values import code_columns, numeric_value

Row = dict[str, Any]

EVENT_NUMBERS: tuple[tuple[str, Concept], ...] = (
    ("ctdivol", codes.MEAN_CTDIVOL),
    ("dlp", codes.DLP),
    ("scanning_length", codes.SCANNING_LENGTH),
    ("dose_area_product", codes.DOSE_AREA_PRODUCT),
    ("dose_rp", codes.DOSE_RP),
    ("average_glandular_dose", codes.AVERAGE_GLANDULAR_DOSE),
)
EVENT_CODES: tuple[tuple[str, Concept], ...] = (
    ("event_type", (*codes.CT_ACQUISITION_TYPE, *codes.IRRADIATION_EVENT_TYPE)),
    ("target_region", codes.TARGET_REGION),
    ("acquisition_plane", codes.ACQUISITION_PLANE),
    ("phantom", codes.CTDIW_PHANTOM_TYPE),
)
TOTAL_NUMBERS: tuple[tuple[str, Concept], ...] = (
    ("dlp", codes.CT_DOSE_LENGTH_PRODUCT_TOTAL),
    ("dose_area_product", codes.DOSE_AREA_PRODUCT_TOTAL),
    ("dose_rp", codes.DOSE_RP_TOTAL),
    ("average_glandular_dose", codes.ACCUMULATED_AVERAGE_GLANDULAR_DOSE),
)
TOTAL_CODES: tuple[tuple[str, Concept], ...] = (("acquisition_plane", codes.ACQUISITION_PLANE),)
EVENTS = (*codes.CT_ACQUISITION, *codes.IRRADIATION_EVENT_XRAY_DATA)
TOTALS = (*codes.CT_ACCUMULATED_DOSE_DATA, *codes.ACCUMULATED_XRAY_DOSE_DATA)
CT = (*codes.CT_ACQUISITION, *codes.CT_ACCUMULATED_DOSE_DATA)


def is_dose_report(tree: ContentTree) -> bool:
    return tree.root.named(codes.XRAY_RADIATION_DOSE_REPORT)


def dose_rows(tree: ContentTree) -> list[Row]:
    """The event and total rows of an X-ray radiation dose report, in document order."""
    containers = [n for n in tree.nodes if not n.by_reference and n.value_type == "CONTAINER"]
    template = "10011" if any(n.named(CT) for n in containers) else "10001"
    rows: list[Row] = []
    for node in containers:
        if node.named(EVENTS):
            row = _row(tree, node, "dose_event", template, EVENT_NUMBERS, EVENT_CODES)
            uid = _first(tree, node, codes.IRRADIATION_EVENT_UID, "UIDREF")
            if uid is not None and uid.source is not None:
                row["irradiation_event_uid"] = uid.source.item.get("UID")
            rows.append(row)
        elif node.named(TOTALS):
            row = _row(tree, node, "dose_total", template, TOTAL_NUMBERS, TOTAL_CODES)
            count = _number(_first(tree, node, codes.TOTAL_NUMBER_OF_IRRADIATION_EVENTS, "NUM"))
            row["event_count"] = None if count is None else int(count)
            rows.append(row)
    return rows


def _row(
    tree: ContentTree,
    container: ContentNode,
    kind: str,
    template: str,
    numbers: tuple[tuple[str, Concept], ...],
    coded: tuple[tuple[str, Concept], ...],
) -> Row:
    row: Row = {"kind": kind, "template": template, "path": container.path}
    row.update(code_columns("concept", container.concept))
    for column, names in numbers:
        row[column] = _number(_first(tree, container, names, "NUM"))
    for prefix, names in coded:
        found = _first(tree, container, names, "CODE")
        if found is not None and found.source is not None:
            row.update(code_columns(prefix, first_code(found.source.item, "ConceptCodeSequence")))
    return row


def _first(
    tree: ContentTree, container: ContentNode, names: Concept, value_type: str
) -> ContentNode | None:
    for node in tree.descendants(container):
        if node.named(names) and node.value_type == value_type:
            return node
    return None


def _number(node: ContentNode | None) -> float | None:
    if node is None or node.source is None:
        return None
    measured = node.source.item.get("MeasuredValueSequence")
    return numeric_value(measured[0]) if measured else None
