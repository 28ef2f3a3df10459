"""``open_series`` against pydicom: lazy arrays with pydicom's values, and coordinates in
patient space that equal what each source file's header says.

The oracle reads Image Position (Patient), Image Orientation (Patient) and Pixel
Spacing from the source files with pydicom (per frame for enhanced multi-frame), never
through the product's geometry code. Pyramid levels and channel-first colour stacks are
written by hand here, as the OME-Zarr metadata describes them, into copies of the lake.
"""

from __future__ import annotations

import shutil
import warnings
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import dask.array as da
import numpy as np
import pydicom
import pytest
import zarr
from pydicom.data import get_testdata_file
from pydicom.pixels import apply_modality_lut
from pydicom.uid import generate_uid

import dicomflow
from dicomflow.errors import ConfigError
from tests.conftest import CORPUS, PYDICOM_TEST_FILES

# Series read from the shared corpus and pydicom's own test files, by what they show.
CORPUS_SERIES = {
    "ct-axial-512": "QIICR__dcmqi/segmentations/ct-3slice",
    "ct-axial-small": "QIICR__dcmqi/segmentations/23x38x3/image",
    "mr-oblique": "pydicom__pydicom-data/MR2_UNCR.dcm",
    "mr-oblique-three-axes": "suyashkumar__dicom/3.dcm",
    "mr-enhanced-sagittal": "icometrix__dicom2nifti/philips_enhanced/anatomical/001",
    "us-colour": "pydicom__pydicom/test_files/examples_rgb_color.dcm",
    "dx-no-geometry": "ImagingDataCommons__highdicom/dx_image.dcm",
}
PYDICOM_SERIES = {"mr-radial-stacks": "dicomdirtests/98892003/MR700"}  # 7 orientations
GAPS = "ct-gaps"  # CT_small at four positions, one step missing (written here)
GAP_STEPS = (0.0, 2.5, 5.0, 12.5)
GEOMETRIC = (
    "ct-axial-512",
    "ct-axial-small",
    "mr-oblique",
    "mr-oblique-three-axes",
    "mr-enhanced-sagittal",
    "mr-radial-stacks",
    GAPS,
)
WITHOUT_GEOMETRY = ("us-colour", "dx-no-geometry")
TOLERANCE = 1e-3  # mm: positions are stored as DICOM decimal strings


@dataclass(frozen=True)
class Frame:
    """One frame as its source file describes it (pydicom only)."""

    path: Path
    frame: int  # in its file
    position: np.ndarray  # Image Position (Patient)
    row: np.ndarray  # direction of increasing column index (x)
    column: np.ndarray  # direction of increasing row index (y)
    spacing: tuple[float, float]  # Pixel Spacing: between rows (y), between columns (x)
    frame_of_reference: str | None  # NaN where the file has no geometry


def _read(path: Path) -> pydicom.Dataset:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return pydicom.dcmread(path)


def _item(ds: pydicom.Dataset, frame: int, sequence: str) -> pydicom.Dataset | None:
    """A functional group macro of ``frame``: its own, else the shared one."""
    for groups, index in (
        ("PerFrameFunctionalGroupsSequence", frame),
        ("SharedFunctionalGroupsSequence", 0),
    ):
        items = ds.get(groups)
        if items and index < len(items) and sequence in items[index]:
            item: pydicom.Dataset = items[index][sequence][0]
            return item
    return None


