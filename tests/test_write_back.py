"""Writing back: a model's measurements as a TID 1500 SR (``dicomflow.write_sr``) and its
mask as a SEG (``dicomflow.write_seg``), checked by dciodvfy and highdicom's readers,
then taken back in by ``ingest --sr --labels``: the same measurements and masks return.
"""

from __future__ import annotations

import re
import shutil
import subprocess
from pathlib import Path

import highdicom as hd
import numpy as np
import pydicom
import pytest
import zarr

import dicomflow
from dicomflow.errors import ConfigError
from dicomflow.labels.segment_info import SegmentInfo
from tests.conftest import require
from tests.helpers import ct_series, ingest_command

SLICES = 8
DIAMETER = {
    "concept_code_value": "81827009",
    "concept_scheme": "SCT",
    "concept_meaning": "Diameter",
}
AREA = {"concept_code_value": "42798000", "concept_scheme": "SCT", "concept_meaning": "Area"}
MEAN = {
    "concept_code_value": "112031",
    "concept_scheme": "DCM",
    "concept_meaning": "Attenuation Coefficient",
}
NODULE = {"finding_code_value": "27925004", "finding_scheme": "SCT", "finding_meaning": "Nodule"}
LUNG = {
    "finding_site_code_value": "39607008",
    "finding_site_scheme": "SCT",
    "finding_site_meaning": "Lung",
}


def _ingest(sources: list[Path], lake: Path, *flags: str) -> None:
    done = ingest_command(sources, lake, *flags)
    assert done.returncode == 0, done.stderr


def _dciodvfy_errors(path: Path) -> list[str]:
    require(shutil.which("dciodvfy") is not None, "dciodvfy (Debian package dicom3tools)")
    done = subprocess.run(["dciodvfy", str(path)], capture_output=True, timeout=60, check=False)
    text = (done.stdout + done.stderr).decode("utf-8", "replace")
    return [line for line in text.splitlines() if re.search(r"\bError\b", line)]


@pytest.fixture(scope="module")
def lake(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, list[Path]]:
    root = tmp_path_factory.mktemp("write-back")
    slices = ct_series(root / "images", SLICES)
    out = root / "lake"
    _ingest([root / "images"], out)
    return out, slices


def _uids(slices: list[Path]) -> list[str]:
    return [str(pydicom.dcmread(p, stop_before_pixels=True).SOPInstanceUID) for p in slices]


def _measurements(slices: list[Path]) -> list[dict]:
    uids = _uids(slices)
    return [
        {  # an image-level group: two measurements on two slices
            "tracking_identifier": "Nodule 1",
            **NODULE,
            **LUNG,
            **AREA,
            "value": 153.5,
            "unit": "mm2",
            "referenced_sop_instance_uids": uids[2:4],
            "algorithm_name": "segmenter",
            "algorithm_version": "2.1",
        },
        {
            "tracking_identifier": "Nodule 1",
            **NODULE,
            **LUNG,
            **MEAN,
            "value": -640.0,
            "unit": "[hnsf'U]",
            "referenced_sop_instance_uids": uids[2:4],
            "algorithm_name": "segmenter",
            "algorithm_version": "2.1",
        },
        {  # a region on one slice
            "tracking_identifier": "Nodule 2",
            **NODULE,
            **DIAMETER,
            "value": 7.25,
            "unit": "mm",
            "referenced_sop_instance_uids": uids[5:6],
            "region_graphic_type": "POLYLINE",
            "region_graphic_data": [10.0, 20.0, 30.0, 40.0],
        },
    ]


def test_write_sr_passes_dciodvfy_and_comes_back_as_the_same_measurements(
    lake: tuple[Path, list[Path]], tmp_path: Path
) -> None:
    out, slices = lake
    rows = _measurements(slices)
    sr = dicomflow.write_sr(rows, tmp_path / "report.dcm", lake=str(out))
    assert _dciodvfy_errors(sr) == []
    # highdicom's own reader finds the groups and their measurements.
    document = hd.sr.srread(sr)
    groups = document.content.get_image_measurement_groups() + list(
        document.content.get_planar_roi_measurement_groups()
    )
    assert sorted(g.tracking_identifier for g in groups) == ["Nodule 1", "Nodule 2"]
    # And the sr operator extracts the same rows.
    shutil.copy(sr, slices[0].parent.parent / "report.dcm")
    _ingest([slices[0].parent, slices[0].parent.parent / "report.dcm"], out, "--sr")
    extracted = [
        r
        for r in dicomflow.read_lake(str(out)).table("measurements").to_pylist()
        if r["SOPInstanceUID"] == str(document.SOPInstanceUID)
    ]
    assert len(extracted) == len(rows)
    for row in rows:
        (match,) = [
            r
            for r in extracted
            if r["concept_code_value"] == row["concept_code_value"]
            and r["tracking_identifier"] == row["tracking_identifier"]
        ]
        assert match["value"] == pytest.approx(row["value"]) and match["unit"] == row["unit"]
        assert match["finding_code_value"] == row["finding_code_value"]
        assert match.get("finding_site_code_value") == row.get("finding_site_code_value")
        assert sorted(match["referenced_sop_instance_uids"]) == sorted(
            row["referenced_sop_instance_uids"]
        )
        assert match["algorithm_name"] == row.get("algorithm_name")
        if row.get("region_graphic_type"):
            assert match["region_graphic_type"] == row["region_graphic_type"]
            assert match["region_graphic_data"] == pytest.approx(row["region_graphic_data"])


