"""The coded concepts the SR templates are recognised by, as (code value, scheme) pairs.

Names follow the standard's code meanings (PS3.16), as highdicom's ``codes`` do. A
concept that SNOMED CT and the retired SNOMED-RT (``SRT``) both name is a tuple of
both pairs: reports written before 2019 (dcmqi's, most dose reports) still use SRT.
"""

from __future__ import annotations

from typing import NamedTuple


class Code(NamedTuple):
    """A concept as the templates match it: code value and coding scheme designator."""

    value: str
    scheme: str


Concept = tuple[Code, ...]  # every spelling that names one concept


def concept(*codes: tuple[str, str]) -> Concept:
    return tuple(Code(value, scheme) for value, scheme in codes)


# TID 1500 Measurement Report and its groups (TID 1410, 1411, 1501)
IMAGING_MEASUREMENT_REPORT = concept(("126000", "DCM"))
IMAGING_MEASUREMENTS = concept(("126010", "DCM"))
MEASUREMENT_GROUP = concept(("125007", "DCM"))
QUALITATIVE_EVALUATIONS = concept(("C0034375", "UMLS"))
TRACKING_IDENTIFIER = concept(("112039", "DCM"))
TRACKING_UNIQUE_IDENTIFIER = concept(("112040", "DCM"))
FINDING = concept(("121071", "DCM"))
FINDING_SITE = concept(("363698007", "SCT"), ("G-C0E3", "SRT"))
LATERALITY = concept(("272741003", "SCT"), ("G-C171", "SRT"))
MEASUREMENT_METHOD = concept(("370129005", "SCT"), ("G-C036", "SRT"))
DERIVATION = concept(("121401", "DCM"))
ALGORITHM_NAME = concept(("111001", "DCM"))
ALGORITHM_VERSION = concept(("111003", "DCM"))
SOURCE_SERIES_FOR_SEGMENTATION = concept(("121232", "DCM"))

# TID 10011 CT Radiation Dose and TID 10001 Projection X-Ray Radiation Dose
XRAY_RADIATION_DOSE_REPORT = concept(("113701", "DCM"))
CT_ACCUMULATED_DOSE_DATA = concept(("113811", "DCM"))
CT_ACQUISITION = concept(("113819", "DCM"))
ACCUMULATED_XRAY_DOSE_DATA = concept(("113702", "DCM"))
IRRADIATION_EVENT_XRAY_DATA = concept(("113706", "DCM"))
IRRADIATION_EVENT_UID = concept(("113769", "DCM"))
CT_ACQUISITION_TYPE = concept(("113820", "DCM"))
IRRADIATION_EVENT_TYPE = concept(("113721", "DCM"))
TARGET_REGION = concept(("123014", "DCM"))
ACQUISITION_PLANE = concept(("113764", "DCM"))
MEAN_CTDIVOL = concept(("113830", "DCM"))
DLP = concept(("113838", "DCM"))
SCANNING_LENGTH = concept(("113825", "DCM"))
CTDIW_PHANTOM_TYPE = concept(("113835", "DCM"))
CT_DOSE_LENGTH_PRODUCT_TOTAL = concept(("113813", "DCM"))
TOTAL_NUMBER_OF_IRRADIATION_EVENTS = concept(("113812", "DCM"))
DOSE_AREA_PRODUCT = concept(("122130", "DCM"))
DOSE_RP = concept(("113738", "DCM"))
AVERAGE_GLANDULAR_DOSE = concept(("111631", "DCM"))
DOSE_AREA_PRODUCT_TOTAL = concept(("113722", "DCM"))
DOSE_RP_TOTAL = concept(("113725", "DCM"))
ACCUMULATED_AVERAGE_GLANDULAR_DOSE = concept(("111637", "DCM"))

# TID 4000 Mammography CAD and TID 4100 Chest CAD
MAMMOGRAPHY_CAD_REPORT = concept(("111036", "DCM"))
CHEST_CAD_REPORT = concept(("112000", "DCM"))
SINGLE_IMAGE_FINDING = concept(("111059", "DCM"))
COMPOSITE_FEATURE = concept(("111015", "DCM"))
CERTAINTY_OF_FINDING = concept(("111012", "DCM"))
PROBABILITY_OF_CANCER = concept(("111047", "DCM"))
RENDERING_INTENT = concept(("111056", "DCM"))