def _frames(path: Path) -> list[Frame]:
    ds = _read(path)
    count = int(ds.get("NumberOfFrames") or 1)
    frames = []
    for frame in range(count):
        position = ds.get("ImagePositionPatient")
        orientation = ds.get("ImageOrientationPatient")
        spacing = ds.get("PixelSpacing")
        if position is None:
            plane = _item(ds, frame, "PlanePositionSequence")
            position = plane.ImagePositionPatient if plane else None
        if orientation is None:
            plane = _item(ds, frame, "PlaneOrientationSequence")
            orientation = plane.ImageOrientationPatient if plane else None
        if spacing is None:
            measures = _item(ds, frame, "PixelMeasuresSequence")
            spacing = measures.PixelSpacing if measures else None
        missing = [np.nan] * 6  # no geometry: any comparison with it fails
        position = missing[:3] if position is None else position
        orientation = missing if orientation is None else orientation
        spacing = missing[:2] if spacing is None else spacing
        frames.append(
            Frame(
                path=path,
                frame=frame,
                position=np.array(position, float),
                row=np.array(orientation[:3], float),
                column=np.array(orientation[3:], float),
                spacing=(float(spacing[0]), float(spacing[1])),
                frame_of_reference=ds.get("FrameOfReferenceUID"),
            )
        )
    return frames


def _pixels(path: Path) -> np.ndarray:
    """pydicom's decode, frames first, through the Modality LUT (or, for enhanced
    multi-frame, each frame's Pixel Value Transformation), as a stack holds it."""
    ds = _read(path)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        array = ds.pixel_array
    frames = array[np.newaxis] if int(ds.get("NumberOfFrames") or 1) == 1 else array
    if "RescaleSlope" in ds or "ModalityLUTSequence" in ds:
        return np.asarray(apply_modality_lut(frames, ds), float)
    values = []
    for frame, data in enumerate(frames):
        transform = _item(ds, frame, "PixelValueTransformationSequence")
        if transform is None or "RescaleSlope" not in transform:
            values.append(data.astype(float))
        else:
            slope, intercept = float(transform.RescaleSlope), float(transform.RescaleIntercept)
            values.append(data.astype(float) * slope + intercept)
    return np.stack(values)


def _write_gap_series(folder: Path) -> list[Path]:
    """pydicom's CT_small at four positions along its normal, the step before the last
    one missing: a stack with a gap (a series no file in the corpus has)."""
    folder.mkdir()
    series, paths = generate_uid(), []
    for n, step in enumerate(GAP_STEPS):
        ds = pydicom.dcmread(get_testdata_file("CT_small.dcm"))
        ds.SeriesInstanceUID = series
        ds.SOPInstanceUID = ds.file_meta.MediaStorageSOPInstanceUID = generate_uid()
        x, y, z = (float(v) for v in ds.ImagePositionPatient)
        ds.ImagePositionPatient = [x, y, z + step]
        ds.InstanceNumber = n + 1
        paths.append(folder / f"{n}.dcm")
        ds.save_as(paths[-1])
    return paths


@dataclass(frozen=True)
class Corpus:
    """The lake and, by label, each series' source files and Series Instance UID."""

    lake: Path
    files: dict[str, list[Path]]
    uids: dict[str, str]

    def frames(self, label: str) -> dict[str, list[Frame]]:
        """Each SOP Instance UID of the series with its frames, as pydicom reads them."""
        return {str(_read(p).SOPInstanceUID): _frames(p) for p in self.files[label]}

    def stacks(self, label: str) -> list[str]:
        table = dicomflow.read_lake(str(self.lake)).series().to_pylist()
        return sorted(r["stack"] for r in table if r["SeriesInstanceUID"] == self.uids[label])


def _files(path: Path) -> list[Path]:
    return sorted(p for p in path.iterdir() if p.is_file()) if path.is_dir() else [path]


@pytest.fixture(scope="module")
def corpus_lake(corpus: Path, tmp_path_factory: pytest.TempPathFactory) -> Corpus:
    root = tmp_path_factory.mktemp("open-series")
    files = {label: _files(corpus / relative) for label, relative in CORPUS_SERIES.items()}
    files |= {label: _files(PYDICOM_TEST_FILES / p) for label, p in PYDICOM_SERIES.items()}
    files[GAPS] = _write_gap_series(root / "gaps")
    sources = [str(p) for paths in files.values() for p in paths]
    summary = dicomflow.ingest(sources, out=str(root / "lake"), pixels=True, progress=False)
    assert summary.accounted
    uids = {label: str(_read(paths[0]).SeriesInstanceUID) for label, paths in files.items()}
    return Corpus(root / "lake", files, uids)


