"""``ingest --pixels`` end to end: arrays equal pydicom's, geometry equals dcm2niix's,
Zarr/xarray agree, reruns are byte-identical, and bad pixels become error rows."""

from __future__ import annotations

import io
import json
import shutil
import struct
import subprocess
from pathlib import Path
from typing import Any

import numpy as np
import pydicom
import pytest
import zarr
from distributed import Client
from pydicom.data import get_testdata_file

import dicomflow
from tests.conftest import CORPUS, IN_CI, PYDICOM_TEST_FILES, require
from tests.pixels.references import CODEC_ONLY, key, reference_frames


def _sources() -> list[str]:
    sources = [str(PYDICOM_TEST_FILES)]
    if CORPUS.exists():
        sources.append(str(CORPUS))
    return sources


@pytest.fixture(scope="module")
def pixel_lake(tmp_path_factory: pytest.TempPathFactory, client: Client) -> Path:
    if IN_CI:
        require(CORPUS.exists(), "the shared corpus")
    out = tmp_path_factory.mktemp("pixels")
    summary = dicomflow.ingest(_sources(), out=str(out), client=client, progress=False, pixels=True)
    assert summary.accounted
    return out


def _instances(lake: Path) -> list[dict[str, Any]]:
    table = dicomflow.read_lake(str(lake)).instances(
        columns=["source", "zarr_path", "frame_index", "number_of_frames", "SOPInstanceUID"]
    )
    return [r for r in table.to_pylist() if r["zarr_path"]]


def test_every_written_frame_equals_pydicoms_decode(pixel_lake: Path, tmp_path: Path) -> None:
    """pydicom's decode plus the Modality LUT, from a process without dicomflow's plugin
    (or, where pydicom decodes nothing, the reference tests/pixels/references.py names)."""
    rows = [r for r in _instances(pixel_lake) if key(Path(r["source"])) not in CODEC_ONLY]
    assert len(rows) > 100 if CORPUS.exists() else len(rows) > 30
    references = reference_frames([Path(r["source"]) for r in rows], tmp_path)
    mismatched = []
    for row, expected in zip(rows, references, strict=True):
        array = zarr.open_group(str(pixel_lake / row["zarr_path"]), mode="r")["0"]
        frames = row["number_of_frames"] or 1
        start, stop = row["frame_index"], row["frame_index"] + frames
        # channels first (OME-Zarr's axis order): back to pydicom's last
        ours = np.moveaxis(array[:, start:stop], 0, -1) if array.ndim == 4 else array[start:stop]
        if isinstance(expected, str):
            mismatched.append(f"{Path(row['source']).name}: no reference ({expected})")
            continue
        # Lossless and lossy alike: the same pydicom backend decoded both, so exact.
        if ours.shape != expected.shape or not np.array_equal(
            ours.astype(np.float64), expected.astype(np.float64)
        ):
            mismatched.append(f"{Path(row['source']).name}: {ours.shape} {expected.shape}")
    assert mismatched == []


def test_each_sop_instance_finds_its_frames(pixel_lake: Path) -> None:
    for row in _instances(pixel_lake)[:200]:
        group = zarr.open_group(str(pixel_lake / row["zarr_path"]), mode="r")
        uids = group.attrs["sop_instance_uids"]
        assert uids[row["frame_index"]] == (row["SOPInstanceUID"] or "")


def test_zarr_and_xarray_read_the_same_arrays(pixel_lake: Path) -> None:
    lake = dicomflow.read_lake(str(pixel_lake))
    series = lake.series().to_pylist()
    assert series
    for row in series[:20]:
        data = dicomflow.open_series(lake, row["SeriesInstanceUID"], stack=row["stack"])
        numpy_array, affine = dicomflow.open_series(
            lake, row["SeriesInstanceUID"], stack=row["stack"], as_numpy=True
        )
        assert np.array_equal(data.values, numpy_array)
        assert {"z", "y", "x"} <= set(data.dims)
        assert np.allclose(np.asarray(affine).ravel(), row["affine"])
        if data.sizes["x"] > 1 and "missing_geometry" not in row["qc_flags"]:
            step = data.coords["x"].values[1] - data.coords["x"].values[0]
            assert step == pytest.approx(row["spacing"][2])


