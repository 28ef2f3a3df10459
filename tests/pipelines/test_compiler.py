"""One compiler behind the CLI, the API and YAML: what a command line means as a spec,
pipelines that compose over one lake, and spec fields that reach the operators."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import pyarrow.compute as pc
import pytest
from distributed import Client

import dicomflow
from dicomflow.api import ingest, ingest_spec, run_scan
from dicomflow.schemas.spec import FlattenOperator, PipelineSpec, PixelsOperator
from tests.conftest import PYDICOM_TEST_FILES

SERIES = PYDICOM_TEST_FILES / "dicomdirtests" / "77654033"
VOLATILE = ["run_id", "scanned_at"]


def _cli(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "dicomflow", *args], capture_output=True, text=True, timeout=300
    )


@pytest.fixture
def sources(tmp_path: Path) -> Path:
    folder = tmp_path / "src"
    shutil.copytree(SERIES, folder)
    shutil.copy(PYDICOM_TEST_FILES / "rtplan.dcm", folder / "rtplan.dcm")
    (folder / "notes.txt").write_text("not DICOM")
    return folder


def _content(lake: Path) -> list[dict]:
    table = dicomflow.read_lake(str(lake)).instances().drop_columns(VOLATILE)
    return sorted(table.to_pylist(), key=lambda r: r["source"])


def test_print_spec_is_the_command_as_yaml_and_runs_the_same(sources: Path, tmp_path: Path) -> None:
    printed = _cli(
        "ingest",
        str(sources),
        "--out",
        str(tmp_path / "a"),
        "--pixels",
        "--frames-per-chunk",
        "2",
        "--print-spec",
    )
    assert printed.returncode == 0, printed.stderr
    spec = PipelineSpec.from_yaml(printed.stdout)
    assert [op.name for op in spec.operators] == ["flatten", "pixels"]
    assert spec.operator("pixels") == PixelsOperator(frames_per_chunk=2)
    assert spec == ingest_spec(
        [str(sources)], out=str(tmp_path / "a"), pixels=True, frames_per_chunk=2
    )
    assert not (tmp_path / "a").exists()  # printing runs nothing
    path = tmp_path / "spec.yaml"
    path.write_text(printed.stdout)
    by_spec = _cli("run", str(path), "--set", f"sinks.0.path={tmp_path / 'b'}")
    by_flags = _cli(
        "ingest", str(sources), "--out", str(tmp_path / "a"), "--pixels", "--frames-per-chunk", "2"
    )
    assert by_spec.returncode == by_flags.returncode == 0, by_spec.stderr + by_flags.stderr
    first, second = _content(tmp_path / "a"), _content(tmp_path / "b")
    for row in first + second:  # the lake's own path differs, nothing else
        row["zarr_path"] = row["zarr_path"] and Path(row["zarr_path"]).name
    assert first == second


def test_scan_ingest_and_scan_again_compose_over_one_lake(
    sources: Path, tmp_path: Path, client: Client
) -> None:
    lake = tmp_path / "lake"
    first = run_scan([str(sources)], out=str(lake), client=client, progress=False)
    assert first.accounted and first.skipped == 0
    pixels = ingest([str(sources)], out=str(lake), pixels=True, client=client, progress=False)
    assert pixels.skipped == 0  # the scan did not decode: everything is done again
    opened = dicomflow.read_lake(str(lake))
    after_ingest = opened.instances(columns=["source", "zarr_path", "frame_index"])
    stacks = opened.series()
    assert stacks.num_rows and pc.sum(pc.is_valid(after_ingest["zarr_path"])).as_py() > 0
    again = run_scan([str(sources)], out=str(lake), client=client, progress=False)
    assert again.skipped == again.files == first.files  # the ingest's commits cover a scan
    opened = dicomflow.read_lake(str(lake))
    final = opened.instances(columns=["source", "zarr_path", "frame_index"])
    assert final.sort_by("source").equals(after_ingest.sort_by("source"))  # still live
    assert opened.series().sort_by("zarr_path").equals(stacks.sort_by("zarr_path"))
    sources_seen = final.column("source").to_pylist()
    assert len(sources_seen) == len(set(sources_seen))  # nothing duplicated
    assert opened.errors().num_rows == 1  # notes.txt, once
    for path in set(stacks.column("zarr_path").to_pylist()):
        assert (lake / path / "zarr.json").exists()


def test_a_scan_into_a_lake_made_with_pixels_supersedes_nothing(
    sources: Path, tmp_path: Path, client: Client
) -> None:
    lake = tmp_path / "lake"
    ingest([str(sources)], out=str(lake), pixels=True, client=client, progress=False)
    before = dicomflow.read_lake(str(lake))
    rows, stacks = before.instances().drop_columns(VOLATILE), before.series()
    scanned = run_scan([str(sources)], out=str(lake), client=client, progress=False)
    assert scanned.skipped == scanned.files  # nothing to do: the ingest covered it
    after = dicomflow.read_lake(str(lake))
    assert after.instances().drop_columns(VOLATILE).sort_by("source").equals(rows.sort_by("source"))
    assert after.series().num_rows == stacks.num_rows > 0


def test_inline_binary_limit_of_a_spec_reaches_flatten(tmp_path: Path, client: Client) -> None:
    """PS3.18 F.2.7: a binary value is inlined (InlineBinary) or referenced (BulkDataURI);
    the spec's limit decides which, for every run path."""
    source = [str(PYDICOM_TEST_FILES / "rtplan.dcm"), str(PYDICOM_TEST_FILES / "CT_small.dcm")]

    def inline_values(limit: int) -> str:
        lake = tmp_path / f"lake-{limit}"
        spec = ingest_spec(source, out=str(lake), inline_binary_limit=limit)
        assert spec.operators == [FlattenOperator(inline_binary_limit=limit)]
        dicomflow.run(spec, client=client, progress=False)
        table = dicomflow.read_lake(str(lake)).instances(columns=["dicom_json"])
        return json.dumps(table.column("dicom_json").to_pylist())

    assert "InlineBinary" in inline_values(1024)
    none = inline_values(0)
    assert "InlineBinary" not in none and "BulkDataURI" in none


def test_incremental_flags_print_as_the_spec_keys(tmp_path: Path) -> None:
    """``--incremental --late-arrivals --look-back N`` mean the spec's keys; late
    arrivals without an incremental run is a configuration error (exit 2)."""
    peer = ["ingest", "dimse://PACS@127.0.0.1:104", "-q", "PatientID=*", "--out", str(tmp_path)]
    printed = _cli(*peer, "--incremental", "--late-arrivals", "--look-back", "30", "--print-spec")
    assert printed.returncode == 0, printed.stderr
    spec = PipelineSpec.from_yaml(printed.stdout)
    assert (spec.incremental, spec.late_arrivals, spec.look_back_days) == (True, True, 30)
    refused = _cli(*peer, "--late-arrivals", "--print-spec")
    assert refused.returncode == 2 and "late_arrivals belongs to incremental runs" in refused.stderr