def _slices(corpus: Corpus, label: str, volume: Any) -> Iterator[tuple[int, Frame]]:
    """Each slice index of ``volume`` with the source frame it holds, found through the
    slice's SOPInstanceUID coordinate (frames of one instance in stored order)."""
    frames = corpus.frames(label)
    uids = [str(u) for u in volume.coords["SOPInstanceUID"].values]
    for k, uid in enumerate(uids):
        yield k, frames[uid][k - uids.index(uid)]


def _ome(lake: Path, volume: Any) -> dict[str, Any]:
    attrs = zarr.open_group(str(lake / volume.attrs["zarr_path"]), mode="r").attrs.asdict()
    return dict(attrs["ome"]["multiscales"][0])


@pytest.mark.integration
@pytest.mark.parametrize("label", [*CORPUS_SERIES, *PYDICOM_SERIES, GAPS])
def test_lazy_and_equal_to_pydicoms_pixels(corpus_lake: Corpus, label: str) -> None:
    for stack in corpus_lake.stacks(label):
        volume = dicomflow.open_series(str(corpus_lake.lake), corpus_lake.uids[label], stack=stack)
        assert isinstance(volume.data, da.Array)
        assert {"z", "y", "x"} <= set(volume.dims)
        ordered = volume.transpose("z", "y", "x", ...)
        pixels = {p: _pixels(p) for p in corpus_lake.files[label]}
        for k, frame in _slices(corpus_lake, label, volume):
            expected = pixels[frame.path][frame.frame]
            assert np.array_equal(ordered[k].values.astype(float), expected), (stack, k)
        array, affine = dicomflow.open_series(
            str(corpus_lake.lake), corpus_lake.uids[label], stack=stack, as_numpy=True
        )
        assert isinstance(array, np.ndarray) and array.shape == volume.shape
        assert np.array_equal(array, volume.values)
        assert np.allclose(affine, volume.attrs["affine"])


@pytest.mark.integration
@pytest.mark.parametrize("label", GEOMETRIC)
def test_each_slice_sits_at_its_image_position(corpus_lake: Corpus, label: str) -> None:
    for stack in corpus_lake.stacks(label):
        volume = dicomflow.open_series(str(corpus_lake.lake), corpus_lake.uids[label], stack=stack)
        assert volume.attrs["spatial_units"] == "mm" and volume.attrs["coordinate_system"] == "LPS"
        for k, frame in _slices(corpus_lake, label, volume):
            position = [float(volume.coords[f"position_{a}"][k]) for a in "LPS"]
            assert position == pytest.approx(frame.position, abs=TOLERANCE), (stack, k)
            assert volume.coords["position_S"].attrs["units"] == "mm"


