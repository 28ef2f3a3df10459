"""Reading each file once (``pipelines.read_once``) writes exactly what the two-stage
ingest writes, and is used only where it applies."""

from __future__ import annotations

import json
import shutil
import time
from pathlib import Path
from typing import Any

import pyarrow as pa
import pytest
from distributed import Client, get_task_stream, wait

import dicomflow
from dicomflow.pipelines.ingest import IngestOptions, run_ingest
from dicomflow.pipelines.pipeline import task
from dicomflow.pipelines.plan import PartitionPolicy
from dicomflow.pipelines.read_once import Reading, reading_partitions
from dicomflow.records import SourceRef
from tests.conftest import CORPUS, IN_CI, PYDICOM_TEST_FILES, require

PER_RUN = {"instances": ("run_id", "scanned_at"), "series": ("run_id",), "errors": ("run_id",)}
SORT = {"instances": "source", "series": "zarr_path", "errors": "source"}


def _sources(tmp_path: Path) -> list[str]:
    junk = tmp_path / "junk"
    junk.mkdir()
    (junk / "notes.txt").write_text("not DICOM")
    ct = (PYDICOM_TEST_FILES / "CT_small.dcm").read_bytes()
    (junk / "cut.dcm").write_bytes(ct[: len(ct) // 2])
    sources = [str(PYDICOM_TEST_FILES), str(junk)]
    if CORPUS.exists():
        sources.append(str(CORPUS))
    return sources


def _run(client: Client, sources: list[str], lake: Path, read_once: bool) -> set[str]:
    with get_task_stream(client) as stream:
        summary = run_ingest(
            client, sources, out=str(lake), options=IngestOptions(read_once=read_once)
        )
    assert summary.accounted
    return {str(t["key"]).split("-")[1] for t in stream.data}  # dicomflow-<stage>-…


def _table(lake: Path, name: str) -> pa.Table:
    table = getattr(dicomflow.read_lake(str(lake)), name)()
    return table.drop_columns(list(PER_RUN[name])).sort_by(SORT[name]).combine_chunks()


def _without_run(metadata: bytes) -> dict[str, Any]:
    parsed = json.loads(metadata)
    parsed.get("attributes", {}).pop("run_id", None)
    return dict(parsed)


def test_reading_once_writes_what_two_stages_write(client: Client, tmp_path: Path) -> None:
    if IN_CI:
        require(CORPUS.exists(), "the shared corpus")
    sources = _sources(tmp_path)
    once, twice = tmp_path / "once", tmp_path / "twice"
    assert {"read", "series"} <= _run(client, sources, once, read_once=True)
    stages = _run(client, sources, twice, read_once=False)
    assert {"index", "rows", "series"} <= stages and "read" not in stages
    for name in PER_RUN:
        assert _table(once, name).equals(_table(twice, name)), name
    files = sorted(p.relative_to(once) for p in (once / "pixels.zarr").rglob("*") if p.is_file())
    assert files == sorted(
        p.relative_to(twice) for p in (twice / "pixels.zarr").rglob("*") if p.is_file()
    )
    assert sum(p.name.startswith("c.") for p in files) > 100
    for path in files:
        ours, theirs = (once / path).read_bytes(), (twice / path).read_bytes()
        if path.name == "zarr.json":
            assert _without_run(ours) == _without_run(theirs), path
        else:
            assert ours == theirs, path
    assert not [p for p in once.rglob(".*")]  # no scratch or temporaries left


def test_a_lake_with_committed_inputs_is_read_in_two_stages(client: Client, tmp_path: Path) -> None:
    src = tmp_path / "src"
    shutil.copytree(PYDICOM_TEST_FILES / "dicomdirtests" / "77654033" / "CT2", src / "ct")
    lake = tmp_path / "lake"
    assert "read" in _run(client, [str(src)], lake, read_once=True)
    shutil.copytree(PYDICOM_TEST_FILES / "dicomdirtests" / "98892003" / "MR700", src / "mr")
    stages = _run(client, [str(src)], lake, read_once=True)
    assert "read" not in stages and "index" in stages  # the rerun skips the committed series
    assert len(dicomflow.read_lake(str(lake)).series()) >= 2


@pytest.mark.parametrize(
    ("inputs", "workers", "sizes"),
    [
        (400, 2, [100, 75, 57, 42, 32, 24, 18, 13, 10, 8, 8, 8, 5]),  # largest first
        (10, 2, [8, 2]),
        (1, 4, [1]),
        (20_000, 2, [500] * 37 + [375, 282, 211, 158, 119, 89, 67, 50, 38, 28, 21, 16, 12]),
    ],
)
def test_reading_partitions_end_with_short_tasks(
    inputs: int, workers: int, sizes: list[int]
) -> None:
    refs = [SourceRef(f"/data/{i:06d}.dcm", size=1000) for i in range(inputs)]
    parts = reading_partitions(refs, workers)
    assert [len(p.refs) for p in parts][: len(sizes)] == sizes
    assert [r for p in parts for r in p.refs] == refs
    assert len({p.name for p in parts}) == len(parts)


def test_reading_partitions_respect_the_byte_cap() -> None:
    refs = [SourceRef(f"/data/{i:03d}.dcm", size=400) for i in range(100)]
    parts = reading_partitions(refs, 1, PartitionPolicy(max_bytes=1000))
    assert all(sum(r.size or 0 for r in p.refs) <= 1000 for p in parts)
    assert [r for p in parts for r in p.refs] == refs


def _twice(value: int) -> int:
    return 2 * value


def _total(values: list[int]) -> int:
    return sum(values)


def test_released_reading_results_are_wanted_only_by_their_series(client: Client) -> None:
    """Held by the client too, a result lost with its worker would be decoded again after
    its series committed (and leave scratch folders behind the run's sweep)."""
    keys = [f"dicomflow-read-release-test-{i}" for i in range(2)]
    futures = [client.submit(_twice, i, key=key) for i, key in enumerate(keys)]
    wait(futures)
    reading = Reading(list(futures), [], {"x": [0, 1]})
    graph = task(_total, reading.holding("x"), key="dicomflow-series-t")  # holds the futures
    series = client.compute(graph)
    reading.release()
    del futures

    def wanted(keys: list[str], dask_scheduler: Any = None) -> list[int]:
        tasks = dask_scheduler.tasks
        return [len(tasks[k].who_wants or ()) for k in keys if k in tasks]

    deadline = time.monotonic() + 10
    while any(client.run_on_scheduler(wanted, keys)) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert not any(client.run_on_scheduler(wanted, keys))
    assert series.result() == 2
    del graph


def test_reading_shows_its_own_progress(
    client: Client, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """The reading is most of a read-once run: it has a bar of its own, before the commits'."""
    src = tmp_path / "src"
    shutil.copytree(PYDICOM_TEST_FILES / "dicomdirtests" / "77654033" / "CT2", src)
    files = len([p for p in src.rglob("*") if p.is_file()])
    run_ingest(client, [str(src)], out=str(tmp_path / "lake"), progress=True)
    err = capsys.readouterr().err
    assert "read: 100%" in err and f"{files}/{files}" in err
    assert err.index("read:") < err.rindex(f"{files}/{files}")
