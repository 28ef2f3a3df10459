"""A third-party operator, installed as a package, runs from YAML and from Python; its
table lands in the lake, is tracked by the ledger, and reruns skip it."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pydicom
import pytest
from pydicom.pixels import apply_modality_lut

import dicomflow
from tests.conftest import PYDICOM_TEST_FILES

PLUGIN = Path(__file__).parent / "plugins" / "sequence_stats"
FILES = ("CT_small.dcm", "MR_small.dcm", "rtplan.dcm", "rtstruct.dcm", "waveform_ecg.dcm")


@pytest.fixture(scope="module")
def plugin_path(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The plugin installed, with its entry points, into a folder of its own."""
    target = tmp_path_factory.mktemp("plugin-site")
    package = tmp_path_factory.mktemp("plugin-source") / PLUGIN.name
    shutil.copytree(PLUGIN, package)  # the build writes beside its sources, never in the repo
    subprocess.run(
        [
            sys.executable,
            "-m",
            "pip",
            "install",
            "--quiet",
            "--no-deps",
            "--no-build-isolation",
            "--target",
            str(target),
            str(package),
        ],
        check=True,
        capture_output=True,
        timeout=300,
    )
    return target


@pytest.fixture
def sources(tmp_path: Path) -> Path:
    folder = tmp_path / "src"
    folder.mkdir()
    for name in FILES:
        shutil.copy(PYDICOM_TEST_FILES / name, folder / name)
    return folder


def _env(plugin_path: Path) -> dict[str, str]:
    return {**os.environ, "PYTHONPATH": os.pathsep.join([str(plugin_path), os.getcwd()])}


def _expected(folder: Path, min_items: int) -> list[tuple[str, str, int]]:
    """The oracle: pydicom's own reading of each file's top-level sequences."""
    rows = []
    for path in sorted(folder.iterdir()):
        ds = pydicom.dcmread(path, force=True)
        for element in ds:
            if element.VR == "SQ" and len(element.value) >= min_items:
                tag = f"({element.tag.group:04X},{element.tag.element:04X})"
                rows.append((str(ds.SOPInstanceUID), tag, len(element.value)))
    return sorted(rows)


def _rows(lake: Path) -> list[tuple[str, str, int]]:
    table = dicomflow.read_lake(str(lake)).table("sequence_stats")
    return sorted(zip(*(table.column(c).to_pylist() for c in table.column_names), strict=True))


def _ledgered_tables(lake: Path) -> set[str]:
    entries = (lake / "_ledger" / "entries").rglob("*.json")
    return {table for path in entries for table in json.loads(path.read_text())["parts"]}