@pytest.mark.integration
@pytest.mark.parametrize("label", GEOMETRIC)
def test_voxels_map_to_patient_space_as_the_headers_say(corpus_lake: Corpus, label: str) -> None:
    """Voxel (z, y, x) is at IPP + column direction * y * row spacing + row direction *
    x * column spacing of slice z; the dimension coordinates are those positions measured
    along the stack's own axes, and agree with the OME metadata."""
    for stack in corpus_lake.stacks(label):
        volume = dicomflow.open_series(str(corpus_lake.lake), corpus_lake.uids[label], stack=stack)
        affine = np.asarray(volume.attrs["affine"])
        rows, columns = volume.sizes["y"], volume.sizes["x"]
        slices = list(_slices(corpus_lake, label, volume))
        first = slices[0][1]
        row, column = (v / np.linalg.norm(v) for v in (first.row, first.column))
        normal = np.cross(row, column)  # the axes the coordinates measure along, as unit vectors
        dy, dx = first.spacing
        assert volume.attrs["ImageOrientationPatient"] == pytest.approx([*row, *column])
        assert volume.attrs["spacing"][1:] == pytest.approx([dy, dx])
        if label == GAPS:  # its headers were read: the frame of reference is known
            assert "FrameOfReferenceUID" in volume.attrs
        frame_of_reference = volume.attrs.get("FrameOfReferenceUID")
        assert frame_of_reference in (None, first.frame_of_reference)
        for k, frame in slices:
            for j, i in ((0, 0), (rows - 1, 0), (0, columns - 1), (rows - 1, columns - 1)):
                expected = frame.position + frame.column * dy * j + frame.row * dx * i
                if label != GAPS:  # with a gap, the affine's regular grid is not the truth
                    assert (affine @ [k, j, i, 1])[:3] == pytest.approx(expected, abs=TOLERANCE)
            if label != GAPS:
                depth = float(frame.position @ normal)
                assert float(volume.z[k]) == pytest.approx(depth, abs=TOLERANCE)
        origin = first.position
        j, i = np.arange(rows), np.arange(columns)
        assert np.allclose(volume.y, origin @ column + j * dy, atol=TOLERANCE)
        assert np.allclose(volume.x, origin @ row + i * dx, atol=TOLERANCE)
        ome = _ome(corpus_lake.lake, volume)
        names = [a["name"] for a in ome["axes"]]
        transforms = {t["type"]: t for t in ome["datasets"][0]["coordinateTransformations"]}
        for name in "zyx":
            scale = transforms["scale"]["scale"][names.index(name)]
            translation = transforms["translation"]["translation"][names.index(name)]
            index = np.arange(volume.sizes[name])
            assert np.allclose(volume[name], translation + index * scale)
            assert volume[name].attrs["units"] == "mm"


@pytest.mark.integration
def test_slices_after_a_gap_keep_their_real_position(corpus_lake: Corpus) -> None:
    volume = dicomflow.open_series(str(corpus_lake.lake), corpus_lake.uids[GAPS])
    assert "gaps" in volume.attrs["qc_flags"] and volume.sizes["z"] == len(GAP_STEPS)
    start = float(_read(get_testdata_file("CT_small.dcm")).ImagePositionPatient[2])
    steps = volume.coords["position_S"].values - start
    assert steps == pytest.approx(GAP_STEPS, abs=TOLERANCE)
    grid = volume.z.values - volume.z.values[0]  # the regular grid of the OME metadata
    assert grid == pytest.approx([0.0, 2.5, 5.0, 7.5], abs=TOLERANCE)


@pytest.mark.integration
@pytest.mark.parametrize("label", WITHOUT_GEOMETRY)
def test_a_stack_without_geometry_counts_pixels(corpus_lake: Corpus, label: str) -> None:
    volume = dicomflow.open_series(str(corpus_lake.lake), corpus_lake.uids[label])
    assert "missing_geometry" in volume.attrs["qc_flags"]
    assert volume.attrs["spatial_units"] == "pixel"
    for name in "zyx":
        assert np.array_equal(volume[name], np.arange(volume.sizes[name]))
        assert volume[name].attrs["units"] == "pixel"
    assert not {"position_L", "position_P", "position_S"} & set(volume.coords)
    assert "FrameOfReferenceUID" not in volume.attrs and "coordinate_system" not in volume.attrs
    (path,) = corpus_lake.files[label]
    assert list(volume.SOPInstanceUID.values) == [_read(path).SOPInstanceUID]


def _copy(corpus: Corpus, tmp_path: Path) -> Path:
    lake = tmp_path / "lake"
    shutil.copytree(corpus.lake, lake)
    return lake


