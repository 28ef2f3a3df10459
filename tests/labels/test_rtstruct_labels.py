"""RT Structure Set contours rasterized onto the image stack they outline.

The series is oblique (rows 30 degrees off the patient's x axis) so that the path from
patient space to the stack's grid matters. The oracles are independent of dicomflow:
each slice of the stack is found by its pixels, each contour is taken to pixel
coordinates with pydicom's reading of that slice's position, orientation and spacing,
and filled by matplotlib's point-in-polygon test (``Path.contains_points``), holes by
the even-odd rule. The masks must agree within one voxel of the contour edges.
"""

from __future__ import annotations

import copy
import subprocess
import warnings
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import pydicom
import pytest
import zarr
from matplotlib.path import Path as Polygon
from pydicom.data import get_testdata_file
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.sequence import Sequence as DicomSequence
from pydicom.uid import ExplicitVRLittleEndian, generate_uid

import dicomflow
from tests.conftest import CORPUS
from tests.helpers import ingest_command

SLICES = 12
SPACING = 3.0  # mm between slices
ANGLE = np.radians(30)
ROW = np.array([np.cos(ANGLE), np.sin(ANGLE), 0.0])  # direction of increasing column
COLUMN = np.array([-np.sin(ANGLE), np.cos(ANGLE), 0.0])  # direction of increasing row
NORMAL = np.cross(ROW, COLUMN)
ORIGIN = np.array([-40.0, -30.0, 10.0])
RTSTRUCT = "1.2.840.10008.5.1.4.1.1.481.3"


def _series(folder: Path) -> list[Dataset]:
    """An oblique CT series from pydicom's CT_small, each slice with its own pixels."""
    folder.mkdir(parents=True)
    template = pydicom.dcmread(str(get_testdata_file("CT_small.dcm")))
    study, series = generate_uid(), generate_uid()
    slices = []
    for number in range(SLICES):
        ds = copy.deepcopy(template)  # Dataset.copy() shares its elements
        ds.StudyInstanceUID, ds.SeriesInstanceUID = study, series
        ds.SOPInstanceUID = ds.file_meta.MediaStorageSOPInstanceUID = generate_uid()
        ds.InstanceNumber = number + 1
        ds.ImageOrientationPatient = [*map(float, ROW), *map(float, COLUMN)]
        ds.ImagePositionPatient = [float(v) for v in ORIGIN + number * SPACING * NORMAL]
        ds.SliceThickness = SPACING
        own = template.pixel_array.copy()
        own[0, :SLICES] = 0
        own[0, number] = 1000  # every slice differs
        ds.PixelData = own.tobytes()
        ds.save_as(folder / f"slice{number:02d}.dcm", enforce_file_format=True)
        slices.append(ds)
    return slices


def _to_patient(ds: Dataset, row: float, column: float) -> np.ndarray:
    """The LPS point of pixel (row, column) of slice ``ds`` (PS3.3 C.7.6.2.1.1)."""
    spacing_between_rows, spacing_between_columns = map(float, ds.PixelSpacing)
    origin = np.array(ds.ImagePositionPatient, float)
    return origin + column * spacing_between_columns * ROW + row * spacing_between_rows * COLUMN


def _to_pixels(ds: Dataset, points: np.ndarray) -> np.ndarray:
    """(row, column) of LPS points on slice ``ds``."""
    spacing_between_rows, spacing_between_columns = map(float, ds.PixelSpacing)
    offset = points - np.array(ds.ImagePositionPatient, float)
    return np.c_[offset @ COLUMN / spacing_between_rows, offset @ ROW / spacing_between_columns]


def _circle(ds: Dataset, row: float, column: float, radius_px: float, n: int = 48) -> np.ndarray:
    angles = np.linspace(0, 2 * np.pi, n, endpoint=False)
    return np.array(
        [
            _to_patient(ds, row + radius_px * np.sin(a), column + radius_px * np.cos(a))
            for a in angles
        ]
    )


def _star(ds: Dataset, row: float, column: float) -> np.ndarray:
    angles = np.linspace(0, 2 * np.pi, 10, endpoint=False)
    radii = np.where(np.arange(10) % 2 == 0, 30.0, 12.0)
    return np.array(
        [
            _to_patient(ds, row + r * np.sin(a), column + r * np.cos(a))
            for a, r in zip(angles, radii, strict=True)
        ]
    )


