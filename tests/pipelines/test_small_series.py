"""Small series share a commit (``series_tasks.commit_groups``): one set of table parts
and one ledger entry for many series, every instance still finding its pixels, and a
series that grows taking the others of its commit with it."""

from __future__ import annotations

import shutil
import sys
from pathlib import Path

import numpy as np
import pyarrow as pa
import pydicom
import pytest
import zarr
from distributed import Client

from dicomflow.api import ingest, read_lake
from dicomflow.lake.layout import LakeLayout
from dicomflow.lake.ledger import Ledger
from dicomflow.pipelines.ingest import IngestOptions, run_ingest
from dicomflow.pipelines.series_tasks import COMMIT_INSTANCES, SMALL_SERIES, commit_groups
from dicomflow.records import SourceRef
from tests.conftest import REPO

sys.path.insert(0, str(REPO / "benchmarks"))
from synth import write_ct_series

SINGLES = 12


def _refs(*sizes: int) -> list[list[SourceRef]]:
    return [[SourceRef(f"s{n}/{k}") for k in range(size)] for n, size in enumerate(sizes)]


def test_commit_groups_keep_large_series_alone_and_fill_small_ones_per_holder() -> None:
    groups = _refs(1, SMALL_SERIES, 3, 2, 1)
    holders = {"s0": "a", "s2": "b", "s3": "a", "s4": "b"}
    commits = commit_groups(groups, lambda refs: holders.get(refs[0].url.split("/")[0]))
    assert commits == [[groups[0], groups[3]], [groups[1]], [groups[2], groups[4]]]
    many = _refs(*[SMALL_SERIES - 1] * 5)
    sizes = [sum(map(len, c)) for c in commit_groups(many, lambda refs: None)]
    assert sizes == [4 * (SMALL_SERIES - 1), SMALL_SERIES - 1]
    assert max(sizes) <= COMMIT_INSTANCES


def _expected(path: Path) -> np.ndarray:
    ds = pydicom.dcmread(path)
    return ds.pixel_array.astype(np.int32) * int(ds.RescaleSlope) + int(ds.RescaleIntercept)


@pytest.mark.parametrize("read_once", [True, False])
def test_small_series_share_commits_and_every_instance_finds_its_pixels(
    client: Client, tmp_path: Path, read_once: bool
) -> None:
    src = tmp_path / "src"
    singles = write_ct_series(src / "singles", SINGLES, per_series=1, rows=16, cols=16)
    large = write_ct_series(src / "large", SMALL_SERIES, per_series=SMALL_SERIES, rows=16, cols=16)
    lake = tmp_path / "lake"
    summary = run_ingest(
        client, [str(src)], out=str(lake), options=IngestOptions(read_once=read_once)
    )
    assert (summary.rows, summary.errors) == (SINGLES + SMALL_SERIES, 0)
    tables = read_lake(str(lake))
    instances, series = tables.instances(), tables.series()
    assert series.num_rows == SINGLES + 1
    sops = instances.column("SOPInstanceUID").to_pylist()
    assert len(sops) == len(set(sops)) == SINGLES + SMALL_SERIES
    entries = Ledger(LakeLayout(str(lake))).entries()
    assert 2 <= len(entries) < SINGLES  # the large series alone, the singles together
    assert len(list((lake / "instances").glob("*.parquet"))) == len(entries)
    by_source = {
        row["source"]: (row["zarr_path"], row["frame_index"]) for row in instances.to_pylist()
    }
    for path in [*singles, *large]:
        zarr_path, frame = by_source[str(path)]
        stack = zarr.open_group(str(lake / zarr_path), mode="r")["0"]
        assert np.array_equal(stack[frame], _expected(path)), path
    assert pa.compute.all(pa.compute.is_valid(series.column("zarr_path"))).as_py()


def test_a_grown_small_series_is_committed_again_with_its_commit_mates(
    client: Client, tmp_path: Path
) -> None:
    """Without taking its commit mates along, the old entry (still holding the others)
    would stay live beside the new one: the grown series' first instance twice."""
    src = tmp_path / "src"
    write_ct_series(src / "singles", 5, per_series=1, rows=16, cols=16)
    pair = write_ct_series(src / "pair", 2, per_series=2, rows=16, cols=16)
    held_back = tmp_path / "later.dcm"
    shutil.move(pair[1], held_back)
    lake = tmp_path / "lake"
    first = ingest([str(src)], out=str(lake), pixels=True, client=client)
    assert first.rows == 6
    assert len(Ledger(LakeLayout(str(lake))).entries()) == 1  # six series, one commit
    shutil.move(held_back, pair[1])
    again = ingest([str(src)], out=str(lake), pixels=True, client=client)
    assert (again.rows, again.skipped) == (7, 0)  # the mates are committed again too
    tables = read_lake(str(lake))
    sops = tables.instances().column("SOPInstanceUID").to_pylist()
    assert len(sops) == len(set(sops)) == 7
    series = tables.series()
    assert series.num_rows == 6
    assert sorted(series.column("frames").to_pylist()) == [1, 1, 1, 1, 1, 2]
    untouched = ingest([str(src)], out=str(lake), pixels=True, client=client)
    assert (untouched.rows, untouched.skipped) == (0, 7)
