"""TID 1500 Measurement Report: one ``measurements`` row per measurement or evaluation.

Measurement groups are found by what they are, not by who wrote them: every
CONTAINER named Measurement Group (125007), every CONTAINER directly under Imaging
Measurements (126010), and the document-level Qualitative Evaluations container.
Each NUM child of a group is a ``measurement`` row and each CODE child other than the
finding, the finding site and the measurement method is a ``qualitative`` row (TID
1501), as highdicom's ``MeasurementsAndQualitativeEvaluations`` counts them.

A row carries its group's facts (TID 1410/1411/1501: tracking identifier and UID,
finding, finding site and its laterality, method, algorithm, the referenced image,
segment or region); a measurement's own modifiers (derivation, method, finding site,
algorithm: TID 300 and TID 4019) and its INFERRED FROM references override them.
"""

from __future__ import annotations

from typing import Any

from dicomflow.sr import codes
from dicomflow.sr.tree import ContentNode, ContentTree, first_code
from dicomflow.sr.values import code_columns, floats, numeric_value, referenced_sop

Row = dict[str, Any]
NOT_EVALUATIONS = (*codes.FINDING, *codes.FINDING_SITE, *codes.MEASUREMENT_METHOD)
REFERENCE_FIELDS = (
    "referenced_sop_class_uid",
    "referenced_sop_instance_uids",
    "referenced_frame_numbers",
    "referenced_segment_numbers",
    "source_series_uid",
    "region_graphic_type",
    "region_graphic_data",
    "region_frame_of_reference_uid",
)


def is_measurement_report(tree: ContentTree) -> bool:
    return tree.root.named(codes.IMAGING_MEASUREMENT_REPORT)


def measurement_rows(tree: ContentTree) -> list[Row]:
    """The measurement and qualitative evaluation rows of a TID 1500 report."""
    rows: list[Row] = []
    for group in tree.nodes:
        if not _is_group(group):
            continue
        facts = group_facts(group)
        for node in group.children:
            if node.value_type == "NUM":
                rows.append(_measurement(node, group, facts))
            elif node.value_type == "CODE" and not node.named(NOT_EVALUATIONS):
                rows.append(_evaluation(node, group, facts))
    return rows


def group_facts(group: ContentNode) -> Row:
    """What a group says about all its measurements (TID 1410, 1411, 1501)."""
    facts: Row = {}
    tracking = group.child(codes.TRACKING_IDENTIFIER, "TEXT")
    if tracking is not None:
        facts["tracking_identifier"] = content_item(tracking).get("TextValue")
    uid = group.child(codes.TRACKING_UNIQUE_IDENTIFIER, "UIDREF")
    if uid is not None:
        facts["tracking_uid"] = content_item(uid).get("UID")
    facts.update(code_columns("finding", code_value(group.child(codes.FINDING, "CODE"))))
    facts.update(_modifiers(group))
    facts.update(references(group.children))
    return facts


def _measurement(node: ContentNode, group: ContentNode, facts: Row) -> Row:
    row = {**facts, "kind": "measurement", **_position(node, group)}
    row.update(code_columns("concept", node.source.concept if node.source else None))
    row.update(_modifiers(node))
    row.update(code_columns("derivation", code_value(node.child(codes.DERIVATION, "CODE"))))
    inferred = [c for c in node.children if c.relationship == "INFERRED FROM"]
    own = references(inferred)
    if own:
        row.update({name: own.get(name) for name in REFERENCE_FIELDS})
    item = content_item(node)
    row.update(code_columns("qualifier", first_code(item, "NumericValueQualifierCodeSequence")))
    measured = item.get("MeasuredValueSequence")
    if measured:
        row["value"] = numeric_value(measured[0])
        unit = first_code(measured[0], "MeasurementUnitsCodeSequence")
        row["unit"] = unit[0] if unit else None
    return row


