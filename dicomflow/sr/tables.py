"""The Arrow schemas of the two SR tables, ``sr_content`` and ``measurements``.

``sr_content``: one row per content item of any SR document, the root included, in
document order. Its value columns are filled by value type:

============================  =====================================================
value type                    columns
============================  =====================================================
TEXT                          ``text_value``
CODE                          ``value_code_value``, ``value_scheme``, ``value_meaning``
NUM                           ``numeric_value``, ``unit`` (UCUM code), ``unit_scheme``,
                              ``unit_meaning``, ``qualifier_*`` (a numeric value
                              qualifier code)
DATE, TIME, DATETIME          ``date_value``, ``time_value``, ``datetime_value``
UIDREF                        ``uid_value``
PNAME                         ``person_name``
COMPOSITE, IMAGE, WAVEFORM    ``referenced_sop_class_uid``,
                              ``referenced_sop_instance_uid``,
                              ``referenced_frame_numbers``, ``referenced_segment_numbers``
SCOORD, SCOORD3D              ``graphic_type``, ``graphic_data``,
                              ``frame_of_reference_uid`` (3D)
TCOORD                        ``temporal_range_type``, ``referenced_sample_positions``,
                              ``referenced_time_offsets``, ``referenced_datetimes``
CONTAINER                     ``continuity_of_content``, ``template_id``
============================  =====================================================

A by-reference item (``by_reference``) names its target in ``referenced_path`` and
carries the target's value type, concept name and value. ``observation_context`` is
the context in force for the item (:mod:`dicomflow.sr.context`). ``problem`` names
what is wrong with this item (``broken_reference``, ``cyclic_reference``,
``missing_concept_name``, ``missing_value``, ``invalid_value``,
``unknown_value_type``); ``flagged`` marks every row of a document whose extraction
hit one of the first three (the document also has an error row of stage ``sr``).

``measurements``: see :mod:`dicomflow.sr.measurements`.
"""

from __future__ import annotations

import pyarrow as pa

CONTENT_TABLE = "sr_content"
CONTENT_VERSION = "1"
MEASUREMENTS_TABLE = "measurements"
MEASUREMENTS_VERSION = "1"

_S = pa.string()
_F = pa.float64()
_INTS = pa.list_(pa.int64())
_FLOATS = pa.list_(pa.float64())


def _code(prefix: str) -> list[pa.Field]:
    return [
        pa.field(f"{prefix}_code_value", _S),
        pa.field(f"{prefix}_scheme", _S),
        pa.field(f"{prefix}_meaning", _S),
    ]


CONTEXT_ENTRY = pa.struct(
    [
        pa.field("path", _S),
        pa.field("concept_code_value", _S),
        pa.field("concept_scheme", _S),
        pa.field("concept_meaning", _S),
        pa.field("value_type", _S),
        pa.field("text", _S),
        pa.field("code_value", _S),
        pa.field("code_scheme", _S),
        pa.field("code_meaning", _S),
    ]
)

CONTENT_SCHEMA = pa.schema(
    [
        pa.field("SOPInstanceUID", _S),
        pa.field("path", _S),
        pa.field("parent_path", _S),
        pa.field("relationship_type", _S),
        pa.field("value_type", _S),
        pa.field("by_reference", pa.bool_()),
        pa.field("referenced_path", _S),
        *_code("concept"),
        pa.field("text_value", _S),
        *_code("value"),
        pa.field("numeric_value", _F),
        pa.field("unit", _S),
        pa.field("unit_scheme", _S),
        pa.field("unit_meaning", _S),
        *_code("qualifier"),
        pa.field("date_value", pa.date32()),
        pa.field("time_value", pa.time64("us")),
        pa.field("datetime_value", pa.timestamp("us")),
        pa.field("uid_value", _S),
        pa.field("person_name", _S),
        pa.field("referenced_sop_class_uid", _S),
        pa.field("referenced_sop_instance_uid", _S),
        pa.field("referenced_frame_numbers", _INTS),
        pa.field("referenced_segment_numbers", _INTS),
        pa.field("graphic_type", _S),
        pa.field("graphic_data", _FLOATS),
        pa.field("frame_of_reference_uid", _S),
        pa.field("temporal_range_type", _S),
        pa.field("referenced_sample_positions", _INTS),
        pa.field("referenced_time_offsets", _FLOATS),
        pa.field("referenced_datetimes", pa.list_(pa.timestamp("us"))),
        pa.field("continuity_of_content", _S),
        pa.field("template_id", _S),
        pa.field("observation_context", pa.list_(CONTEXT_ENTRY)),
        pa.field("flagged", pa.bool_()),
        pa.field("problem", _S),
    ]
)

MEASUREMENTS_SCHEMA = pa.schema(
    [
        pa.field("SOPInstanceUID", _S),
        pa.field("kind", _S),
        pa.field("template", _S),
        pa.field("path", _S),
        pa.field("group_path", _S),
        # TID 1500: the measurement group and the measurement
        pa.field("tracking_identifier", _S),
        pa.field("tracking_uid", _S),
        *_code("finding"),
        *_code("finding_site"),
        *_code("laterality"),
        *_code("concept"),
        pa.field("value", _F),
        pa.field("unit", _S),
        *_code("qualifier"),
        *_code("value"),
        *_code("derivation"),
        *_code("method"),
        pa.field("referenced_sop_class_uid", _S),
        pa.field("referenced_sop_instance_uids", pa.list_(_S)),
        pa.field("referenced_frame_numbers", _INTS),
        pa.field("referenced_segment_numbers", _INTS),
        pa.field("source_series_uid", _S),
        pa.field("region_graphic_type", _S),
        pa.field("region_graphic_data", _FLOATS),
        pa.field("region_frame_of_reference_uid", _S),
        pa.field("algorithm_name", _S),
        pa.field("algorithm_version", _S),
        # TID 10011 / TID 10001: an irradiation event or the accumulated totals
        pa.field("irradiation_event_uid", _S),
        *_code("event_type"),
        *_code("target_region"),
        *_code("acquisition_plane"),
        pa.field("ctdivol", _F),
        pa.field("dlp", _F),
        pa.field("scanning_length", _F),
        *_code("phantom"),
        pa.field("dose_area_product", _F),
        pa.field("dose_rp", _F),
        pa.field("average_glandular_dose", _F),
        pa.field("event_count", pa.int64()),
        pa.field("flagged", pa.bool_()),
        pa.field("problem", _S),
    ]
)