def test_ome_zarr_metadata(pixel_lake: Path) -> None:
    rows = dicomflow.read_lake(str(pixel_lake)).series().to_pylist()
    row = next(r for r in rows if "missing_geometry" not in r["qc_flags"] and len(r["shape"]) == 3)
    attrs = zarr.open_group(str(pixel_lake / row["zarr_path"]), mode="r").attrs.asdict()
    ome = attrs["ome"]
    assert ome["version"] == "0.5"
    (multiscale,) = ome["multiscales"]
    assert [a["name"] for a in multiscale["axes"]] == ["z", "y", "x"]
    assert {a["unit"] for a in multiscale["axes"]} == {"millimeter"}
    transforms = multiscale["datasets"][0]["coordinateTransformations"]
    assert transforms[0]["scale"] == pytest.approx(row["spacing"])
    assert attrs["schema_version"] and len(attrs["affine"]) == 4


def test_rerun_writes_byte_identical_chunks(client: Client, tmp_path: Path) -> None:
    sources = [str(PYDICOM_TEST_FILES / "dicomdirtests" / "77654033" / "CT2")]
    first, second = tmp_path / "a", tmp_path / "b"
    runs = [
        dicomflow.ingest(sources, out=str(out), client=client, progress=False, pixels=True).run_id
        for out in (first, second)
    ]
    files = sorted(p.relative_to(first) for p in (first / "pixels.zarr").rglob("*") if p.is_file())
    assert any(c.name.startswith("c.") for c in files)
    for path in files:
        ours, theirs = (first / path).read_bytes(), (second / path).read_bytes()
        if path.name != "zarr.json":
            assert ours == theirs, path
            continue
        # metadata: identical but for the run that wrote each stack
        stamps = [json.loads(m).get("attributes", {}).pop("run_id", None) for m in (ours, theirs)]
        assert stamps in ([None, None], runs), path
        assert _without_run(ours) == _without_run(theirs), path


def _without_run(metadata: bytes) -> dict[str, Any]:
    parsed = json.loads(metadata)
    parsed.get("attributes", {}).pop("run_id", None)
    return parsed


def _nifti_corners(path: Path) -> tuple[tuple[int, ...], np.ndarray]:
    header = path.read_bytes()[:348]
    dims = struct.unpack("<8h", header[40:56])
    srow = np.array(struct.unpack("<12f", header[280:328]), float).reshape(3, 4)
    shape = tuple(dims[1 : 1 + dims[0]])[:3]
    return shape, _corners(srow, shape)


def _corners(matrix: np.ndarray, shape: tuple[int, ...]) -> np.ndarray:
    points = []
    for a in (0, shape[0] - 1):
        for b in (0, shape[1] - 1):
            for c in (0, shape[2] - 1):
                points.append(matrix[:3, :3] @ np.array([a, b, c], float) + matrix[:3, 3])
    # Order by a rounded key so both sides list corners alike; compare the exact values.
    return np.array(sorted(points, key=lambda p: tuple(np.round(p, 1))))


@pytest.mark.integration
def test_geometry_matches_dcm2niix(pixel_lake: Path, tmp_path: Path) -> None:
    require(shutil.which("dcm2niix") is not None, "dcm2niix (Debian package dcm2niix)")
    lake = dicomflow.read_lake(str(pixel_lake))
    instances = lake.instances(columns=["source", "SeriesInstanceUID", "zarr_path"]).to_pylist()
    compared = 0
    for row in lake.series().to_pylist():
        if row["Modality"] not in ("CT", "MR") or row["frames"] < 3 or row["qc_flags"]:
            continue
        files = [r["source"] for r in instances if r["zarr_path"] == row["zarr_path"]]
        work = tmp_path / row["zarr_path"].replace("/", "_")
        (work / "in").mkdir(parents=True)
        for i, source in enumerate(files):
            shutil.copy(source, work / "in" / f"{i:05d}.dcm")
        subprocess.run(
            ["dcm2niix", "-z", "n", "-f", "out", "-o", str(work), str(work / "in")],
            capture_output=True,
            timeout=120,
            check=False,
        )
        outputs = sorted(work.glob("out*.nii"))
        if len(outputs) != 1:
            continue  # dcm2niix split or refused the series: nothing to compare
        shape, theirs = _nifti_corners(outputs[0])
        ours_affine = np.asarray(row["affine"]).reshape(4, 4)
        lps_to_ras = np.diag([-1.0, -1.0, 1.0, 1.0])
        ours = _corners(lps_to_ras @ ours_affine, tuple(row["shape"][:3]))
        assert sorted(shape) == sorted(row["shape"][:3])
        assert np.allclose(ours, theirs, rtol=0, atol=1e-3), row["zarr_path"]
        compared += 1
    print(f"compared {compared} series with dcm2niix")
    assert compared >= (3 if CORPUS.exists() else 1)