# ROI number → (name, interpreted type, {slice: [contours as functions of the slice]})
def _rois(slices: Sequence[Dataset]) -> dict[int, tuple[str, str, dict[int, list[np.ndarray]]]]:
    disk = {k: [_circle(slices[k], 40.5, 45.2, 18.3)] for k in range(3, 9)}
    ring = {10: [_circle(slices[10], 64, 64, 35), _circle(slices[10], 64, 70, 12)]}
    star = {1: [_star(slices[1], 80.4, 90.7)], 4: [_star(slices[4], 85, 95)]}
    return {
        1: ("Disk", "ORGAN", disk),
        7: ("Ring with a hole", "PTV", ring),
        12: ("Star", "AVOIDANCE", star),
    }


def _structure_set(
    slices: Sequence[Dataset], rois: dict[int, tuple[str, str, dict[int, list[np.ndarray]]]]
) -> Dataset:
    first = slices[0]
    ds = Dataset()
    ds.file_meta = FileMetaDataset()
    ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds.file_meta.MediaStorageSOPClassUID = RTSTRUCT
    ds.SOPClassUID = RTSTRUCT
    ds.SOPInstanceUID = ds.file_meta.MediaStorageSOPInstanceUID = generate_uid()
    for keyword in ("PatientName", "PatientID", "StudyInstanceUID", "StudyDate", "StudyID"):
        if keyword in first:
            setattr(ds, keyword, first.data_element(keyword).value)
    ds.Modality = "RTSTRUCT"
    ds.SeriesInstanceUID = generate_uid()
    ds.StructureSetLabel = "test"
    images = DicomSequence()
    for item in slices:
        reference = Dataset()
        reference.ReferencedSOPClassUID = item.SOPClassUID
        reference.ReferencedSOPInstanceUID = item.SOPInstanceUID
        images.append(reference)
    series = Dataset()
    series.SeriesInstanceUID = first.SeriesInstanceUID
    series.ContourImageSequence = images
    study = Dataset()
    study.ReferencedSOPClassUID = "1.2.840.10008.3.1.2.3.1"
    study.ReferencedSOPInstanceUID = first.StudyInstanceUID
    study.RTReferencedSeriesSequence = [series]
    frame = Dataset()
    frame.FrameOfReferenceUID = first.FrameOfReferenceUID
    frame.RTReferencedStudySequence = [study]
    ds.ReferencedFrameOfReferenceSequence = [frame]
    ds.StructureSetROISequence = DicomSequence()
    ds.ROIContourSequence = DicomSequence()
    ds.RTROIObservationsSequence = DicomSequence()
    for number, (name, kind, contours) in rois.items():
        roi = Dataset()
        roi.ROINumber = number
        roi.ReferencedFrameOfReferenceUID = first.FrameOfReferenceUID
        roi.ROIName = name
        roi.ROIGenerationAlgorithm = "MANUAL"
        ds.StructureSetROISequence.append(roi)
        outline = Dataset()
        outline.ReferencedROINumber = number
        outline.ROIDisplayColor = [255, 0, 0]
        outline.ContourSequence = DicomSequence()
        for slice_index, polygons in contours.items():
            for points in polygons:
                contour = Dataset()
                image = Dataset()
                image.ReferencedSOPClassUID = slices[slice_index].SOPClassUID
                image.ReferencedSOPInstanceUID = slices[slice_index].SOPInstanceUID
                contour.ContourImageSequence = [image]
                contour.ContourGeometricType = "CLOSED_PLANAR"
                contour.NumberOfContourPoints = len(points)
                contour.ContourData = [round(float(v), 4) for v in points.ravel()]
                outline.ContourSequence.append(contour)
        ds.ROIContourSequence.append(outline)
        observation = Dataset()
        observation.ObservationNumber = number
        observation.ReferencedROINumber = number
        observation.RTROIInterpretedType = kind
        observation.ROIInterpreter = ""
        ds.RTROIObservationsSequence.append(observation)
    return ds


def _oracle(ds: Dataset, polygons: list[np.ndarray], shape: tuple[int, int]) -> np.ndarray:
    """matplotlib's even-odd fill of ``polygons`` on slice ``ds``'s pixel centres."""
    rows, columns = np.mgrid[0 : shape[0], 0 : shape[1]]
    centres = np.c_[rows.ravel(), columns.ravel()]
    mask = np.zeros(shape, bool)
    for points in polygons:
        mask ^= Polygon(_to_pixels(ds, points)).contains_points(centres).reshape(shape)
    return mask


