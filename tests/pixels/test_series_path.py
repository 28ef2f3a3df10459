"""A series' one path: reading tasks decode and encode, one task writes shards and commits.

Every frame must equal pydicom's decode, whatever the tasks Dask computes again after
a worker died (reading tasks, the writing task, before or after its commit), and
whatever type an instance decodes to.
"""

from __future__ import annotations

import sys
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np
import pydicom
import pytest
import zarr

from dicomflow.connectors.files import FilesConnector
from dicomflow.lake.layout import LakeLayout
from dicomflow.pipelines.series_tasks import (
    SeriesRows,
    read_rows,
    share_count,
    with_instances,
    write_one,
)
from dicomflow.pixels.series_writer import EncodedImage, PixelOptions
from dicomflow.records import Batch, RunContext
from tests.conftest import REPO

sys.path.insert(0, str(REPO / "benchmarks"))
from synth import write_ct_series

SLICES = 8
PARTS = 3  # reading tasks, so records are spread over several of them


def _setup(tmp_path: Path, run: str) -> tuple[list[Path], FilesConnector, RunContext]:
    paths = write_ct_series(tmp_path / "src", SLICES, per_series=SLICES, rows=24, cols=24)
    source = FilesConnector((str(tmp_path / "src"),))
    return paths, source, RunContext(f"20261128T000000Z-{run}", datetime.now(UTC))