def _add_level(group: zarr.Group, data: np.ndarray, factor: int, *, pixel_centre: bool) -> None:
    """Write ``data`` as pyramid level ``1`` (y and x shrunk ``factor`` times) with its
    OME dataset: scale times ``factor``, translation moved to its first pixel's centre."""
    level0 = group["0"]
    assert isinstance(level0, zarr.Array)
    group.create_array(
        "1",
        data=data,
        chunks=(1, *data.shape[1:]),
        dimension_names=level0.metadata.dimension_names,  # type: ignore[union-attr]
    )
    attrs = group.attrs.asdict()
    ome = attrs["ome"]
    multiscale = ome["multiscales"][0]
    names = [a["name"] for a in multiscale["axes"]]
    base = {t["type"]: t for t in multiscale["datasets"][0]["coordinateTransformations"]}
    scale = list(base["scale"]["scale"])
    translation = list(base["translation"]["translation"])
    for name in "yx":
        axis = names.index(name)
        if pixel_centre:
            translation[axis] += (factor - 1) / 2 * scale[axis]
        scale[axis] *= factor
    multiscale["datasets"].append(
        {
            "path": "1",
            "coordinateTransformations": [
                {"type": "scale", "scale": scale},
                {"type": "translation", "translation": translation},
            ],
        }
    )
    group.attrs.put({**attrs, "ome": ome})


