"""Series decoded while their headers are read (``dicomflow.pixels.early``).

The early path must write exactly what the two-phase path writes, keep every frame
when Dask computes its tasks again after a worker died, and leave no scratch.
"""

from __future__ import annotations

import sys
from collections.abc import Sequence
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np
import pydicom
import zarr

from dicomflow.connectors.files import FilesConnector
from dicomflow.lake.layout import LakeLayout
from dicomflow.pipelines.instance_rows import has_row, located, rows_table
from dicomflow.pipelines.series_tasks import SeriesRows, plan_rows, read_rows
from dicomflow.pixels.early import applies, remove_scratch, scratch_folder
from dicomflow.pixels.series_writer import (
    InstancePixels,
    PixelOptions,
    SeriesPlan,
    commit_series,
    pixel_work,
    write_items,
)
from dicomflow.records import Batch, ErrorInfo, RunContext
from tests.conftest import REPO

sys.path.insert(0, str(REPO / "benchmarks"))
from synth import write_ct_series

SLICES = 8
PARTS = 3  # reading shares, so records are spread over several early decodes


def _setup(tmp_path: Path, run: str) -> tuple[list[Path], FilesConnector, RunContext]:
    paths = write_ct_series(tmp_path / "src", SLICES, per_series=SLICES, rows=24, cols=24)
    source = FilesConnector((str(tmp_path / "src"),))
    return paths, source, RunContext(f"20261128T000000Z-{run}", datetime.now(UTC))