def _read(source: FilesConnector, context: RunContext, options: PixelOptions) -> list[SeriesRows]:
    refs = sorted(source.query().refs, key=lambda r: r.url)
    size = -(-len(refs) // PARTS)
    from dicomflow.operators.flatten import Flatten

    return [
        read_rows(source, refs[s : s + size], context, (Flatten(),), options)
        for s in range(0, len(refs), size)
    ]


def _write(parts: list[SeriesRows], context: RunContext, options: PixelOptions) -> Batch:
    batch, _ = write_one(parts, context, options)
    return with_instances(batch, parts)


def _expected(paths: list[Path]) -> dict[str, np.ndarray]:
    out = {}
    for path in paths:
        ds = pydicom.dcmread(path)
        slope, intercept = float(ds.RescaleSlope), float(ds.RescaleIntercept)
        out[str(ds.SOPInstanceUID)] = ds.pixel_array * slope + intercept
    return out


def _volume(lake: Path, series: dict[str, Any]) -> np.ndarray:
    return zarr.open_group(str(lake / series["zarr_path"]), mode="r")["0"][:]


def _assert_frames(lake: Path, series: dict[str, Any], paths: list[Path]) -> None:
    """Every frame of the committed stack equals pydicom's decode of its instance."""
    volume = _volume(lake, series)
    expected = _expected(paths)
    assert len(series["sop_instance_uids"]) == len(paths)
    for frame, uid in enumerate(series["sop_instance_uids"]):
        assert np.array_equal(volume[frame], expected[uid]), f"frame {frame}"


def _hidden(lake: Path) -> list[str]:
    return [p.name for p in lake.rglob(".*")]


@pytest.mark.parametrize("where", ["local", "bucket"])
@pytest.mark.parametrize("frames_per_chunk", [1, 3])
def test_the_series_path_writes_pydicoms_frames_in_one_shard(
    tmp_path: Path, where: str, frames_per_chunk: int
) -> None:
    paths, source, context = _setup(tmp_path, "path")
    root = str(tmp_path / "lake") if where == "local" else f"memory://{tmp_path.name}/lake"
    layout = LakeLayout(root)
    options = PixelOptions(layout, frames_per_chunk=frames_per_chunk)
    parts = _read(source, context, options)
    assert all(isinstance(e, EncodedImage) for part in parts for e in part.encoded.values())
    batch = _write(parts, context, options)
    assert [r.error for r in batch.records] == [None] * SLICES
    assert batch.instances is not None and batch.instances.num_rows == SLICES
    (series,) = batch.tables["series"]
    group = zarr.open_group(f"{root}/{series['zarr_path']}", mode="r")
    array = group["0"]
    assert array.chunks == (frames_per_chunk, 24, 24)
    # one shard: the stack's frames, rounded up to whole chunks
    assert array.shards == (-(-SLICES // frames_per_chunk) * frames_per_chunk, 24, 24)
    expected = _expected(paths)
    for frame, uid in enumerate(series["sop_instance_uids"]):
        assert np.array_equal(array[frame], expected[uid]), f"frame {frame}"
    fs, base = layout.filesystem()
    chunk_files = [p for p in fs.find(f"{base}/{series['zarr_path']}/0") if "/c." in p]
    assert len(chunk_files) == 1  # the whole series is one shard: one file or object
    if where == "local":
        assert _hidden(tmp_path / "lake") == []


def test_tasks_computed_again_keep_every_frame(tmp_path: Path) -> None:
    """Reading tasks and the writing task computed again (their workers died), before
    and after the commit."""
    paths, source, context = _setup(tmp_path, "again")
    lake = tmp_path / "lake"
    options = PixelOptions(LakeLayout(str(lake)))
    parts = _read(source, context, options)
    write_one(parts, context, options)  # the first attempt, its worker died after it
    parts = _read(source, context, options)
    first = _write(parts, context, options)
    second = _write(parts, context, options)  # after the commit
    for batch in (first, second):
        assert [r.error for r in batch.records] == [None] * SLICES
    assert first.tables == second.tables
    (series,) = second.tables["series"]
    _assert_frames(lake, series, paths)
    assert _hidden(lake) == []


def test_an_instance_decoded_to_another_type_is_cast_into_its_stack(tmp_path: Path) -> None:
    """12 bits stored decode to int16, the rest of the series (16 bits) to int32: that
    instance's frames are cast, exactly, into the stack."""
    paths, source, context = _setup(tmp_path, "cast")
    odd = pydicom.dcmread(paths[3])
    odd.BitsStored, odd.HighBit = 12, 11
    odd.save_as(paths[3])
    lake = tmp_path / "lake"
    options = PixelOptions(LakeLayout(str(lake)))
    parts = _read(source, context, options)
    encoded = [e for part in parts for e in part.encoded.values()]
    assert {e.dtype for e in encoded if isinstance(e, EncodedImage)} == {"int16", "int32"}
    batch = _write(parts, context, options)
    assert [r.error for r in batch.records] == [None] * SLICES
    (series,) = batch.tables["series"]
    assert series["dtype"] == "int32"
    _assert_frames(lake, series, paths)


def test_a_write_computed_again_after_the_commit_changes_nothing(tmp_path: Path) -> None:
    """The worker holding the writing task's result dies once the commit is done: Dask
    computes it again from the reading tasks' results. The same rows come out, the
    broken instance is still the only error, the stack is untouched."""
    paths, source, context = _setup(tmp_path, "rewrite")
    broken = pydicom.dcmread(paths[5])
    broken.PixelData = broken.PixelData[:100]
    broken.save_as(paths[5])
    lake = tmp_path / "lake"
    options = PixelOptions(LakeLayout(str(lake)))
    parts = _read(source, context, options)
    first = _write(parts, context, options)
    (series,) = first.tables["series"]
    volume = _volume(lake, series)
    stamp = {p: p.stat().st_mtime_ns for p in (lake / series["zarr_path"]).rglob("c.*")}

    again = _write(parts, context, options)

    failed = [bool(r.problems) for r in first.records]  # the broken one keeps its row
    assert sum(failed) == 1 and series["qc_flags"] == ["missing_frames"]
    assert [bool(r.problems) for r in again.records] == failed
    assert [r.outputs for r in again.records] == [r.outputs for r in first.records]
    assert again.tables == first.tables
    assert np.array_equal(_volume(lake, series), volume)
    assert {p: p.stat().st_mtime_ns for p in stamp} == stamp  # not written again
    assert _hidden(lake) == []


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


def _counting_decodes(monkeypatch: pytest.MonkeyPatch) -> list[str]:
    """Every decode of an instance's Pixel Data in this process, by SOP Instance UID:
    pydicom's, and the native decode from the header (its image's UID noted when the
    header is read)."""
    from dicomflow.pixels import decode as decode_module
    from dicomflow.pixels.plain import PlainImage

    calls: list[str] = []
    original = decode_module._decode

    def counting(ds: pydicom.Dataset, memory_budget: int) -> Any:
        calls.append(str(ds.SOPInstanceUID))
        return original(ds, memory_budget)

    monkeypatch.setattr(decode_module, "_decode", counting)
    uids: dict[int, str] = {}
    original_of, original_native = PlainImage.of.__func__, PlainImage.decode  # type: ignore[attr-defined]

    def noted(cls: type[PlainImage], header: Any, *args: Any) -> PlainImage | None:
        image = original_of(cls, header, *args)
        if image is not None:
            (uid,) = [e.value for e in header.elements if e.tag == 0x00080018]
            uids[id(image)] = uid.decode().rstrip("\x00 ")
        return image

    def counting_native(image: PlainImage, value: Any) -> Any:
        calls.append(uids[id(image)])
        return original_native(image, value)

    monkeypatch.setattr(PlainImage, "of", classmethod(noted))
    monkeypatch.setattr(PlainImage, "decode", counting_native)
    return calls


def _with_render(lake: Path) -> tuple[Any, ...]:
    from dicomflow.operators.base import RunSettings
    from dicomflow.operators.flatten import Flatten
    from dicomflow.operators.render import Render
    from dicomflow.pipelines.compiler import with_images

    layout = LakeLayout(str(lake))
    operators = with_images([Flatten(), Render(layout)], [False, True], RunSettings(layout))
    return tuple(operators)


def test_an_image_rendered_and_stacked_is_decoded_once(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """With ``render`` among the instance operators, the stacks take their chunks from
    the render's decode: every instance is decoded once, and every frame still equals
    pydicom's decode."""
    paths, source, context = _setup(tmp_path, "once")
    lake = tmp_path / "lake"
    options = PixelOptions(LakeLayout(str(lake)))
    refs = sorted(source.query().refs, key=lambda r: r.url)
    calls = _counting_decodes(monkeypatch)
    operators = _with_render(lake)
    parts = [read_rows(source, refs[s : s + 3], context, operators, options) for s in (0, 3, 6)]
    expected_uids = sorted(str(pydicom.dcmread(p).SOPInstanceUID) for p in paths)
    assert sorted(calls) == expected_uids  # once each, for the render and the stack
    assert not any("encoded_frames" in r.outputs for part in parts for r in part.records)
    batch = _write(parts, context, options)
    assert [r.error for r in batch.records] == [None] * SLICES
    (series,) = batch.tables["series"]
    _assert_frames(lake, series, paths)
    assert len(list((lake / "renders").rglob("*.png"))) == SLICES
    # Without the render, the stack's own decode: once each too.
    calls.clear()
    read_rows(source, refs, context, operators[:1], options)
    assert sorted(calls) == expected_uids


def test_a_broken_image_rendered_and_stacked_fails_in_both_stages(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """An image that cannot be decoded costs the render and the stack each their own error
    row, as when either runs alone; the rest of the series is stacked."""
    paths, source, context = _setup(tmp_path, "broken")
    data = paths[2].read_bytes()
    paths[2].write_bytes(data[: len(data) - 200])  # Pixel Data cut short
    lake = tmp_path / "lake"
    options = PixelOptions(LakeLayout(str(lake)))
    refs = sorted(source.query().refs, key=lambda r: r.url)
    parts = [read_rows(source, refs, context, _with_render(lake), options)]
    batch = _write(parts, context, options)
    broken = str(paths[2])
    by_source = {r.ref.url: r for r in batch.records}
    assert [f.stage for f in by_source[broken].problems] == ["render", "write_pixels"]
    # The same outcome as the stack alone: the render's decode is not the stack's verdict.
    alone = _write(
        [read_rows(source, refs, context, _with_render(lake)[:1], options)], context, options
    )
    assert [f.code for f in by_source[broken].problems][1:] == [
        f.code for f in {r.ref.url: r for r in alone.records}[broken].problems
    ]
    assert sum(not r.problems for r in batch.records) == SLICES - 1
    assert batch.tables["series"] == alone.tables["series"]


@pytest.mark.parametrize("expand_palette", [False, True])
@pytest.mark.parametrize(
    "name",
    [
        "examples_palette.dcm",
        "SC_rgb_rle_2frame.dcm",
        "SC_rgb_jpeg_dcmtk.dcm",
        "JPEG2000.dcm",
        "MR_small.dcm",
    ],
)
def test_chunks_from_the_renders_decode_equal_the_stacks_own(
    tmp_path: Path, name: str, expand_palette: bool
) -> None:
    """Palette (kept or expanded), colour, multi-frame and compressed images: the chunks
    encoded from the render's decode are the chunks the stack makes on its own."""
    import shutil

    from tests.conftest import PYDICOM_TEST_FILES

    (tmp_path / "src").mkdir()
    shutil.copy(PYDICOM_TEST_FILES / name, tmp_path / "src" / name)
    source = FilesConnector((str(tmp_path / "src"),))
    refs = source.query().refs
    context = RunContext("20261128T000000Z-same", datetime.now(UTC))
    lake = tmp_path / "lake"
    options = PixelOptions(LakeLayout(str(lake)), expand_palette=expand_palette)
    operators = _with_render(lake)
    shared = read_rows(source, refs, context, operators, options)
    alone = read_rows(source, refs, context, operators[:1], options)
    assert list(shared.encoded.values()) == list(alone.encoded.values())
    assert all(isinstance(e, EncodedImage) for e in shared.encoded.values())