def _block_mean(volume: np.ndarray, factor: int) -> np.ndarray:
    z, y, x = volume.shape
    y, x = y // factor * factor, x // factor * factor
    blocks = volume[:, :y, :x].reshape(z, y // factor, factor, x // factor, factor)
    mean: np.ndarray = blocks.mean(axis=(2, 4))
    return mean


@pytest.mark.integration
def test_a_pyramid_level_has_its_pixel_centres(corpus_lake: Corpus, tmp_path: Path) -> None:
    label = "ct-axial-512"
    lake = _copy(corpus_lake, tmp_path)
    uid = corpus_lake.uids[label]
    full = dicomflow.open_series(str(lake), uid)
    coarse = _block_mean(full.values.astype(float), 2)
    group = zarr.open_group(str(lake / full.attrs["zarr_path"]), mode="r+")
    _add_level(group, coarse, 2, pixel_centre=True)

    volume = dicomflow.open_series(str(lake), uid, level=1)
    assert volume.attrs["level"] == 1 and volume.shape == coarse.shape
    assert isinstance(volume.data, da.Array) and np.array_equal(volume.values, coarse)
    affine = np.asarray(volume.attrs["affine"])
    slices = list(_slices(corpus_lake, label, volume))
    first = slices[0][1]
    dy, dx = first.spacing
    assert volume.attrs["spacing"][1:] == pytest.approx([2 * dy, 2 * dx])
    for k, frame in slices:
        # a level-1 pixel is the mean of four: its centre is between theirs
        for j, i in ((0, 0), (255, 0), (0, 255), (100, 37)):
            centre = (
                frame.position + frame.column * dy * (2 * j + 0.5) + frame.row * dx * (2 * i + 0.5)
            )
            assert (affine @ [k, j, i, 1])[:3] == pytest.approx(centre, abs=TOLERANCE)
        first_centre = frame.position + (frame.column * dy + frame.row * dx) * 0.5
        position = [float(volume.coords[f"position_{a}"][k]) for a in "LPS"]
        assert position == pytest.approx(first_centre, abs=TOLERANCE)
    j = np.arange(volume.sizes["y"])
    assert np.allclose(volume.y, first.position @ first.column + (2 * j + 0.5) * dy, atol=TOLERANCE)
    assert np.allclose(volume.z, full.z)

    coarsest = dicomflow.open_series(str(lake), uid, level=-1)
    assert coarsest.attrs["level"] == 1 and np.allclose(coarsest.x, volume.x)
    array, numpy_affine = dicomflow.open_series(str(lake), uid, level=1, as_numpy=True)
    assert np.array_equal(array, coarse) and np.allclose(numpy_affine, affine)
    for missing in (2, -3):
        with pytest.raises(ConfigError):
            dicomflow.open_series(str(lake), uid, level=missing)


@pytest.mark.integration
def test_a_level_without_geometry_counts_level_0_pixels(
    corpus_lake: Corpus, tmp_path: Path
) -> None:
    label = "dx-no-geometry"
    lake = _copy(corpus_lake, tmp_path)
    full = dicomflow.open_series(str(lake), corpus_lake.uids[label])
    group = zarr.open_group(str(lake / full.attrs["zarr_path"]), mode="r+")
    _add_level(group, _block_mean(full.values.astype(float), 2), 2, pixel_centre=True)
    volume = dicomflow.open_series(str(lake), corpus_lake.uids[label], level=1)
    assert volume.attrs["spatial_units"] == "pixel"
    assert np.allclose(volume.x, 0.5 + 2 * np.arange(volume.sizes["x"]))
    assert np.allclose(volume.z, [0.0])


@pytest.mark.integration
def test_a_channel_first_colour_stack_keeps_its_dimension_names(
    corpus_lake: Corpus, tmp_path: Path
) -> None:
    """Colour stacks stored (c, z, y, x), as OME-Zarr 0.5 orders the axes, open with
    those dimensions and pydicom's samples."""
    label = "us-colour"
    lake = _copy(corpus_lake, tmp_path)
    uid = corpus_lake.uids[label]
    stored = dicomflow.open_series(str(lake), uid)
    group = zarr.open_group(str(lake / stored.attrs["zarr_path"]), mode="r+")
    samples = np.moveaxis(stored.transpose("z", "y", "x", "c").values, -1, 0)
    del group["0"]
    group.create_array("0", data=samples, dimension_names=["c", "z", "y", "x"])
    attrs = group.attrs.asdict()
    multiscale = attrs["ome"]["multiscales"][0]
    multiscale["axes"] = [
        {"name": "c", "type": "channel"},
        *(a for a in multiscale["axes"] if a["name"] != "c"),
    ]
    for dataset in multiscale["datasets"]:
        for transform in dataset["coordinateTransformations"]:
            values = transform.get("scale") or transform.get("translation")
            values.insert(0, values.pop())  # the channel's value moves first too
    group.attrs.put(attrs)

    volume = dicomflow.open_series(str(lake), uid)
    assert volume.dims == ("c", "z", "y", "x") and isinstance(volume.data, da.Array)
    (path,) = corpus_lake.files[label]
    assert np.array_equal(volume.transpose("z", "y", "x", "c").values, _pixels(path))
    assert np.array_equal(volume.y, np.arange(volume.sizes["y"]))


@pytest.mark.integration
def test_nothing_is_read_until_computed(corpus_lake: Corpus, tmp_path: Path) -> None:
    """Opened, then its chunks removed: the volume reads the fill value (zeros), so
    opening read none of the pixels."""
    lake = _copy(corpus_lake, tmp_path)
    uid = corpus_lake.uids["ct-axial-small"]
    volume = dicomflow.open_series(str(lake), uid)
    assert volume.values.any()  # the CT's values, read when asked for
    volume = dicomflow.open_series(str(lake), uid)
    stored = lake / volume.attrs["zarr_path"] / "0"
    chunks = [p for p in stored.rglob("*") if p.is_file() and p.name != "zarr.json"]
    assert chunks
    for chunk in chunks:
        chunk.unlink()
    assert volume.sizes["z"] == 3 and not volume.values.any()


def test_the_corpus_series_exist() -> None:
    if not CORPUS.exists():
        pytest.skip("the shared corpus is not here")
    for relative in CORPUS_SERIES.values():
        assert (CORPUS / relative).exists(), relative
    for relative in PYDICOM_SERIES.values():
        assert (PYDICOM_TEST_FILES / relative).is_dir(), relative