def _near_an_edge(ds: Dataset, polygons: list[np.ndarray], where: np.ndarray) -> np.ndarray:
    """For each (row, column) in ``where``, whether it lies within one pixel of a
    contour's edge."""
    near = np.zeros(len(where), bool)
    for points in polygons:
        vertices = _to_pixels(ds, points)
        starts, ends = vertices, np.roll(vertices, -1, axis=0)
        for start, end in zip(starts, ends, strict=True):
            edge = end - start
            t = np.clip(((where - start) @ edge) / (edge @ edge), 0, 1)
            distance = np.linalg.norm(where - (start + t[:, None] * edge), axis=1)
            near |= distance <= 1.0
    return near


def _ingest(sources: list[Path], lake: Path) -> subprocess.CompletedProcess[str]:
    return ingest_command(sources, lake, "--labels")


@pytest.fixture(scope="module")
def case(tmp_path_factory: pytest.TempPathFactory) -> dict:
    root = tmp_path_factory.mktemp("rtstruct")
    slices = _series(root / "images")
    rois = _rois(slices)
    _structure_set(slices, rois).save_as(root / "rtstruct.dcm", enforce_file_format=True)
    lake = root / "lake"
    done = _ingest([root / "images", root / "rtstruct.dcm"], lake)
    assert done.returncode == 0, done.stderr
    return {"root": root, "slices": slices, "rois": rois, "lake": lake}


def _stack(lake: Path, series_uid: str) -> tuple[str, np.ndarray]:
    (row,) = [
        r
        for r in dicomflow.read_lake(str(lake)).series().to_pylist()
        if r["SeriesInstanceUID"] == series_uid
    ]
    return row["zarr_path"], np.asarray(zarr.open_group(str(lake / row["zarr_path"]))["0"][:])


def test_contours_are_rasterized_within_a_voxel_of_their_edges(case: dict) -> None:
    lake, slices, rois = case["lake"], case["slices"], case["rois"]
    zarr_path, image = _stack(lake, str(slices[0].SeriesInstanceUID))
    # Each slice of the stack, found by its own pixels.
    z_of = {int(np.argmax(image[z, 0, :SLICES])): z for z in range(image.shape[0])}
    assert sorted(z_of) == list(range(SLICES))
    labels = zarr.open_group(str(lake / zarr_path / "labels"), mode="r")
    (name,) = labels.attrs["ome"]["labels"]  # the ROIs do not overlap: one label image
    placed = np.asarray(labels[name]["0"][:])
    assert placed.shape == image.shape[-3:]
    assert sorted(np.unique(placed)) == [0, *sorted(rois)]
    for number, (_, _, contours) in rois.items():
        mask = placed == number
        for index, ds in enumerate(slices):
            polygons = contours.get(index, [])
            expected = _oracle(ds, polygons, mask.shape[1:])
            found = mask[z_of[index]]
            if not polygons:
                assert not found.any(), (number, index)
                continue
            differ = np.argwhere(found != expected)
            assert _near_an_edge(ds, polygons, differ.astype(float)).all(), (number, index)
            assert len(differ) <= 0.05 * expected.sum(), (number, index)
    ring = placed[z_of[10]] == 7
    assert not ring[64, 70] and ring[64, 64 - 30]  # the hole is a hole


def test_label_images_are_valid_ome_zarr(case: dict) -> None:
    from ome_zarr_models.v05.image_label import ImageLabel
    from ome_zarr_models.v05.labels import Labels

    zarr_path, _ = _stack(case["lake"], str(case["slices"][0].SeriesInstanceUID))
    group = zarr.open_group(str(case["lake"] / zarr_path / "labels"), mode="r")
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        Labels.from_zarr(group)
        for name in group.attrs["ome"]["labels"]:
            ImageLabel.from_zarr(group[name])


