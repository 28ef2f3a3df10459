"""SEG masks as OME-Zarr labels on the image stacks they segment, and the ``segments``
table, on the corpus's dcmqi segmentations and their source series.

The oracles are independent of dicomflow's placement: each source slice is found in
the image stack by its pixels (read with pydicom), each slice's mask comes from
highdicom's own reader, and the segment descriptions from pydicom.
"""

from __future__ import annotations

import shutil
import subprocess
import warnings
from pathlib import Path

import highdicom as hd
import numpy as np
import pydicom
import pytest
import zarr
from pydicom.pixels import apply_modality_lut

import dicomflow
from tests.conftest import CORPUS, require
from tests.helpers import ingest_command

SEGMENTATIONS = CORPUS / "QIICR__dcmqi" / "segmentations"
CASES = {  # SEG file → folder of the series it segments
    "23x38x3/seg/label.seg": "23x38x3/image",
    "partial_overlaps.dcm": "ct-3slice",
}


@pytest.fixture(scope="module")
def inputs(tmp_path_factory: pytest.TempPathFactory) -> Path:
    require(SEGMENTATIONS.exists(), f"the dcmqi segmentations in {SEGMENTATIONS}")
    root = tmp_path_factory.mktemp("seg-inputs")
    for seg, images in CASES.items():
        case = root / Path(seg).stem
        shutil.copytree(SEGMENTATIONS / images, case / "images")
        shutil.copy(SEGMENTATIONS / seg, case / "seg.dcm")
    return root


def _labels_run(sources: list[Path], lake: Path) -> subprocess.CompletedProcess[str]:
    return ingest_command(sources, lake, "--labels")


