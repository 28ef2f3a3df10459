"""The ``render`` operator in a run: files where the lake layout says, ``render_path`` on
``instances``, DCMTK's pixels, presentation states from the command line, and bad input
costing only the render."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pydicom
import pytest
from PIL import Image

import dicomflow
from tests.conftest import PYDICOM_TEST_FILES, require
from tests.render import cases, gsps, oracle

CT = "cornerstonejs__dicomParser/CT1_UNC.explicit_little_endian.dcm"
MONOCHROME1 = "ImagingDataCommons__highdicom/dx_image.dcm"
MULTIFRAME = "pydicom__pydicom-data/emri_small.dcm"  # 10 frames, 64 x 64


def _cli(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "dicomflow", *args], capture_output=True, text=True, timeout=300
    )


def _uids(path: Path) -> tuple[str, str, str]:
    ds = oracle.read(path)
    return str(ds.StudyInstanceUID), str(ds.SeriesInstanceUID), str(ds.SOPInstanceUID)


def _renders(lake: Path) -> dict[str, str | None]:
    table = dicomflow.read_lake(str(lake)).instances(columns=["source", "render_path"])
    return {Path(r["source"]).name: r["render_path"] for r in table.to_pylist()}


@pytest.fixture
def sources(tmp_path: Path) -> Path:
    folder = tmp_path / "src"
    folder.mkdir()
    shutil.copy(cases.path(CT), folder / "ct.dcm")
    shutil.copy(cases.path(MONOCHROME1), folder / "dx.dcm")
    shutil.copy(cases.path(MULTIFRAME), folder / "multi.dcm")
    shutil.copy(PYDICOM_TEST_FILES / "rtplan.dcm", folder / "plan.dcm")  # no image
    shutil.copy(PYDICOM_TEST_FILES / "CT_small.dcm", folder / "small.dcm")  # broken's series
    data = (PYDICOM_TEST_FILES / "CT_small.dcm").read_bytes()
    broken = pydicom.dcmread(PYDICOM_TEST_FILES / "CT_small.dcm")
    broken.SOPInstanceUID = "1.2.826.0.1.3680043.8.498.2"
    broken.save_as(folder / "broken.dcm")
    (folder / "broken.dcm").write_bytes((folder / "broken.dcm").read_bytes()[: -len(data) // 3])
    return folder


def test_renders_land_in_the_lake_with_their_paths(sources: Path, tmp_path: Path) -> None:
    lake = tmp_path / "lake"
    result = _cli("ingest", str(sources), "--out", str(lake), "--renders", "--workers", "1")
    assert result.returncode == 0, result.stderr
    paths = _renders(lake)
    study, series, sop = _uids(sources / "ct.dcm")
    assert paths["ct.dcm"] == f"renders/{study}/{series}/{sop}.png"
    study, series, sop = _uids(sources / "multi.dcm")
    assert paths["multi.dcm"] == f"renders/{study}/{series}/{sop}_5.png"  # the middle frame
    assert paths["plan.dcm"] is None
    for name in ("ct.dcm", "dx.dcm", "multi.dcm"):
        ds = oracle.read(sources / name)
        with Image.open(lake / str(paths[name])) as image:
            longest = max(ds.Rows, ds.Columns)
            assert max(image.size) == min(256, longest)  # a thumbnail, never upscaled
            ratio = ds.Columns / ds.Rows
            assert abs(image.size[0] / image.size[1] - ratio) < 0.02
    # A broken image costs only its render: its row stays, with the render's error row.
    assert paths["broken.dcm"] is None
    errors = dicomflow.read_lake(str(lake)).errors().to_pylist()
    assert [(Path(e["source"]).name, e["stage"]) for e in errors] == [("broken.dcm", "render")]
    assert not list((lake / "renders").rglob("1.2.826.0.1.3680043.8.498.2*"))
    assert list((lake / "renders").rglob("*.tmp")) == []
    # The run report shows the failed series by the render of one of its instances.
    (report,) = (lake / "_runs").glob("*.json")
    strip = json.loads(report.read_text())["thumbnails"]
    _, series, _ = _uids(sources / "small.dcm")
    assert {"series": series, "why": "failed", "render": paths["small.dcm"]} in strip
    assert f'src="../{paths["small.dcm"]}"' in report.with_suffix(".html").read_text()


def test_a_native_size_render_matches_dcmtk(sources: Path, tmp_path: Path) -> None:
    lake = tmp_path / "lake"
    result = _cli(
        "ingest", str(sources / "ct.dcm"), str(sources / "dx.dcm"), "--out", str(lake),
        "--renders", "--thumbnail-size", "0", "--workers", "1",
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    paths = _renders(lake)
    for name in ("ct.dcm", "dx.dcm"):  # MONOCHROME2 with a window; MONOCHROME1
        ds = oracle.read(sources / name)
        reference = oracle.dcm2pnm(sources / name, tmp_path, oracle.voi_options(ds), ds=ds)
        with Image.open(lake / str(paths[name])) as image:
            mean, worst = oracle.differences(np.asarray(image), reference)
        assert mean <= 1.0 and worst <= 2, f"{name}: mean {mean:.3f}, max {worst}"


def test_every_frame_and_a_chosen_window_on_request(sources: Path, tmp_path: Path) -> None:
    lake = tmp_path / "lake"
    result = _cli(
        "ingest", str(sources / "multi.dcm"), "--out", str(lake), "--renders",
        "--render-frames", "all", "--window", "100,200", "--thumbnail-size", "0",
        "--workers", "1",
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    study, series, sop = _uids(sources / "multi.dcm")
    folder = lake / "renders" / study / series
    frames = int(oracle.read(sources / "multi.dcm").NumberOfFrames)
    assert sorted(p.name for p in folder.iterdir()) == sorted(
        f"{sop}_{k}.png" for k in range(frames)
    )
    for frame in (0, frames - 1):
        reference = oracle.dcm2pnm(
            sources / "multi.dcm", tmp_path, ["+Ww", "100", "200", "+F", str(frame + 1)]
        )
        with Image.open(folder / f"{sop}_{frame}.png") as image:
            mean, worst = oracle.differences(np.asarray(image), reference)
        assert mean <= 1.0 and worst <= 2, f"frame {frame}: mean {mean:.3f}, max {worst}"


def test_jpeg_renders(sources: Path, tmp_path: Path) -> None:
    lake = tmp_path / "lake"
    result = _cli(
        "ingest", str(sources / "ct.dcm"), "--out", str(lake), "--renders", "--format", "jpeg",
        "--thumbnail-size", "64", "--workers", "1",
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    path = _renders(lake)["ct.dcm"]
    assert path is not None and path.endswith(".jpg")
    with Image.open(lake / path) as image:
        assert image.format == "JPEG" and max(image.size) == 64


def test_a_presentation_state_named_on_the_command_line_is_applied(
    sources: Path, tmp_path: Path
) -> None:
    ds = oracle.read(sources / "ct.dcm")
    state = gsps.write(gsps.build(ds, window=(40, 400), rotation=90), tmp_path / "ps.dcm")
    lake = tmp_path / "lake"
    result = _cli(
        "ingest", str(sources / "ct.dcm"), "--out", str(lake), "--renders",
        "--thumbnail-size", "0", "--presentation-state", str(state), "--workers", "1",
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    reference = oracle.dcmp2pgm(sources / "ct.dcm", state, tmp_path)
    with Image.open(lake / str(_renders(lake)["ct.dcm"])) as image:
        mean, worst = oracle.differences(np.asarray(image), reference)
    assert mean <= 1.0 and worst <= 2, f"mean {mean:.3f}, max {worst}"


@pytest.mark.parametrize(
    ("flags", "named"),
    [
        (["--window", "40,0"], "window"),
        (["--window", "wide"], "window"),
        (["--render-frames", "last"], "frames"),
        (["--format", "jpeg", "--presentation-state", "/does/not/exist"], "presentation"),
    ],
)
def test_bad_render_options_are_configuration_errors(
    sources: Path, tmp_path: Path, flags: list[str], named: str
) -> None:
    result = _cli("ingest", str(sources), "--out", str(tmp_path / "l"), "--renders", *flags)
    assert result.returncode == 2, result.stderr
    assert named in result.stderr and "Traceback" not in result.stderr
    assert not (tmp_path / "l" / "renders").exists()


def test_print_spec_shows_the_render_operator(sources: Path, tmp_path: Path) -> None:
    result = _cli(
        "ingest", str(sources), "--out", str(tmp_path / "l"), "--renders", "--window", "1",
        "--print-spec",
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    assert "name: render" in result.stdout and "window: '1'" in result.stdout


def test_dcmtk_is_there() -> None:
    require(shutil.which("dcm2pnm") is not None, "dcm2pnm (Debian package dcmtk)")