def _evaluation(node: ContentNode, group: ContentNode, facts: Row) -> Row:
    row = {**facts, "kind": "qualitative", **_position(node, group)}
    row.update(code_columns("concept", node.source.concept if node.source else None))
    row.update(code_columns("value", first_code(content_item(node), "ConceptCodeSequence")))
    return row


def _modifiers(node: ContentNode) -> Row:
    """Finding site (with its laterality), method and algorithm stated under ``node``."""
    facts: Row = {}
    site = node.child(codes.FINDING_SITE, "CODE")
    if site is not None:
        facts.update(code_columns("finding_site", code_value(site)))
        laterality = site.child(codes.LATERALITY, "CODE") or node.child(codes.LATERALITY, "CODE")
        facts.update(code_columns("laterality", code_value(laterality)))
    facts.update(code_columns("method", code_value(node.child(codes.MEASUREMENT_METHOD, "CODE"))))
    algorithm = node.child(codes.ALGORITHM_NAME, "TEXT")
    if algorithm is not None:
        facts["algorithm_name"] = content_item(algorithm).get("TextValue")
        version = algorithm.child(codes.ALGORITHM_VERSION, "TEXT") or node.child(
            codes.ALGORITHM_VERSION, "TEXT"
        )
        facts["algorithm_version"] = content_item(version).get("TextValue") if version else None
    return facts


def references(nodes: list[ContentNode]) -> Row:
    """The images, segments and region that ``nodes`` reference (a region's own
    SELECTED FROM images included); empty when they reference none."""
    found: Row = {}
    instances: list[str] = []
    frames: list[int] = []
    segments: list[int] = []
    pending = list(nodes)
    while pending:
        node = pending.pop(0)
        value_type = node.value_type
        item = content_item(node)
        if value_type in ("IMAGE", "COMPOSITE", "WAVEFORM"):
            sequence = item.get("ReferencedSOPSequence")
            reference = referenced_sop(sequence[0]) if sequence else {}
            if "referenced_sop_instance_uid" in reference:
                instances.append(reference["referenced_sop_instance_uid"])
            found.setdefault("referenced_sop_class_uid", reference.get("referenced_sop_class_uid"))
            frames.extend(reference.get("referenced_frame_numbers", ()))
            segments.extend(reference.get("referenced_segment_numbers", ()))
        elif value_type in ("SCOORD", "SCOORD3D") and "region_graphic_type" not in found:
            found["region_graphic_type"] = item.get("GraphicType")
            found["region_graphic_data"] = floats(item.get("GraphicData"))
            found["region_frame_of_reference_uid"] = item.get("ReferencedFrameOfReferenceUID")
            pending.extend(c for c in node.children if c.relationship == "SELECTED FROM")
        elif value_type == "UIDREF" and node.named(codes.SOURCE_SERIES_FOR_SEGMENTATION):
            found["source_series_uid"] = item.get("UID")
    if instances:
        found["referenced_sop_instance_uids"] = instances
    if frames:
        found["referenced_frame_numbers"] = frames
    if segments:
        found["referenced_segment_numbers"] = segments
    return {name: value for name, value in found.items() if value is not None}


def _is_group(node: ContentNode) -> bool:
    if node.by_reference or node.value_type != "CONTAINER":
        return False
    if node.named(codes.MEASUREMENT_GROUP) or node.named(codes.QUALITATIVE_EVALUATIONS):
        return True
    return node.parent is not None and node.parent.named(codes.IMAGING_MEASUREMENTS)


def _position(node: ContentNode, group: ContentNode) -> Row:
    return {"template": "1500", "path": node.path, "group_path": group.path}


def code_value(node: ContentNode | None) -> tuple[str, str, str] | None:
    return None if node is None else first_code(content_item(node), "ConceptCodeSequence")


def content_item(node: ContentNode) -> Any:
    """The dataset holding ``node``'s content (its target's, by reference)."""
    source = node.source
    return source.item if source is not None else node.item
