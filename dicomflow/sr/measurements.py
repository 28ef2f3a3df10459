"""``measurements`` rows: what the recognised templates measure, one row per value.

Every row names its document (``SOPInstanceUID``), its ``kind``, the ``template`` it
was read by, and the ``path`` of the content item it comes from:

==============  ========  ==========================================================
kind            template  one row per, and its columns
==============  ========  ==========================================================
measurement     1500      NUM of a measurement group: ``concept_*``, ``value``,
                          ``unit`` (UCUM), ``qualifier_*``, ``derivation_*``,
                          ``method_*``, with the group's ``tracking_identifier``,
                          ``tracking_uid``, ``finding_*``, ``finding_site_*``,
                          ``laterality_*``, ``algorithm_name``/``_version`` and the
                          referenced image, segment or region (``referenced_*``,
                          ``source_series_uid``, ``region_*``); ``group_path``
                          is the group's path
qualitative     1500      CODE evaluation of a group (TID 1501): ``concept_*`` and
                          its answer in ``value_*``, with the group's columns
dose_event      10011,    irradiation event: ``irradiation_event_uid``,
                10001     ``event_type_*``, ``target_region_*``,
                          ``acquisition_plane_*``, ``ctdivol``, ``dlp``,
                          ``scanning_length``, ``phantom_*`` (CT);
                          ``dose_area_product``, ``dose_rp``,
                          ``average_glandular_dose`` (projection X-ray)
dose_total      10011,    accumulated dose container (see :mod:`dicomflow.sr.dose`)
                10001
cad_finding     4000,     a Single Image Finding or Composite Feature of a CAD report:
                4100      ``concept_*`` (which), ``finding_*`` (what), ``value``/
                          ``unit`` (its certainty or probability), ``value_*`` (its
                          rendering intent), ``region_*`` and ``referenced_*`` (its
                          center or outline), ``algorithm_*`` (see
                          :mod:`dicomflow.sr.cad`)
==============  ========  ==========================================================

Templates are recognised by their root concept (Imaging Measurement Report 126000,
X-Ray Radiation Dose Report 113701, Mammography CAD Report 111036, Chest CAD Report
112000), whichever SOP class or vendor wrote them; a
document of any other template has ``sr_content`` rows only. ``flagged`` and
``problem`` mean what they mean in ``sr_content``.
"""

from __future__ import annotations

from typing import Any

from dicomflow.sr.cad import cad_rows, is_cad_report
from dicomflow.sr.dose import dose_rows, is_dose_report
from dicomflow.sr.tid1500 import is_measurement_report, measurement_rows
from dicomflow.sr.tree import ContentTree


def template_rows(tree: ContentTree, sop_instance_uid: str | None) -> list[dict[str, Any]]:
    """The ``measurements`` rows of ``tree`` (none for a template not recognised)."""
    if is_measurement_report(tree):
        rows = measurement_rows(tree)
    elif is_dose_report(tree):
        rows = dose_rows(tree)
    elif is_cad_report(tree):
        rows = cad_rows(tree)
    else:
        return []
    problems = {p.path: p.code for p in tree.problems}
    for row in rows:
        row["SOPInstanceUID"] = sop_instance_uid
        row["problem"] = problems.get(row["path"])
    return rows