@pytest.fixture(scope="module")
def lake(inputs: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("seg-lake") / "lake"
    done = _labels_run([inputs], out)
    assert done.returncode == 0, done.stderr
    return out


def _stack_of(lake: Path, images: Path) -> tuple[str, np.ndarray]:
    """The image stack holding the series in ``images``, and its array."""
    uid = str(pydicom.dcmread(next(images.iterdir()), stop_before_pixels=True).SeriesInstanceUID)
    rows = [r for r in dicomflow.read_lake(str(lake)).series().to_pylist()]
    (row,) = [r for r in rows if r["SeriesInstanceUID"] == uid]
    group = zarr.open_group(str(lake / row["zarr_path"]), mode="r")
    return row["zarr_path"], np.asarray(group["0"][:])


@pytest.mark.parametrize("case", sorted(Path(s).stem for s in CASES))
def test_masks_land_on_the_slices_they_segment(lake: Path, inputs: Path, case: str) -> None:
    folder = inputs / case
    zarr_path, image = _stack_of(lake, folder / "images")
    # The oracle: slices in order along the normal of their plane (pydicom's reading of
    # position and orientation), each one's values (Modality LUT applied) equal to the
    # stack's slice there.
    slices = [pydicom.dcmread(path) for path in (folder / "images").iterdir()]
    normal = np.cross(*np.reshape(slices[0].ImageOrientationPatient, (2, 3)))
    slices.sort(key=lambda ds: float(np.dot(normal, ds.ImagePositionPatient)))
    z_of = {str(ds.SOPInstanceUID): z for z, ds in enumerate(slices)}
    assert len(slices) == image.shape[0]
    for z, ds in enumerate(slices):
        assert np.array_equal(image[z], apply_modality_lut(ds.pixel_array, ds))
    seg = hd.seg.segread(folder / "seg.dcm")
    uids = [u[2] for u in seg.get_source_image_uids()]
    numbers = [int(s.SegmentNumber) for s in seg.SegmentSequence]
    expected = seg.get_pixels_by_source_instance(
        uids, segment_numbers=numbers, ignore_spatial_locations=True
    )
    labels = zarr.open_group(str(lake / zarr_path / "labels"), mode="r")
    names = labels.attrs["ome"]["labels"]
    assert names  # listed in the image's labels group
    found = np.zeros((*image.shape, len(numbers)), bool)
    for name in names:
        data = np.asarray(labels[name]["0"][:])
        assert data.shape == image.shape
        for index, number in enumerate(numbers):
            found[..., index] |= data == number
    for uid, masks in zip(uids, expected, strict=True):
        assert np.array_equal(found[z_of[uid]], masks.astype(bool)), uid
    others = set(range(image.shape[0])) - {z_of[u] for u in uids}
    assert not found[sorted(others)].any()  # nothing on slices the SEG does not segment
    overlapping = int(expected.astype(bool).sum(axis=-1).max()) > 1
    assert len(names) == (len(numbers) if overlapping else 1)


def test_label_images_are_valid_ome_zarr(lake: Path, inputs: Path) -> None:
    from ome_zarr_models.v05.image_label import ImageLabel
    from ome_zarr_models.v05.labels import Labels

    for case in CASES:
        zarr_path, _ = _stack_of(lake, inputs / Path(case).stem / "images")
        group = zarr.open_group(str(lake / zarr_path / "labels"), mode="r")
        with warnings.catch_warnings():
            warnings.simplefilter("error")
            Labels.from_zarr(group)
            for name in group.attrs["ome"]["labels"]:
                ImageLabel.from_zarr(group[name])


def test_segments_rows_describe_every_segment(lake: Path, inputs: Path) -> None:
    rows = dicomflow.read_lake(str(lake)).table("segments").to_pylist()
    for case in CASES:
        ds = pydicom.dcmread(inputs / Path(case).stem / "seg.dcm", stop_before_pixels=True)
        mine = sorted(
            (r for r in rows if r["SOPInstanceUID"] == str(ds.SOPInstanceUID)),
            key=lambda r: r["segment_number"],
        )
        assert [r["segment_number"] for r in mine] == [
            int(s.SegmentNumber) for s in ds.SegmentSequence
        ]
        for row, item in zip(mine, ds.SegmentSequence, strict=True):
            assert row["segment_label"] == item.SegmentLabel
            category = item.SegmentedPropertyCategoryCodeSequence[0]
            assert row["category_code"] == category.CodeValue
            assert row["type_meaning"] == item.SegmentedPropertyTypeCodeSequence[0].CodeMeaning
            assert row["algorithm_type"] == item.SegmentAlgorithmType
            assert row["status"] == "placed" and row["label_path"]
            assert (lake / row["label_path"] / "zarr.json").exists()


def test_a_seg_waits_for_its_images_and_a_later_run_places_it(inputs: Path, tmp_path: Path) -> None:
    case = inputs / "label"
    out = tmp_path / "lake"
    first = _labels_run([case / "seg.dcm"], out)
    assert first.returncode == 0, first.stderr
    (row,) = dicomflow.read_lake(str(out)).table("segments").to_pylist()
    assert row["status"] == "waiting for the images it segments" and row["label_path"] is None
    assert len(dicomflow.read_lake(str(out)).instances()) == 1  # indexed all the same
    second = _labels_run([case / "images", case / "seg.dcm"], out)
    assert second.returncode == 0, second.stderr
    (row,) = dicomflow.read_lake(str(out)).table("segments").to_pylist()
    assert row["status"] == "placed" and (out / row["label_path"]).exists()


def test_open_series_gives_the_image_and_its_labels_on_one_grid(lake: Path, inputs: Path) -> None:
    images = inputs / "partial_overlaps" / "images"
    series = str(pydicom.dcmread(next(images.iterdir()), stop_before_pixels=True).SeriesInstanceUID)
    zarr_path, image = _stack_of(lake, images)
    both = dicomflow.open_series(str(lake), series, labels=True)
    plain = dicomflow.open_series(str(lake), series)
    assert np.array_equal(both["image"].values, plain.values)
    labels = zarr.open_group(str(lake / zarr_path / "labels"), mode="r")
    names = labels.attrs["ome"]["labels"]
    assert sorted(both.data_vars) == sorted(["image", *(f"labels/{n}" for n in names)])
    for name in names:
        variable = both[f"labels/{name}"]
        assert variable.dims == ("z", "y", "x")
        assert np.array_equal(variable.values, labels[name]["0"][:])
        assert np.array_equal(variable["z"].values, plain["z"].values)  # the same grid
    array, _, masks = dicomflow.open_series(str(lake), series, labels=True, as_numpy=True)
    assert np.array_equal(array, image) and sorted(masks) == sorted(names)
