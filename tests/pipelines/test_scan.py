"""The scan pipeline end to end on a real local cluster: lake layout, readers, determinism."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import dask.dataframe as dd
import duckdb
import pandas as pd
import pyarrow as pa
import pyarrow.dataset as pads
import pyarrow.parquet as pq
import pydicom
import pytest
from distributed import Client, LocalCluster

import dicomflow
from dicomflow.api import run_scan, scan_errors
from dicomflow.errors import ConfigError
from dicomflow.pipelines.cluster import open_client
from dicomflow.schemas import errors_schema, instances_schema
from tests.conftest import PYDICOM_TEST_FILES, corpus_files, pydicom_files

VOLATILE = ["run_id", "scanned_at"]


def _content(table: pa.Table) -> pd.DataFrame:
    frame = table.drop_columns(VOLATILE).to_pandas()
    return frame.sort_values("source").reset_index(drop=True)


@pytest.fixture(scope="module")
def pydicom_lake(tmp_path_factory: pytest.TempPathFactory, client: Client) -> Path:
    out = tmp_path_factory.mktemp("lake")
    summary = run_scan([str(PYDICOM_TEST_FILES)], out=str(out), client=client, progress=False)
    assert summary.accounted
    return out


def test_every_pydicom_test_file_is_accounted_for(pydicom_lake: Path) -> None:
    lake = dicomflow.read_lake(str(pydicom_lake))
    sources = set(lake.instances(columns=["source"]).column("source").to_pylist())
    failed = set(lake.errors().column("source").to_pylist())
    assert not sources & failed
    assert sources | failed == {str(p) for p in pydicom_files()}


def test_every_part_has_the_full_schema_and_zstd(pydicom_lake: Path) -> None:
    for table, schema in (("instances", instances_schema()), ("errors", errors_schema())):
        parts = sorted((pydicom_lake / table).glob("*.parquet"))
        assert parts
        for part in parts:
            assert pq.read_schema(part).remove_metadata().equals(schema.remove_metadata())
            meta = pq.ParquetFile(part).metadata
            assert meta.row_group(0).column(0).compression == "ZSTD"
    leftovers = [p for p in pydicom_lake.rglob("*") if p.name.startswith(".")]
    assert leftovers == []


def test_lake_is_readable_by_every_usual_reader(pydicom_lake: Path) -> None:
    glob = f"{pydicom_lake}/instances/*.parquet"
    n = pads.dataset(f"{pydicom_lake}/instances", format="parquet").count_rows()
    assert n > 50
    assert len(pd.read_parquet(f"{pydicom_lake}/instances")) == n
    assert len(dd.read_parquet(glob).compute()) == n
    (count,) = duckdb.sql(f"SELECT count(*) FROM read_parquet('{glob}')").fetchall()[0]
    assert count == n
    (modality,) = duckdb.sql(
        "SELECT json_extract_string(dicom_json, '$.00080060.Value[0]') "
        f"FROM read_parquet('{glob}') WHERE source LIKE '%CT_small.dcm'"
    ).fetchall()[0]
    assert modality == "CT"


def test_typed_columns_have_their_arrow_types(pydicom_lake: Path) -> None:
    table = dicomflow.read_lake(str(pydicom_lake)).instances()
    row = table.filter(pa.compute.ends_with(table["source"], "CT_small.dcm")).to_pylist()[0]
    ds = pydicom.dcmread(PYDICOM_TEST_FILES / "CT_small.dcm")
    assert table.schema.field("StudyDate").type == pa.date32()
    assert table.schema.field("PixelSpacing").type == pa.list_(pa.float64())
    assert row["Rows"] == ds.Rows
    assert row["PixelSpacing"] == [float(v) for v in ds.PixelSpacing]
    assert row["ImageType"] == list(ds.ImageType)
    assert row["has_pixel_data"] is True
    assert row["sop_class_name"] == "CT Image Storage"


def test_dicomdir_is_its_own_kind_of_record(pydicom_lake: Path) -> None:
    table = dicomflow.read_lake(str(pydicom_lake)).instances(columns=["source", "kind"])
    kinds = dict(zip(table["source"].to_pylist(), table["kind"].to_pylist(), strict=True))
    dicomdirs = {s for s, k in kinds.items() if k == "dicomdir"}
    assert str(PYDICOM_TEST_FILES / "dicomdirtests" / "DICOMDIR") in dicomdirs
    assert kinds[str(PYDICOM_TEST_FILES / "CT_small.dcm")] == "instance"


def test_rerun_replaces_parts_instead_of_duplicating(
    pydicom_lake: Path, client: Client, tmp_path: Path
) -> None:
    out = tmp_path / "lake"
    shutil.copytree(pydicom_lake, out)
    before = sorted(p.name for p in (out / "instances").iterdir())
    run_scan([str(PYDICOM_TEST_FILES)], out=str(out), client=client, progress=False)
    assert sorted(p.name for p in (out / "instances").iterdir()) == before


def test_two_workers_and_one_worker_give_the_same_table(client: Client) -> None:
    sources = [str(PYDICOM_TEST_FILES)]
    two = dicomflow.scan(sources, client=client, progress=False)
    with open_client(workers=1) as one:
        single = dicomflow.scan(sources, client=one, progress=False)
    assert isinstance(two, dicomflow.Lake)  # one type, with or without out=
    pd.testing.assert_frame_equal(_content(two.instances()), _content(single.instances()))


def test_scan_returns_a_table_and_errors_in_memory(client: Client) -> None:
    summary = run_scan(
        [str(PYDICOM_TEST_FILES / "CT_small.dcm"), str(PYDICOM_TEST_FILES / "README.txt")],
        client=client,
        progress=False,
    )
    assert summary.rows == 1 and summary.errors == 1
    errors = scan_errors(summary)
    assert errors.column("code").to_pylist() == ["not_dicom"]


def test_missing_path_is_a_config_error_not_a_crash(client: Client, tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="does not exist"):
        run_scan([str(tmp_path / "does-not-exist.dcm")], client=client, progress=False)


@pytest.mark.integration
def test_whole_corpus_is_accounted_for(corpus: Path, client: Client, tmp_path: Path) -> None:
    summary = run_scan([str(corpus)], out=str(tmp_path), client=client, progress=False)
    files = corpus_files()
    assert summary.files == len(files)
    assert summary.accounted
    lake = dicomflow.read_lake(str(tmp_path))
    written = set(lake.instances(columns=["source"]).column("source").to_pylist())
    failed = set(lake.errors().column("source").to_pylist())
    assert written | failed == {str(p) for p in files}


def _run_cli(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "dicomflow", *args], capture_output=True, text=True, timeout=300
    )


def test_cli_scan_prints_a_summary_and_exits_zero(tmp_path: Path) -> None:
    result = _run_cli(
        "scan",
        str(PYDICOM_TEST_FILES / "dicomdirtests"),
        "--out",
        str(tmp_path / "lake"),
        "--workers",
        "1",
    )
    assert result.returncode == 0, result.stderr
    assert "files: " in result.stdout and "files/s: " in result.stdout
    assert "\r" not in result.stderr  # no progress bar when not a terminal


def test_cli_fail_on_error_exits_three(tmp_path: Path) -> None:
    result = _run_cli(
        "scan",
        str(PYDICOM_TEST_FILES / "README.txt"),
        "--out",
        str(tmp_path / "lake"),
        "--workers",
        "1",
        "--fail-on-error",
    )
    assert result.returncode == 3
    assert "not_dicom=1" in result.stdout


@pytest.mark.parametrize(
    ("address", "message"),
    [
        ("tcp://127.0.0.1:9", "cannot reach the Dask scheduler at tcp://127.0.0.1:9"),
        # Dask's own errors for these (a missing or bad port, a protocol it does not know)
        # are a ValueError or an AssertionError: a traceback, where one line is needed.
        ("synchronous", "'synchronous' is not a Dask scheduler address"),
        ("tcp://127.0.0.1", "'tcp://127.0.0.1' is not a Dask scheduler address"),
        ("tcp://127.0.0.1:port", "'tcp://127.0.0.1:port' is not a Dask scheduler address"),
        ("smtp://127.0.0.1:25", "'smtp://127.0.0.1:25' is not a Dask scheduler address"),
    ],
)
def test_cli_a_scheduler_it_cannot_use_is_a_config_error(
    address: str, message: str, tmp_path: Path
) -> None:
    result = _run_cli(
        "scan",
        str(PYDICOM_TEST_FILES / "CT_small.dcm"),
        "--out",
        str(tmp_path / "lake"),
        "--scheduler",
        address,
    )
    assert result.returncode == 2, result.stderr
    assert message in result.stderr
    assert "Traceback" not in result.stderr


def test_cli_version() -> None:
    result = _run_cli("--version")
    assert result.returncode == 0 and dicomflow.__version__ in result.stdout


def test_runs_on_a_scheduler_named_by_address(tmp_path: Path) -> None:
    with LocalCluster(
        n_workers=1, threads_per_worker=1, processes=True, dashboard_address=None, silence_logs=40
    ) as cluster:
        summary = run_scan(
            [str(PYDICOM_TEST_FILES / "CT_small.dcm")],
            scheduler=cluster.scheduler_address,
            progress=False,
        )
        assert summary.rows == 1
        env = {**os.environ, "DASK_SCHEDULER_ADDRESS": cluster.scheduler_address}
        result = subprocess.run(
            [
                sys.executable,
                "-m",
                "dicomflow",
                "scan",
                str(PYDICOM_TEST_FILES / "MR_small.dcm"),
                "--out",
                str(tmp_path / "lake"),
            ],
            capture_output=True,
            text=True,
            env=env,
            timeout=300,
        )
        assert result.returncode == 0, result.stderr
        assert "rows: 1" in result.stdout


def test_progress_bar_shows_count_rate_and_eta_when_enabled(
    capsys: pytest.CaptureFixture[str],
) -> None:
    from dicomflow.pipelines.progress import Progress

    with Progress(10, enabled=True) as bar:
        bar.advance(4)
    err = capsys.readouterr().err
    assert "4/10" in err and "file/s" in err
    with Progress(10) as quiet:  # stderr is not a terminal under pytest
        quiet.advance(10)
    assert capsys.readouterr().err == ""


def test_back_to_back_runs_never_share_task_results(client: Client, tmp_path: Path) -> None:
    """The same inputs with another sink must not be answered from the first run's tasks."""
    from datetime import UTC, datetime

    from distributed import wait

    from dicomflow.pipelines.pipeline import new_run_id
    from dicomflow.pipelines.scan import scan_pipeline
    from dicomflow.records import RunContext

    sources = [str(PYDICOM_TEST_FILES)]
    first = scan_pipeline(sources, out=str(tmp_path / "lake"))
    context = RunContext(new_run_id(), datetime.now(UTC))
    held = client.compute(first.to_delayed(first.plan()[0], context))  # results still held
    wait(held)
    collected = run_scan(sources, client=client, progress=False)
    rows = sum(t.num_rows for t in collected.tables.get("instances", []))
    assert rows == collected.rows > 100
    del held