def _read(
    source: FilesConnector, context: RunContext, options: PixelOptions, scratch: str | None
) -> list[SeriesRows]:
    refs = sorted(source.query().refs, key=lambda r: r.url)
    size = -(-len(refs) // PARTS)
    return [
        read_rows(source, refs[s : s + size], context, start=s, scratch=scratch, options=options)
        for s in range(0, len(refs), size)
    ]


def _files(lake: Path) -> dict[str, bytes]:
    root = lake / "pixels.zarr"
    return {
        str(p.relative_to(root)): p.read_bytes()
        for p in root.rglob("*")
        if p.is_file() and p.name != "zarr.json"
    }


def _expected(paths: list[Path]) -> dict[str, np.ndarray]:
    out = {}
    for path in paths:
        ds = pydicom.dcmread(path)
        out[str(ds.SOPInstanceUID)] = ds.pixel_array * float(ds.RescaleSlope) + float(
            ds.RescaleIntercept
        )
    return out


def _assert_frames(lake: Path, series: dict[str, Any], paths: list[Path]) -> None:
    """Every frame of the committed stack equals pydicom's decode of its instance."""
    volume = zarr.open_group(str(lake / series["zarr_path"]), mode="r")["0"][:]
    expected = _expected(paths)
    for frame, uid in enumerate(series["sop_instance_uids"]):
        assert np.array_equal(volume[frame], expected[uid]), f"frame {frame}"


def _commit(
    plan: SeriesPlan,
    context: RunContext,
    options: PixelOptions,
    shares: Sequence[dict[int, ErrorInfo | None]] = (),
) -> Batch:
    return commit_series(plan, list(shares), context, options)


def test_early_decoding_writes_what_the_two_phase_path_writes(tmp_path: Path) -> None:
    _, source, context = _setup(tmp_path, "same")
    results = {}
    for mode in ("early", "two-phase"):
        lake = tmp_path / mode
        options = PixelOptions(LakeLayout(str(lake)))
        assert applies(options)
        if mode == "early":
            scratch = scratch_folder(options, "part-x", context.run_id)
            parts = _read(source, context, options, scratch)
            plan = plan_rows(parts, context, options, early=True)
            assert plan.items == []  # nothing left for decode-and-write shares
            batch = _commit(plan, context, options)
            # the reading tasks built the instances table; the records keep little of it
            had_row = [has_row(r) for part in parts for r in part.records]
            pieces = [part.table for part in parts if part.table is not None]
            instances = located(pieces, had_row, batch.records)
        else:
            plan = plan_rows(_read(source, context, options, None), context, options)
            work = pixel_work(plan)
            batch = _commit(
                plan, context, options, [write_items(work, k, 2, options) for k in (0, 1)]
            )
            instances = rows_table(batch.records)
        results[mode] = (batch, _files(lake), instances)
    (early, early_files, early_rows) = results["early"]
    (phased, phased_files, phased_rows) = results["two-phase"]
    assert early_files == phased_files and len(early_files) == SLICES
    assert early.tables == phased.tables
    assert early_rows.num_rows == SLICES and early_rows.equals(phased_rows)
    assert [r.error for r in early.records] == [r.error for r in phased.records]


def test_early_tasks_computed_again_keep_every_frame_and_leave_no_scratch(tmp_path: Path) -> None:
    """Reading shares and the plan computed again (their workers died), before and after
    the frames were placed; then the commit, twice."""
    paths, source, context = _setup(tmp_path, "again")
    lake = tmp_path / "lake"
    options = PixelOptions(LakeLayout(str(lake)))
    scratch = scratch_folder(options, "part-x", context.run_id)
    parts = _read(source, context, options, scratch)
    plan = plan_rows(parts, context, options, early=True)
    parts = _read(source, context, options, scratch)  # scratch chunks written again
    plan = plan_rows(parts, context, options, early=True)
    plan = plan_rows(parts, context, options, early=True)  # scratch already moved: still placed
    first = _commit(plan, context, options)
    second = _commit(plan, context, options)
    for batch in (first, second):
        assert [r.error for r in batch.records] == [None] * SLICES
    (series,) = second.tables["series"]
    _assert_frames(lake, series, paths)
    hidden = [p.name for p in lake.rglob(".*")]
    assert Path(scratch).exists()  # the commit task (ingest) removes it, not commit_series
    assert hidden == [Path(scratch).name]


def test_an_instance_decoded_to_another_type_is_cast_into_its_stack(tmp_path: Path) -> None:
    """12 bits stored decode to int16, the rest of the series (16 bits) to int32: that
    instance is decoded again and cast, exactly, into the stack."""
    paths, source, context = _setup(tmp_path, "cast")
    odd = pydicom.dcmread(paths[3])
    odd.BitsStored, odd.HighBit = 12, 11
    odd.save_as(paths[3])
    lake = tmp_path / "lake"
    options = PixelOptions(LakeLayout(str(lake)))
    scratch = scratch_folder(options, "part-x", context.run_id)
    parts = _read(source, context, options, scratch)
    decoded = [d for part in parts for d in part.decoded.values()]
    assert all(isinstance(d, InstancePixels) for d in decoded)
    dtypes = {d.dtype for d in decoded if isinstance(d, InstancePixels)}
    assert dtypes == {"int16", "int32"}
    batch = _commit(plan_rows(parts, context, options, early=True), context, options)
    assert [r.error for r in batch.records] == [None] * SLICES
    (series,) = batch.tables["series"]
    assert series["dtype"] == "int32"
    _assert_frames(lake, series, paths)


def test_a_plan_computed_again_after_the_commit_changes_nothing(tmp_path: Path) -> None:
    """The worker holding the plan's and the commit's results dies once the commit is
    done (its scratch removed): Dask computes both again from the reading shares'
    results. The same rows come out, the broken instance is still the only error."""
    paths, source, context = _setup(tmp_path, "replan")
    broken = pydicom.dcmread(paths[5])
    broken.PixelData = broken.PixelData[:100]
    broken.save_as(paths[5])
    lake = tmp_path / "lake"
    options = PixelOptions(LakeLayout(str(lake)))
    scratch = scratch_folder(options, "part-x", context.run_id)
    parts = _read(source, context, options, scratch)
    first = _commit(plan_rows(parts, context, options, early=True), context, options)
    remove_scratch([scratch])  # as the commit task does
    (series,) = first.tables["series"]
    volume = zarr.open_group(str(lake / series["zarr_path"]), mode="r")["0"][:]

    again = _commit(plan_rows(parts, context, options, early=True), context, options)

    failed = [bool(r.problems) for r in first.records]  # the broken one keeps its row
    assert sum(failed) == 1 and series["qc_flags"] == ["missing_frames"]
    assert [bool(r.problems) for r in again.records] == failed
    assert [r.outputs for r in again.records] == [r.outputs for r in first.records]
    assert again.tables == first.tables
    assert np.array_equal(zarr.open_group(str(lake / series["zarr_path"]))["0"][:], volume)
    assert [p.name for p in lake.rglob(".*")] == []


def test_a_scratch_folder_that_cannot_be_made_leaves_the_decoding_to_the_plan(
    tmp_path: Path,
) -> None:
    paths, source, context = _setup(tmp_path, "noscratch")
    (tmp_path / "not-a-folder").write_bytes(b"")
    scratch = str(tmp_path / "not-a-folder" / "scratch")
    lake = tmp_path / "lake"
    options = PixelOptions(LakeLayout(str(lake)))
    parts = _read(source, context, options, scratch)
    assert all(part.decoded == {} for part in parts)
    batch = _commit(plan_rows(parts, context, options, early=True), context, options)
    assert [r.error for r in batch.records] == [None] * SLICES
    (series,) = batch.tables["series"]
    _assert_frames(lake, series, paths)