def test_write_sr_refuses_measurements_without_their_images(
    lake: tuple[Path, list[Path]], tmp_path: Path
) -> None:
    out, slices = lake
    rows = _measurements(slices)
    rows[0]["referenced_sop_instance_uids"] = ["1.2.3.4.5.6.7"]
    with pytest.raises(ConfigError, match="not among the sources"):
        dicomflow.write_sr(rows, tmp_path / "r.dcm", lake=str(out))
    with pytest.raises(ConfigError, match="concept code, a value and a UCUM unit"):
        dicomflow.write_sr(
            [{**_measurements(slices)[2], "unit": None}], tmp_path / "r.dcm", lake=str(out)
        )


def _mask(shape: tuple[int, ...]) -> np.ndarray:
    z, y, x = np.ogrid[: shape[0], : shape[1], : shape[2]]
    mask = np.zeros(shape, np.uint8)
    mask[(z - 3) ** 2 * 40 + (y - 60) ** 2 + (x - 50) ** 2 <= 20**2] = 1
    mask[2:6, 90:110, 85:120] = 3  # segment numbers need not be 1..n in the mask
    return mask


def test_write_seg_passes_dciodvfy_and_lands_back_on_the_same_voxels(
    lake: tuple[Path, list[Path]], tmp_path: Path
) -> None:
    out, slices = lake
    series = str(pydicom.dcmread(slices[0], stop_before_pixels=True).SeriesInstanceUID)
    image, _ = dicomflow.open_series(str(out), series, as_numpy=True)
    mask = _mask(image.shape)
    seg_path = dicomflow.write_seg(
        str(out), series, mask, tmp_path / "seg.dcm",
        segments={1: SegmentInfo("Nodule"), 3: SegmentInfo("Box")},
    )  # fmt: skip
    assert _dciodvfy_errors(seg_path) == []
    # highdicom's reader: each source instance's frame is the mask on the slice the lake
    # stack holds that instance at.
    seg = hd.seg.segread(seg_path)
    rows = {
        r["SOPInstanceUID"]: r["frame_index"]
        for r in dicomflow.read_lake(str(out)).instances().to_pylist()
        if r["SeriesInstanceUID"] == series
    }
    sources = [uid for _, _, uid in seg.get_source_image_uids()]
    pixels = seg.get_pixels_by_source_instance(sources, segment_numbers=[1, 2])
    for uid, frame in zip(sources, pixels, strict=True):
        z = rows[uid]
        assert np.array_equal(frame[..., 0], mask[z] == 1)
        assert np.array_equal(frame[..., 1], mask[z] == 3)
    assert [s.SegmentLabel for s in seg.SegmentSequence] == ["Nodule", "Box"]
    # Back into the lake with --labels: the same voxels, as segments 1 and 2.
    shutil.copy(seg_path, slices[0].parent.parent / "seg.dcm")
    _ingest([slices[0].parent, slices[0].parent.parent / "seg.dcm"], out, "--labels")
    segments = dicomflow.read_lake(str(out)).table("segments").to_pylist()
    placed = [r for r in segments if r["SOPInstanceUID"] == str(seg.SOPInstanceUID)]
    assert {r["status"] for r in placed} == {"placed"}
    (label_path,) = {r["label_path"] for r in placed}
    label = np.asarray(zarr.open_group(str(out / label_path), mode="r")["0"][:])
    assert np.array_equal(label == 1, mask == 1) and np.array_equal(label == 2, mask == 3)


def test_write_seg_refuses_a_mask_off_the_stacks_grid(
    lake: tuple[Path, list[Path]], tmp_path: Path
) -> None:
    out, slices = lake
    series = str(pydicom.dcmread(slices[0], stop_before_pixels=True).SeriesInstanceUID)
    with pytest.raises(ConfigError, match="not the stack's"):
        dicomflow.write_seg(str(out), series, np.ones((2, 3, 4), bool), tmp_path / "s.dcm")
    with pytest.raises(ConfigError, match="empty"):
        dicomflow.write_seg(
            str(out), series, np.zeros((SLICES, 128, 128), bool), tmp_path / "s.dcm"
        )
    with pytest.raises(ConfigError, match="no image stack"):
        dicomflow.write_seg(str(out), "1.2.3", np.ones((1, 1, 1), bool), tmp_path / "s.dcm")


