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
from dicomflow.pipelines.ingest import plan_rows, read_rows, share_count
from dicomflow.pixels.series_writer import PixelOptions, commit_series, pixel_work, write_items
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
    """The worker holding the series' result and one share's result dies after the
    commit: Dask computes that share and the commit again. The share finds the stack
    committed by its run; no instance becomes an error row, no frame is lost."""
    write_ct_series(tmp_path / "src", SLICES, per_series=SLICES, rows=32, cols=32)
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

    shares[1] = write_items(work, 1, SHARES, options)  # recomputed after the commit
    again = commit_series(plan, shares, context, options)

    assert [r.error for r in again.records] == [None] * SLICES
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
