"""A series' pixel phases repeated as Dask repeats them after a worker dies.

When the worker holding a series' plan dies after the decode-and-write shares
finished, Dask computes the plan again but not the shares. The plan must then
keep the frames the shares wrote, or the committed stack silently holds zeros.
"""

from __future__ import annotations

import sys
from datetime import UTC, datetime
from pathlib import Path

import numpy as np
import pydicom
import pytest
import zarr

from dicomflow.connectors.files import FilesConnector
from dicomflow.lake.layout import LakeLayout
from dicomflow.pipelines.series_tasks import plan_rows, read_rows, share_count
from dicomflow.pixels.series_writer import (
    PixelOptions,
    WorkItem,
    commit_series,
    pixel_work,
    share_items,
    write_items,
)
from dicomflow.records import RunContext
from tests.conftest import REPO

sys.path.insert(0, str(REPO / "benchmarks"))
from synth import write_ct_series

SLICES = 8
SHARES = 2


def _committed_volume(lake: Path, zarr_path: str) -> np.ndarray:
    return zarr.open_group(str(lake / zarr_path), mode="r")["0"][:]


def test_a_recomputed_plan_keeps_the_frames_its_finished_shares_wrote(tmp_path: Path) -> None:
    paths = write_ct_series(tmp_path / "src", SLICES, per_series=SLICES, rows=32, cols=32)
    source = FilesConnector((str(tmp_path / "src"),))
    refs = sorted(source.query().refs, key=lambda r: r.url)
    context = RunContext("20261128T000000Z-recompute", datetime.now(UTC))
    options = PixelOptions(LakeLayout(str(tmp_path / "lake")))
    rows = [read_rows(source, refs, context)]

    plan = plan_rows(rows, context, options)
    work = pixel_work(plan)
    shares = [write_items(work, k, SHARES, options) for k in range(SHARES)]
    replanned = plan_rows(rows, context, options)  # the plan's worker died; Dask redoes it
    batch = commit_series(replanned, shares, context, options)

    assert [r.error for r in batch.records] == [None] * SLICES
    (series,) = batch.tables["series"]
    volume = _committed_volume(tmp_path / "lake", series["zarr_path"])
    by_uid = {str(ds.SOPInstanceUID): ds for ds in (pydicom.dcmread(p) for p in paths)}
    for frame, uid in enumerate(series["sop_instance_uids"]):
        ds = by_uid[uid]
        expected = ds.pixel_array * float(ds.RescaleSlope) + float(ds.RescaleIntercept)
        assert np.array_equal(volume[frame], expected), f"frame {frame} lost"
    attributes = dict(zarr.open_group(str(tmp_path / "lake" / series["zarr_path"])).attrs)
    assert attributes["run_id"] == context.run_id


def test_shares_and_commit_recomputed_after_the_commit_change_nothing(tmp_path: Path) -> None:
    """The worker holding the series' result and the shares' results dies after the
    commit: Dask computes the shares and the commit again. The shares find the stack
    committed by its run and report what the first attempt found: the same rows, the
    same error for the one broken instance, no frame lost."""
    paths = write_ct_series(tmp_path / "src", SLICES, per_series=SLICES, rows=32, cols=32)
    broken = pydicom.dcmread(paths[5])
    broken.PixelData = broken.PixelData[:100]  # cannot be decoded: an error row, twice
    broken.save_as(paths[5])
    source = FilesConnector((str(tmp_path / "src"),))
    refs = sorted(source.query().refs, key=lambda r: r.url)
    context = RunContext("20261128T000000Z-aftercommit", datetime.now(UTC))
    options = PixelOptions(LakeLayout(str(tmp_path / "lake")))
    plan = plan_rows([read_rows(source, refs, context)], context, options)
    work = pixel_work(plan)
    shares = [write_items(work, k, SHARES, options) for k in range(SHARES)]
    first = commit_series(plan, shares, context, options)
    (series,) = first.tables["series"]
    volume = _committed_volume(tmp_path / "lake", series["zarr_path"])

    failed = [bool(r.problems) for r in first.records]  # the broken one keeps its row
    assert sum(failed) == 1 and series["qc_flags"] == ["missing_frames"]

    for k in range(SHARES):  # every share recomputed after the commit
        shares[k] = write_items(work, k, SHARES, options)
    again = commit_series(plan, shares, context, options)

    assert [bool(r.problems) for r in again.records] == failed
    assert [r.outputs for r in again.records] == [r.outputs for r in first.records]
    assert again.tables["series"] == first.tables["series"]
    assert np.array_equal(_committed_volume(tmp_path / "lake", series["zarr_path"]), volume)


@pytest.mark.parametrize(
    ("instances", "workers", "shares"),
    [
        (400, 1, 13),  # one per 32 instances
        (400, 2, 14),  # 13 would leave one of 2 workers idle for the last share
        (400, 16, 16),
        (400, 32, 13),  # rounding to 32 would more than double the tasks
        (100, 3, 4),
        (3, 2, 1),
        (1, 2, 1),
        (0, 2, 1),
        (5000, 2, 16),  # at most MAX_SHARES
    ],
)
def test_share_counts(instances: int, workers: int, shares: int) -> None:
    assert share_count(instances, workers) == shares


def test_items_that_write_one_chunk_stay_in_one_share() -> None:
    # 2 frames per chunk; frame 0 is the plan's first instance, written before any share.
    # Frames 8 and 9 are two instances in one chunk.
    frames = [(1, 3), (4, 1), (5, 1), (6, 2), (8, 1), (9, 1), (10, 1)]
    items = [WorkItem(i, 0, f, n, f"/{i}") for i, (f, n) in enumerate(frames)]
    items += [WorkItem(7, 1, 1, 1, "/7"), WorkItem(8, 1, 2, 1, "/8")]  # a second stack
    shares = [share_items(items, k, 3, frames_per_chunk=2) for k in range(3)]
    assert sorted(i.record for share in shares for i in share) == list(range(9))
    chunk_owner: dict[tuple[int, int], int] = {}
    for k, share in enumerate(shares):
        for item in share:
            for frame in range(item.frame, item.frame + item.frames):
                owner = chunk_owner.setdefault((item.stack, frame // 2), k)
                assert owner == k, f"chunk {frame // 2} of stack {item.stack} in two shares"
    assert all(shares)  # the work is still spread


def test_one_frame_chunks_are_shared_round_robin() -> None:
    items = [WorkItem(i, 0, i, 1, f"/{i}") for i in range(7)]
    assert [i.record for i in share_items(items, 1, 3)] == [1, 4]