def test_a_seg_referencing_instances_outside_its_series_is_an_error_row(
    lake: tuple[Path, list[Path]], tmp_path: Path
) -> None:
    """One frame of a SEG edited to reference an instance of another series in the lake:
    the SEG keeps its rows, gets a not_placed row of stage labels, and lands nowhere."""
    out, slices = lake
    other = ct_series(tmp_path / "other", 3)
    _ingest([tmp_path / "other"], out)
    series = str(pydicom.dcmread(slices[0], stop_before_pixels=True).SeriesInstanceUID)
    image, _ = dicomflow.open_series(str(out), series, as_numpy=True)
    seg_path = dicomflow.write_seg(str(out), series, _mask(image.shape), tmp_path / "s.dcm")
    seg = pydicom.dcmread(seg_path)
    stranger = pydicom.dcmread(other[0], stop_before_pixels=True)
    frame = seg.PerFrameFunctionalGroupsSequence[0].DerivationImageSequence[0]
    frame.SourceImageSequence[0].ReferencedSOPInstanceUID = stranger.SOPInstanceUID
    reference = pydicom.Dataset()
    reference.SeriesInstanceUID = stranger.SeriesInstanceUID
    instance = pydicom.Dataset()
    instance.ReferencedSOPClassUID = stranger.SOPClassUID
    instance.ReferencedSOPInstanceUID = stranger.SOPInstanceUID
    reference.ReferencedInstanceSequence = [instance]
    seg.ReferencedSeriesSequence.append(reference)
    seg.save_as(tmp_path / "spread.dcm")
    _ingest([tmp_path / "spread.dcm"], out, "--labels")
    read = dicomflow.read_lake(str(out))
    uid = str(seg.SOPInstanceUID)
    rows = [r for r in read.table("segments").to_pylist() if r["SOPInstanceUID"] == uid]
    assert rows and all(r["status"].startswith("not placed") for r in rows)
    assert all(r["label_path"] is None for r in rows)
    errors = [e for e in read.errors().to_pylist() if e["source"].startswith(str(tmp_path))]
    assert [(e["stage"], e["code"]) for e in errors] == [("labels", "not_placed")]
    assert "more than one image stack" in errors[0]["message"]
    assert uid in read.instances().column("SOPInstanceUID").to_pylist()


def test_written_sr_and_seg_are_accepted_by_a_pacs(
    lake: tuple[Path, list[Path]], tmp_path: Path
) -> None:
    """Both go to Orthanc by C-STORE (``dicomflow.send``) and Orthanc stores both."""
    from tests.peers.orthanc import orthanc_binary, running_orthanc

    require(orthanc_binary() is not None, "Orthanc (Debian package orthanc)")
    out, slices = lake
    series = str(pydicom.dcmread(slices[0], stop_before_pixels=True).SeriesInstanceUID)
    image, _ = dicomflow.open_series(str(out), series, as_numpy=True)
    seg = dicomflow.write_seg(str(out), series, _mask(image.shape), tmp_path / "seg.dcm")
    sr = dicomflow.write_sr(_measurements(slices), tmp_path / "sr.dcm", lake=str(out))
    with running_orthanc(tmp_path / "orthanc") as orthanc:
        outcomes = dicomflow.send([seg, sr], orthanc.url)
        assert len(outcomes) == 2
        stored = orthanc.get("/instances?expand")
        assert isinstance(stored, list)
        held = {item["MainDicomTags"]["SOPInstanceUID"] for item in stored}
    written = {str(pydicom.dcmread(p, stop_before_pixels=True).SOPInstanceUID) for p in (seg, sr)}
    assert held == written


def test_a_region_in_patient_space_comes_back_in_patient_space(
    lake: tuple[Path, list[Path]], tmp_path: Path
) -> None:
    """A row extracted from a SCOORD3D region (x, y, z triples and a frame of reference)
    is written as one, not read as pixel pairs; odd coordinates are refused."""
    out, slices = lake
    frame = str(pydicom.dcmread(slices[0], stop_before_pixels=True).FrameOfReferenceUID)
    row = {
        **_measurements(slices)[2],
        "region_graphic_type": "POLYGON",
        "region_graphic_data": [1.0, 2.0, 3.0, 4.0, 2.0, 3.0, 4.0, 6.0, 3.0, 1.0, 2.0, 3.0],
        "region_frame_of_reference_uid": frame,
    }
    sr = dicomflow.write_sr([row], tmp_path / "r3d.dcm", lake=str(out))
    assert _dciodvfy_errors(sr) == []
    from dicomflow.sr import extract

    (extracted,) = [r for r in extract(pydicom.dcmread(sr)).measurements if r["value"] == 7.25]
    assert extracted["region_graphic_type"] == "POLYGON"
    assert extracted["region_graphic_data"] == pytest.approx(row["region_graphic_data"])
    assert extracted["region_frame_of_reference_uid"] == frame
    with pytest.raises(ConfigError, match="triples"):
        dicomflow.write_sr(
            [{**row, "region_graphic_data": [1.0, 2.0]}], tmp_path / "x.dcm", lake=str(out)
        )