def test_a_plugin_operator_runs_from_yaml_and_its_table_is_tracked(
    plugin_path: Path, sources: Path, tmp_path: Path
) -> None:
    lake = tmp_path / "lake"
    spec = tmp_path / "spec.yaml"
    spec.write_text(
        textwrap.dedent(
            f"""
            name: sequences
            source: {{kind: files, urls: ["{sources}"]}}
            operators:
              - name: flatten
              - name: sequence_stats
                min_items: 2
            sinks: [{{kind: lake, path: "{lake}"}}]
            """
        )
    )
    env = _env(plugin_path)
    run = [sys.executable, "-m", "dicomflow", "run", str(spec)]
    first = subprocess.run(run, env=env, capture_output=True, text=True, timeout=300)
    assert first.returncode == 0, first.stderr
    expected = _expected(sources, min_items=2)
    assert expected and _rows(lake) == expected
    assert "sequence_stats" in _ledgered_tables(lake)
    assert "sequence_stats" in dicomflow.read_lake(str(lake)).tables()
    again = subprocess.run(run, env=env, capture_output=True, text=True, timeout=300)
    assert again.returncode == 0, again.stderr
    assert f"skipped (already committed): {len(FILES)}" in again.stdout
    assert _rows(lake) == expected  # nothing duplicated
    schema = subprocess.run(
        [sys.executable, "-m", "dicomflow.schemas.spec_schema_print"],
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert schema.returncode == 0, schema.stderr
    assert "SequenceStatsConfig" in schema.stdout and "min_items" in schema.stdout


def test_a_plugin_operator_runs_from_python(
    plugin_path: Path, sources: Path, tmp_path: Path
) -> None:
    lake = tmp_path / "lake"
    code = textwrap.dedent(
        f"""
        import dicomflow
        from dicomflow_sequence_stats import SequenceStatsConfig

        summary = dicomflow.ingest(
            "{sources}", out="{lake}", operators=[SequenceStatsConfig(min_items=0)]
        )
        assert summary.accounted, summary
        """
    )
    result = subprocess.run(
        [sys.executable, "-c", code],
        env=_env(plugin_path),
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert result.returncode == 0, result.stderr
    assert _rows(lake) == _expected(sources, min_items=0)
    instances = dicomflow.read_lake(str(lake)).instances(columns=["SOPInstanceUID"])
    assert instances.num_rows == len(FILES)


def test_an_unknown_operator_is_a_config_error_naming_it(tmp_path: Path) -> None:
    spec = tmp_path / "spec.yaml"
    spec.write_text(
        "name: x\nsource: {kind: files, urls: [/a]}\n"
        "operators: [{name: no_such_step}]\nsinks: [{kind: lake, path: /l}]\n"
    )
    result = subprocess.run(
        [sys.executable, "-m", "dicomflow", "validate", str(spec)],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode == 2
    assert "no_such_step" in result.stderr and "flatten" in result.stderr  # names known ones


def _pixel_stats_oracle(folder: Path) -> dict[str, tuple[int, float, float, float]]:
    """pydicom's decoding with its Modality LUT, for every file it can decode."""
    expected = {}
    for path in sorted(folder.iterdir()):
        ds = pydicom.dcmread(path, force=True)
        if "PixelData" not in ds:
            continue
        try:
            values = apply_modality_lut(ds.pixel_array, ds).astype(np.float64)
        except Exception:  # the oracle cannot decode it either
            continue
        frames = int(ds.get("NumberOfFrames") or 1)
        expected[str(ds.SOPInstanceUID)] = (frames, values.min(), values.max(), values.mean())
    return expected


def test_a_plugin_operator_reads_decoded_pixels_and_a_broken_image_costs_only_its_row(
    plugin_path: Path, sources: Path, tmp_path: Path
) -> None:
    """An instance operator that asks for pixels gets them decoded (Modality LUT applied);
    an image that cannot be decoded is an error row of that operator's stage, and the
    instance keeps its ``instances`` row and the other operators' outputs."""
    data = (PYDICOM_TEST_FILES / "CT_small.dcm").read_bytes()
    broken = pydicom.dcmread(PYDICOM_TEST_FILES / "CT_small.dcm")
    broken.SOPInstanceUID = "1.2.826.0.1.3680043.8.498.1"
    broken.save_as(sources / "broken.dcm")
    cut = (sources / "broken.dcm").read_bytes()
    (sources / "broken.dcm").write_bytes(cut[: len(cut) - len(data) // 3])  # Pixel Data cut
    lake = tmp_path / "lake"
    spec = tmp_path / "spec.yaml"
    spec.write_text(
        textwrap.dedent(
            f"""
            name: pixel-stats
            source: {{kind: files, urls: ["{sources}"]}}
            operators:
              - name: pixel_stats
              - name: sequence_stats
            sinks: [{{kind: lake, path: "{lake}"}}]
            """
        )
    )
    run = [sys.executable, "-m", "dicomflow", "run", str(spec)]
    result = subprocess.run(run, env=_env(plugin_path), capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr
    read = dicomflow.read_lake(str(lake))
    stats = {row["SOPInstanceUID"]: row for row in read.table("pixel_stats").to_pylist()}
    expected = _pixel_stats_oracle(sources)
    assert expected and set(stats) == set(expected)
    for uid, (frames, low, high, mean) in expected.items():
        row = stats[uid]
        assert row["frames"] == frames
        assert (row["minimum"], row["maximum"]) == (low, high)
        assert row["mean"] == pytest.approx(mean, rel=1e-9)
    instances = {r["source"].rsplit("/", 1)[-1]: r for r in read.instances().to_pylist()}
    assert set(instances) == {*FILES, "broken.dcm"}
    errors = read.errors().to_pylist()
    assert [(e["source"].rsplit("/", 1)[-1], e["stage"]) for e in errors] == [
        ("broken.dcm", "pixel_stats")
    ]
    assert f"pixel_stats: {errors[0]['code']}" in instances["broken.dcm"]["warnings"]
    sequences = read.table("sequence_stats").column("SOPInstanceUID").to_pylist()
    assert "1.2.826.0.1.3680043.8.498.1" in sequences  # the other operator still ran