def test_segments_rows_describe_every_roi(case: dict) -> None:
    rows = dicomflow.read_lake(str(case["lake"])).table("segments").to_pylist()
    assert sorted(r["segment_number"] for r in rows) == sorted(case["rois"])
    for row in rows:
        name, kind, _ = case["rois"][row["segment_number"]]
        assert row["segmentation_type"] == "RTSTRUCT"
        assert (row["segment_label"], row["type_meaning"]) == (name, kind)
        assert row["algorithm_type"] == "MANUAL" and row["status"] == "placed"
        assert row["label_value"] == row["segment_number"] and row["label_path"]
        assert row["source_series_uid"] == str(case["slices"][0].SeriesInstanceUID)


def test_a_contour_outside_the_image_is_an_error_row(case: dict, tmp_path: Path) -> None:
    """The structure set keeps its instances row and its ROI rows; a not_placed error
    row of stage labels says why; the image stack is untouched."""
    slices = case["slices"]
    far = {5: ("Far away", "ORGAN", {2: [_circle(slices[2], 64, 900, 10)]})}
    bad = _structure_set(slices, far)
    bad.save_as(tmp_path / "outside.dcm", enforce_file_format=True)
    lake = tmp_path / "lake"
    done = _ingest([case["root"] / "images", tmp_path / "outside.dcm"], lake)
    assert done.returncode == 0, done.stderr
    read = dicomflow.read_lake(str(lake))
    errors = read.errors().to_pylist()
    assert [(e["stage"], e["code"]) for e in errors] == [("labels", "not_placed")]
    assert "outside" in errors[0]["message"]
    (row,) = read.table("segments").to_pylist()
    assert row["status"].startswith("not placed") and row["label_path"] is None
    assert str(bad.SOPInstanceUID) in read.instances().column("SOPInstanceUID").to_pylist()


def test_a_structure_set_without_its_images_waits(tmp_path: Path) -> None:
    """The corpus's RT Structure Set alone: every ROI indexed, waiting for its images."""
    source = CORPUS / "notZaki__DICOMSamples" / "rtstruct.dcm"
    if not source.exists():
        pytest.skip("the shared corpus is not here")
    done = _ingest([source], tmp_path / "lake")
    assert done.returncode == 0, done.stderr
    rows = dicomflow.read_lake(str(tmp_path / "lake")).table("segments").to_pylist()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        ds = pydicom.dcmread(source, stop_before_pixels=True)
    assert sorted(r["segment_number"] for r in rows) == sorted(
        int(roi.ROINumber) for roi in ds.StructureSetROISequence
    )
    assert {r["segment_label"] for r in rows} == {
        str(r.ROIName) for r in ds.StructureSetROISequence
    }
    assert {r["status"] for r in rows} == {"waiting for the images it segments"}


def test_the_fill_follows_the_top_left_rule() -> None:
    """A square through pixel centres covers its area (its top and left edges in, its
    bottom and right edges out); two squares that share an edge share no pixel."""
    from dicomflow.labels.contours import fill_polygon

    square = fill_polygon(np.array([0.0, 0, 2, 2]), np.array([0.0, 2, 2, 0]), (4, 4))
    assert square.sum() == 4 and square[:2, :2].all()
    beside = fill_polygon(np.array([0.0, 0, 2, 2]), np.array([2.0, 4, 4, 2]), (4, 4))
    assert beside.sum() == 4 and not (square & beside).any()


def test_roi_numbers_that_cannot_be_label_values_are_renumbered() -> None:
    """ROI number 0 (background) and 70,000 (beyond 16 bits) land as values 1 and 2; the
    segments rows say so."""
    from dicomflow.labels.contours import contour_label_images
    from dicomflow.labels.segments import Target

    ds = Dataset()
    ds.ROIContourSequence = []
    for number, row in ((0, 2.0), (70000, 6.0)):
        outline = Dataset()
        outline.ReferencedROINumber = number
        contour = Dataset()
        contour.ContourGeometricType = "CLOSED_PLANAR"
        contour.ContourData = [0.0, row, 0.0, 3.0, row, 0.0, 3.0, row + 2, 0.0]  # x, y, z
        outline.ContourSequence = [contour]
        ds.ROIContourSequence.append(outline)
    affine = np.array([[0, 0, 1, 0], [0, 1, 0, 0], [1, 0, 0, 0], [0, 0, 0, 1.0]])  # z,y,x→x,y,z
    (image,) = contour_label_images(ds, Target("s", (1, 10, 10), {}, None, affine), affine)
    assert image.values == {0: 1, 70000: 2}
    assert set(np.unique(image.data)) == {0, 1, 2}