def _write(ds: pydicom.Dataset, path: Path) -> Path:
    buffer = io.BytesIO()
    ds.save_as(buffer)
    path.write_bytes(buffer.getvalue())
    return path


def test_bad_pixels_become_error_rows_and_the_rest_is_written(
    client: Client, tmp_path: Path
) -> None:
    source = tmp_path / "in"
    source.mkdir()
    series = sorted((PYDICOM_TEST_FILES / "dicomdirtests" / "77654033" / "CT2").iterdir())
    for path in series:
        shutil.copy(path, source / path.name)
    # Same series, one slice whose Pixel Data is shorter than Rows x Columns implies.
    short = pydicom.dcmread(series[0])
    short.SOPInstanceUID = short.SOPInstanceUID + ".9"
    short.ImagePositionPatient = [float(v) + 0 for v in short.ImagePositionPatient[:2]] + [999.0]
    short.PixelData = short.PixelData[: len(short.PixelData) // 2]
    _write(short, source / "short.dcm")
    # Absurd dimensions: must be refused before anything is allocated.
    huge = pydicom.dcmread(get_testdata_file("CT_small.dcm"))
    huge.Rows = huge.Columns = 65535
    huge.NumberOfFrames = 100000
    _write(huge, source / "huge.dcm")
    out = tmp_path / "lake"
    dicomflow.ingest([str(source)], out=str(out), client=client, progress=False, pixels=True)
    lake = dicomflow.read_lake(str(out))
    errors = {Path(r["source"]).name: r["code"] for r in lake.errors().to_pylist()}
    assert errors["huge.dcm"] == "too_large"
    assert errors["short.dcm"] == "decode_failed"
    written = [r for r in lake.series().to_pylist() if r["Modality"] == "CT"]
    assert any("missing_frames" in r["qc_flags"] for r in written)
    assert sum(r["frames"] for r in written) >= len(series)


def test_cli_frames_per_chunk_sets_the_zarr_chunk_shape(tmp_path: Path) -> None:
    import subprocess
    import sys

    import zarr

    sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "benchmarks"))
    from synth import write_ct_series

    src = tmp_path / "src"
    write_ct_series(src, 10, per_series=10, rows=16, cols=16)
    lake = tmp_path / "lake"
    result = subprocess.run(
        [
            sys.executable,
            "-m",
            "dicomflow",
            "ingest",
            str(src),
            "--out",
            str(lake),
            "--pixels",
            "--frames-per-chunk",
            "4",
            "--workers",
            "1",
            "--no-progress",
        ],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert result.returncode == 0, result.stderr
    stacks = [p.parent for p in (lake / "pixels.zarr").rglob("0/zarr.json")]
    array = zarr.open_array(str(stacks[0]), mode="r")
    assert array.shape == (10, 16, 16) and array.chunks == (4, 16, 16)


@pytest.mark.parametrize("expand", [False, True])
def test_palette_colour_is_indices_plus_palette_or_expanded_rgb(
    client: Client, tmp_path: Path, expand: bool
) -> None:
    import pydicom
    import zarr
    from pydicom.pixels import apply_color_lut

    import dicomflow

    source = PYDICOM_TEST_FILES / "examples_palette.dcm"
    ds = pydicom.dcmread(source)
    assert ds.PhotometricInterpretation == "PALETTE COLOR"
    lake = tmp_path / "lake"
    summary = dicomflow.ingest(
        [str(source)], out=str(lake), pixels=True, client=client, expand_palette=expand
    )
    assert summary.errors == 0
    path = dicomflow.read_lake(str(lake)).series().column("zarr_path")[0].as_py()
    group = zarr.open_group(str(lake / path), mode="r")
    stored = group["0"][...]
    indices = ds.pixel_array.reshape(stored.shape[int(expand) :])
    if expand:
        assert group.attrs["photometric_interpretation"] == "RGB"
        assert "palette" not in group.attrs
        assert group["0"].metadata.dimension_names == ("c", "z", "y", "x")
        assert np.array_equal(np.moveaxis(stored, 0, -1), apply_color_lut(indices, ds))
    else:
        assert group.attrs["photometric_interpretation"] == "PALETTE COLOR"
        assert np.array_equal(stored, indices)
        palette = group.attrs["palette"]
        table = np.asarray(palette["rgb"])
        first = palette["first_mapped"]
        # The stored table maps the stored indices to what pydicom's colour LUT gives.
        looked_up = table[np.clip(indices.astype(int) - first, 0, len(table) - 1)]
        assert np.array_equal(looked_up, apply_color_lut(indices, ds))


def test_enhanced_ct_gets_hounsfield_units_from_its_functional_groups(tmp_path: Path) -> None:
    from dicomflow.pixels.decode import decode

    require(CORPUS.exists(), "the shared corpus")
    source = CORPUS / "pydicom__pydicom-data" / "eCT_Supplemental.dcm"
    ds = pydicom.dcmread(source)
    assert "RescaleSlope" not in ds  # only in the shared functional groups
    transform = ds.SharedFunctionalGroupsSequence[0].PixelValueTransformationSequence[0]
    decoded = decode(ds)
    stored = ds.pixel_array
    assert decoded.rescale_applied and decoded.units == "HU"
    expected = stored.astype(np.int64) * int(transform.RescaleSlope) + int(
        transform.RescaleIntercept
    )
    assert np.array_equal(decoded.array, expected)
    assert decoded.array.min() < 0  # air is negative in HU


def _validate_ome(group: zarr.Group) -> None:
    """ome-zarr-models' validation of an OME-Zarr 0.5 image; its warnings count as errors."""
    import warnings

    from ome_zarr_models.v05.image import Image

    with warnings.catch_warnings():
        warnings.simplefilter("error")
        Image.from_zarr(group)


def test_every_stack_is_valid_ome_zarr(pixel_lake: Path) -> None:
    rows = dicomflow.read_lake(str(pixel_lake)).series().to_pylist()
    colour = [r for r in rows if len(r["shape"]) == 4]
    assert len(rows) > 100 if CORPUS.exists() else len(rows) > 20
    assert colour, "no colour stack to check"
    invalid = []
    for row in rows:
        group = zarr.open_group(str(pixel_lake / row["zarr_path"]), mode="r")
        try:
            _validate_ome(group)
        except Exception as exc:  # every failure is listed
            invalid.append(f"{row['zarr_path']}: {type(exc).__name__}: {str(exc)[:200]}")
    assert invalid == []
    for row in colour:  # channel axis first, as OME-Zarr 0.5 orders axes
        group = zarr.open_group(str(pixel_lake / row["zarr_path"]), mode="r")
        axes = group.attrs["ome"]["multiscales"][0]["axes"]
        assert [a["type"] for a in axes] == ["channel", "space", "space", "space"]
        assert group["0"].metadata.dimension_names == ("c", "z", "y", "x")


def test_the_validator_rejects_channels_after_space(pixel_lake: Path, tmp_path: Path) -> None:
    """The check above can fail: the layout stacks had before (channel axis last) does."""
    row = next(
        r for r in dicomflow.read_lake(str(pixel_lake)).series().to_pylist() if len(r["shape"]) == 4
    )
    copy = tmp_path / "copy"
    shutil.copytree(pixel_lake / row["zarr_path"], copy)
    document = json.loads((copy / "zarr.json").read_text())
    multiscale = document["attributes"]["ome"]["multiscales"][0]
    multiscale["axes"] = multiscale["axes"][1:] + multiscale["axes"][:1]
    (copy / "zarr.json").write_text(json.dumps(document))
    with pytest.raises(Exception, match=r"(?i)channel|order|axis|axes"):
        _validate_ome(zarr.open_group(str(copy), mode="r"))


def test_large_radiographs_get_pyramid_levels_of_block_means(pixel_lake: Path) -> None:
    """A 2-D image longer than 2,048 px gets levels down to 512 px or less, each the mean
    of 2×2 blocks of the one before (Pillow's box reduction as the oracle), with the
    OME scale doubled and the translation moved to the level's first pixel centre."""
    from PIL import Image as PILImage

    require(CORPUS.exists(), "the shared corpus")
    rows = dicomflow.read_lake(str(pixel_lake)).series().to_pylist()
    large = [r for r in rows if r["frames"] == 1 and max(r["shape"][-2:]) > 2048]
    small = [r for r in rows if r["frames"] == 1 and max(r["shape"][-2:]) <= 2048]
    assert large and small
    for row in small:
        group = zarr.open_group(str(pixel_lake / row["zarr_path"]), mode="r")
        assert sorted(group.array_keys()) == ["0"]
    for row in large[:3]:
        group = zarr.open_group(str(pixel_lake / row["zarr_path"]), mode="r")
        datasets = group.attrs["ome"]["multiscales"][0]["datasets"]
        assert [d["path"] for d in datasets] == sorted(group.array_keys(), key=int)
        previous = group["0"][...]
        for level, dataset in enumerate(datasets[1:], 1):
            array = group[dataset["path"]][...]
            assert array.dtype == previous.dtype
            if array.ndim == 3:  # grey (z, y, x): z = 1
                image = PILImage.fromarray(previous[0].astype(np.float32), mode="F")
                expected = np.rint(np.asarray(image.reduce(2), dtype=np.float64))
                assert np.array_equal(array[0], expected.astype(array.dtype)), f"level {level}"
            scale, translation = (t for t in dataset["coordinateTransformations"])
            base_scale = datasets[0]["coordinateTransformations"][0]["scale"]
            base_shift = datasets[0]["coordinateTransformations"][1]["translation"]
            factor = 2**level
            assert scale["scale"][-2:] == pytest.approx([v * factor for v in base_scale[-2:]])
            assert translation["translation"][-2:] == pytest.approx(
                [
                    t + (factor - 1) / 2 * s
                    for t, s in zip(base_shift[-2:], base_scale[-2:], strict=True)
                ]
            )
            previous = array
        assert max(previous.shape[-2:]) <= 512 < max(group[datasets[-2]["path"]].shape[-2:])


def test_axes_without_geometry_have_no_millimetres(pixel_lake: Path) -> None:
    """Each space axis is in millimetres exactly where the source header gives its
    geometry (Pixel Spacing above 0 for y and x, position and orientation for z), as
    pydicom reads the header; otherwise it has no unit (it counts pixels)."""
    import warnings

    rows = dicomflow.read_lake(str(pixel_lake)).series().to_pylist()
    sources = _instances_by_uid(pixel_lake)
    checked = 0
    for row in rows:
        group = zarr.open_group(str(pixel_lake / row["zarr_path"]), mode="r")
        axes = group.attrs["ome"]["multiscales"][0]["axes"]
        units = {a["name"]: a.get("unit") for a in axes}
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            source = pydicom.dcmread(
                sources[row["sop_instance_uids"][0]], stop_before_pixels=True, force=True
            )
            if "SharedFunctionalGroupsSequence" in source:
                continue  # enhanced images keep their geometry in functional groups
            try:
                spacing = [float(v) for v in source.get("PixelSpacing") or []]
            except (TypeError, ValueError):
                spacing = []
            has_position = "ImagePositionPatient" in source and "ImageOrientationPatient" in source
        has_spacing = len(spacing) == 2 and all(v > 0 for v in spacing)
        assert (units["y"] == "millimeter") == has_spacing, row["zarr_path"]
        assert (units["x"] == "millimeter") == has_spacing, row["zarr_path"]
        if not has_position:
            assert units["z"] is None, row["zarr_path"]
        checked += 1
    assert checked > 50 if CORPUS.exists() else checked > 10


def _instances_by_uid(lake: Path) -> dict[str, str]:
    table = dicomflow.read_lake(str(lake)).instances(columns=["SOPInstanceUID", "source"])
    return {r["SOPInstanceUID"]: r["source"] for r in table.to_pylist()}
