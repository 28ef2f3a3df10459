"""A third-party operator, installed as a package, runs from YAML and from Python; its
table lands in the lake, is tracked by the ledger, and reruns skip it."""

from __future__ import annotations

import json
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
from tests.conftest import PYDICOM_TEST_FILES, plugin_env

FILES = ("CT_small.dcm", "MR_small.dcm", "rtplan.dcm", "rtstruct.dcm", "waveform_ecg.dcm")


@pytest.fixture
def sources(tmp_path: Path) -> Path:
    folder = tmp_path / "src"
    folder.mkdir()
    for name in FILES:
        shutil.copy(PYDICOM_TEST_FILES / name, folder / name)
    return folder


def _env(plugin_path: Path) -> dict[str, str]:
    return plugin_env(plugin_path)


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


def _stack_stats_oracle(folder: Path) -> dict[str, tuple[int, float, float, float, float]]:
    """pydicom's reading of each series: its instances, the distance between its first
    and last slice along the slice normal, and its values' range and mean."""
    by_series: dict[str, list[pydicom.Dataset]] = {}
    for path in sorted(folder.rglob("*.dcm")):
        ds = pydicom.dcmread(path)
        by_series.setdefault(str(ds.SeriesInstanceUID), []).append(ds)
    expected = {}
    for uid, datasets in by_series.items():
        orientation = np.array(datasets[0].ImageOrientationPatient, dtype=float)
        normal = np.cross(orientation[:3], orientation[3:])
        along = sorted(float(np.dot(normal, ds.ImagePositionPatient)) for ds in datasets)
        values = np.stack([apply_modality_lut(ds.pixel_array, ds) for ds in datasets])
        values = values.astype(np.float64)
        expected[uid] = (
            len(datasets),
            along[-1] - along[0],
            values.min(),
            values.max(),
            values.mean(),
        )
    return expected


def test_a_plugin_series_operator_sees_each_series_and_its_stacks(
    plugin_path: Path, tmp_path: Path
) -> None:
    """A series operator from a plugin runs after ``pixels`` on every series, reads the
    stacks back from the lake, and its table is committed, ledgered and skipped on a
    rerun like any other; listed before ``pixels`` it is a config error."""
    sys.path.insert(0, str(Path(__file__).parents[1] / "benchmarks"))
    from synth import write_ct_series

    sources = tmp_path / "src"
    write_ct_series(sources, 14, per_series=7, rows=24, cols=24)
    lake = tmp_path / "lake"
    spec = tmp_path / "spec.yaml"
    spec.write_text(
        textwrap.dedent(
            f"""
            name: stack-stats
            source: {{kind: files, urls: ["{sources}"]}}
            operators: [{{name: flatten}}, {{name: pixels}}, {{name: stack_stats}}]
            sinks: [{{kind: lake, path: "{lake}"}}]
            """
        )
    )
    env = _env(plugin_path)
    run = [sys.executable, "-m", "dicomflow", "run", str(spec)]
    first = subprocess.run(run, env=env, capture_output=True, text=True, timeout=300)
    assert first.returncode == 0, first.stderr
    read = dicomflow.read_lake(str(lake))
    rows = {row["SeriesInstanceUID"]: row for row in read.table("stack_stats").to_pylist()}
    expected = _stack_stats_oracle(sources)
    assert len(expected) == 2 and set(rows) == set(expected)
    for uid, (instances, extent, low, high, mean) in expected.items():
        row = rows[uid]
        assert row["instances"] == instances
        assert row["extent_mm"] == pytest.approx(extent, abs=1e-6)
        assert (row["minimum"], row["maximum"]) == (low, high)
        assert row["mean"] == pytest.approx(mean, rel=1e-9)
    stacks = {row["zarr_path"] for row in read.series().to_pylist()}
    assert {row["zarr_path"] for row in rows.values()} == stacks
    assert "stack_stats" in _ledgered_tables(lake)
    again = subprocess.run(run, env=env, capture_output=True, text=True, timeout=300)
    assert again.returncode == 0, again.stderr
    assert "skipped (already committed): 14" in again.stdout
    assert read.table("stack_stats").num_rows == 2  # nothing duplicated

    spec.write_text(
        spec.read_text().replace(
            "{name: pixels}, {name: stack_stats}", "{name: stack_stats}, {name: pixels}"
        )
    )
    wrong = subprocess.run(run, env=env, capture_output=True, text=True, timeout=300)
    assert wrong.returncode == 2
    assert "stack_stats" in wrong.stderr and "after" in wrong.stderr and "pixels" in wrong.stderr


def test_a_failing_series_operator_costs_only_its_outputs(
    plugin_path: Path, tmp_path: Path
) -> None:
    """A series operator that raises: every instance of the series keeps its row and its
    stack, gets an error row of that operator's stage and its fault in ``warnings``."""
    sys.path.insert(0, str(Path(__file__).parents[1] / "benchmarks"))
    from synth import write_ct_series

    sources = tmp_path / "src"
    write_ct_series(sources, 5, per_series=5, rows=16, cols=16)
    lake = tmp_path / "lake"
    code = textwrap.dedent(
        f"""
        import dicomflow
        from dicomflow_sequence_stats.stack_stats import StackStatsConfig

        summary = dicomflow.ingest(
            "{sources}", out="{lake}", pixels=True, operators=[StackStatsConfig(fail=True)]
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
    read = dicomflow.read_lake(str(lake))
    instances = read.instances().to_pylist()
    assert len(instances) == 5 and all(r["zarr_path"] for r in instances)
    assert all(any(w.startswith("stack_stats: ") for w in r["warnings"]) for r in instances)
    errors = read.errors().to_pylist()
    assert len(errors) == 5 and {e["stage"] for e in errors} == {"stack_stats"}
    assert "stack_stats" not in read.tables() or read.table("stack_stats").num_rows == 0
