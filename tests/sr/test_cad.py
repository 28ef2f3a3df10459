"""CAD reports (TID 4000 Mammography CAD, TID 4100 Chest CAD) as ``cad_finding`` rows.

The corpus holds no CAD SR, so the two documents are built here with pydicom, content
item by content item, in the shape PS3.16 gives the templates (root, CAD Processing and
Findings Summary, findings with their certainty, rendering intent, center or outline
SELECTED FROM an image, algorithm identification). The expected rows were written by
hand from that structure, not from the extractor.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.uid import ExplicitVRLittleEndian, generate_uid

import dicomflow
from dicomflow.sr import extract

MAMMOGRAPHY_CAD_SR = "1.2.840.10008.5.1.4.1.1.88.50"
CHEST_CAD_SR = "1.2.840.10008.5.1.4.1.1.88.65"
MG_IMAGE = "1.2.840.10008.5.1.4.1.1.1.2"  # Digital Mammography X-Ray Image (presentation)
DX_IMAGE = "1.2.840.10008.5.1.4.1.1.1.1"
IMAGE_A, IMAGE_B, IMAGE_C = "1.2.3.100.1", "1.2.3.100.2", "1.2.3.100.3"


def _code(value: str, scheme: str, meaning: str) -> Dataset:
    item = Dataset()
    item.CodeValue, item.CodingSchemeDesignator, item.CodeMeaning = value, scheme, meaning
    return item


def _item(relationship: str, value_type: str, name: tuple[str, str, str], **values: Any) -> Dataset:
    item = Dataset()
    item.RelationshipType = relationship
    item.ValueType = value_type
    item.ConceptNameCodeSequence = [_code(*name)]
    for keyword, value in values.items():
        setattr(item, keyword, value)
    return item


def _with(item: Dataset, *children: Dataset) -> Dataset:
    item.ContentSequence = list(children)
    return item


def _num(name: tuple[str, str, str], value: str, unit: tuple[str, str, str]) -> Dataset:
    measured = Dataset()
    measured.NumericValue = value
    measured.MeasurementUnitsCodeSequence = [_code(*unit)]
    return _item("HAS PROPERTIES", "NUM", name, MeasuredValueSequence=[measured])


def _image(sop_class: str, sop_instance: str) -> Dataset:
    reference = Dataset()
    reference.ReferencedSOPClassUID = sop_class
    reference.ReferencedSOPInstanceUID = sop_instance
    return _item("SELECTED FROM", "IMAGE", ("111040", "DCM", "Original Source"),
                 ReferencedSOPSequence=[reference])  # fmt: skip


def _scoord(name: tuple[str, str, str], kind: str, data: list[float], image: Dataset) -> Dataset:
    return _with(_item("HAS PROPERTIES", "SCOORD", name, GraphicType=kind, GraphicData=data), image)


PERCENT = ("%", "UCUM", "Percent")
CERTAINTY = ("111012", "DCM", "Certainty of Finding")
PROBABILITY = ("111047", "DCM", "Probability of cancer")
INTENT = ("111056", "DCM", "Rendering Intent")
REQUIRED = ("111150", "DCM", "Presentation Required: Rendering device is expected to present")
OPTIONAL = ("111151", "DCM", "Presentation Optional: Rendering device may present")
CENTER = ("111010", "DCM", "Center")
OUTLINE = ("111041", "DCM", "Outline")
SINGLE = ("111059", "DCM", "Single Image Finding")
COMPOSITE = ("111015", "DCM", "Composite Feature")
MASS = ("4147007", "SCT", "Mass")
CALCIFICATION = ("129748009", "SCT", "Calcification Cluster")
NODULE = ("27925004", "SCT", "Nodule")


def _algorithm(name: str, version: str) -> list[Dataset]:
    return [
        _item("HAS PROPERTIES", "TEXT", ("111001", "DCM", "Algorithm Name"), TextValue=name),
        _item("HAS PROPERTIES", "TEXT", ("111003", "DCM", "Algorithm Version"), TextValue=version),
    ]


def _document(sop_class: str, root: tuple[str, str, str], findings: list[Dataset]) -> Dataset:
    ds = Dataset()
    ds.file_meta = FileMetaDataset()
    ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds.file_meta.MediaStorageSOPClassUID = sop_class
    ds.SOPClassUID = sop_class
    ds.SOPInstanceUID = ds.file_meta.MediaStorageSOPInstanceUID = generate_uid()
    ds.StudyInstanceUID, ds.SeriesInstanceUID = generate_uid(), generate_uid()
    ds.Modality = "SR"
    ds.PatientID = "CAD-TEST"
    ds.ValueType = "CONTAINER"
    ds.ContinuityOfContent = "SEPARATE"
    ds.ConceptNameCodeSequence = [_code(*root)]
    outcome = _code("111242", "DCM", "All algorithms succeeded; with findings")
    summary = _with(
        _item(
            "CONTAINS",
            "CODE",
            ("111017", "DCM", "CAD Processing and Findings Summary"),
            ConceptCodeSequence=[outcome],
        ),
        *findings,
    )
    ds.ContentSequence = [summary]
    return ds


def _mammography() -> Dataset:
    mass = _with(
        _item("CONTAINS", "CODE", SINGLE, ConceptCodeSequence=[_code(*MASS)]),
        _item("HAS PROPERTIES", "CODE", INTENT, ConceptCodeSequence=[_code(*REQUIRED)]),
        _num(CERTAINTY, "87", PERCENT),
        _scoord(CENTER, "POINT", [412.0, 1022.5], _image(MG_IMAGE, IMAGE_A)),
        *_algorithm("MassFinder", "3.2"),
    )
    calcification = _with(
        _item("CONTAINS", "CODE", SINGLE, ConceptCodeSequence=[_code(*CALCIFICATION)]),
        _item("HAS PROPERTIES", "CODE", INTENT, ConceptCodeSequence=[_code(*OPTIONAL)]),
        _num(CERTAINTY, "40.5", PERCENT),
        _scoord(
            OUTLINE,
            "POLYLINE",
            [10.0, 10.0, 30.0, 10.0, 30.0, 25.0, 10.0, 10.0],
            _image(MG_IMAGE, IMAGE_B),
        ),
        *_algorithm("CalcFinder", "1.0"),
    )
    composite_mass = _with(
        _item("HAS PROPERTIES", "CODE", SINGLE, ConceptCodeSequence=[_code(*MASS)]),
        _num(CERTAINTY, "70", PERCENT),
        _scoord(CENTER, "POINT", [400.0, 1000.0], _image(MG_IMAGE, IMAGE_B)),
    )
    composite = _with(
        _item("CONTAINS", "CODE", COMPOSITE, ConceptCodeSequence=[_code(*MASS)]),
        _item("HAS PROPERTIES", "CODE", INTENT, ConceptCodeSequence=[_code(*REQUIRED)]),
        _num(PROBABILITY, "62", PERCENT),
        composite_mass,
    )
    return _document(MAMMOGRAPHY_CAD_SR, ("111036", "DCM", "Mammography CAD Report"),
                     [mass, calcification, composite])  # fmt: skip


def _chest() -> Dataset:
    nodule = _with(
        _item("CONTAINS", "CODE", SINGLE, ConceptCodeSequence=[_code(*NODULE)]),
        _num(CERTAINTY, "75", PERCENT),
        _scoord(CENTER, "POINT", [256.0, 300.0], _image(DX_IMAGE, IMAGE_C)),
        *_algorithm("NoduleNet", "2024.1"),
    )
    return _document(CHEST_CAD_SR, ("112000", "DCM", "Chest CAD Report"), [nodule])


# (template, path, concept, finding, likelihood, unit, intent, region type, region data,
#  images, algorithm, version): written by hand from the documents above.
EXPECTED_MAMMOGRAPHY = [
    ("4000", "1.1.1", "111059", "4147007", 87.0, "%", "111150", "POINT", [412.0, 1022.5],
     [IMAGE_A], "MassFinder", "3.2"),
    ("4000", "1.1.2", "111059", "129748009", 40.5, "%", "111151", "POLYLINE",
     [10.0, 10.0, 30.0, 10.0, 30.0, 25.0, 10.0, 10.0], [IMAGE_B], "CalcFinder", "1.0"),
    ("4000", "1.1.3", "111015", "4147007", 62.0, "%", "111150", None, None, None, None, None),
    ("4000", "1.1.3.3", "111059", "4147007", 70.0, "%", None, "POINT", [400.0, 1000.0],
     [IMAGE_B], None, None),
]  # fmt: skip
EXPECTED_CHEST = [
    ("4100", "1.1.1", "111059", "27925004", 75.0, "%", None, "POINT", [256.0, 300.0],
     [IMAGE_C], "NoduleNet", "2024.1"),
]  # fmt: skip


def _as_tuples(rows: list[dict[str, Any]]) -> list[tuple[Any, ...]]:
    return [
        (
            r["template"],
            r["path"],
            r["concept_code_value"],
            r["finding_code_value"],
            r.get("value"),
            r.get("unit"),
            r.get("value_code_value"),
            r.get("region_graphic_type"),
            r.get("region_graphic_data"),
            r.get("referenced_sop_instance_uids"),
            r.get("algorithm_name"),
            r.get("algorithm_version"),
        )
        for r in rows
        if r["kind"] == "cad_finding"
    ]


@pytest.mark.parametrize(
    ("build", "expected"),
    [(_mammography, EXPECTED_MAMMOGRAPHY), (_chest, EXPECTED_CHEST)],
    ids=["mammography", "chest"],
)
def test_one_row_per_finding_with_its_likelihood_and_coordinates(
    build: Any, expected: list[tuple[Any, ...]]
) -> None:
    document = build()
    rows = extract(document).measurements
    assert _as_tuples(rows) == expected
    assert {r["SOPInstanceUID"] for r in rows} == {str(document.SOPInstanceUID)}


def test_cad_rows_land_in_the_lake(tmp_path: Path) -> None:
    """Through ``ingest --sr``: the files' rows in the lake's measurements table."""
    for name, build in (("mammo.dcm", _mammography), ("chest.dcm", _chest)):
        build().save_as(tmp_path / name, enforce_file_format=True)
    dicomflow.ingest(
        [str(tmp_path / "mammo.dcm"), str(tmp_path / "chest.dcm")],
        out=str(tmp_path / "lake"),
        operators=[dicomflow.SrOperator()],
        progress=False,
        workers=1,
    )
    rows = dicomflow.read_lake(str(tmp_path / "lake")).table("measurements").to_pylist()
    found = sorted(_as_tuples(rows), key=lambda r: (r[0], r[1]))
    assert found == sorted(EXPECTED_MAMMOGRAPHY + EXPECTED_CHEST, key=lambda r: (r[0], r[1]))
