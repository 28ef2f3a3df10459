"""The direct chunk writer produces exactly the bytes zarr writes, and readers agree."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import zarr

from dicomflow.lake.layout import LakeLayout
from dicomflow.lake.zarr_store import (
    FrameWriter,
    StackLocation,
    commit_stack,
    create_temporary_stack,
    open_stack_group,
    open_temporary_array,
)

SHAPES = {"grey": (4, 33, 47), "rgb": (3, 16, 20, 3)}


@pytest.mark.parametrize("kind", SHAPES)
@pytest.mark.parametrize("dtype", ["uint8", "int16", "uint16", "int32", "float64"])
def test_direct_chunks_are_the_bytes_zarr_writes(tmp_path: Path, kind: str, dtype: str) -> None:
    shape = SHAPES[kind]
    rng = np.random.default_rng(7)
    data = (rng.normal(0, 300, shape)).astype(dtype)
    data[1] = 0  # an all-zero frame: zarr writes no chunk for it, nor do we
    layout = LakeLayout(str(tmp_path / "lake"))
    ours = create_temporary_stack(
        layout, StackLocation("1.2", "1.2.3", "stack-0"), shape=shape, dtype=data.dtype
    )
    theirs = create_temporary_stack(
        layout, StackLocation("1.2", "1.2.3", "stack-1"), shape=shape, dtype=data.dtype
    )
    FrameWriter(ours, layout).write(0, data)
    open_temporary_array(theirs, layout)[:] = data
    ours_chunks = {
        p.relative_to(ours): p.read_bytes() for p in Path(ours).rglob("c.*") if p.is_file()
    }
    theirs_chunks = {
        p.relative_to(theirs): p.read_bytes() for p in Path(theirs).rglob("c.*") if p.is_file()
    }
    assert ours_chunks == theirs_chunks
    assert len(ours_chunks) == shape[0] - 1
    assert np.array_equal(open_temporary_array(ours, layout)[:], data)


def test_commit_moves_the_stack_into_place_atomically(tmp_path: Path) -> None:
    layout = LakeLayout(str(tmp_path / "lake"))
    location = StackLocation("1.2", "1.2.3", "stack-0")
    for value in (1, 2):  # a rerun replaces the previous stack
        temporary = create_temporary_stack(layout, location, shape=(2, 4, 4), dtype=np.dtype("u1"))
        FrameWriter(temporary, layout).write(0, np.full((2, 4, 4), value, "u1"))
        commit_stack(
            temporary,
            layout,
            location,
            spacing=(1.0, 1.0, 1.0),
            affine=np.eye(4),
            attributes={"units": None},
        )
        assert not Path(temporary).exists()
    final = tmp_path / "lake" / location.relative_path
    assert zarr.open_group(str(final), mode="r")["0"][0, 0, 0] == 2
    assert hidden_entries(tmp_path / "lake", location) == []


def hidden_entries(lake: Path, location: StackLocation) -> list[str]:
    """Temporaries beside a local stack (none once it is committed)."""
    folder = (lake / location.relative_path).parent
    return [p.name for p in folder.iterdir() if p.name.startswith(".")] if folder.exists() else []


@pytest.mark.parametrize("where", ["local", "bucket"])
def test_a_stack_restarted_by_its_own_run_keeps_its_frames_and_no_other(
    tmp_path: Path, where: str
) -> None:
    """A plan recomputed after its worker died finds the stack its run is building and
    keeps it; a stack left by another run (or committed before) is started afresh."""
    root = str(tmp_path / "lake") if where == "local" else f"memory://{tmp_path.name}/lake"
    layout = LakeLayout(root)
    assert layout.is_local() == (where == "local")
    location = StackLocation("1.2", "1.2.3", "stack-0")
    frames = np.arange(1, 3 * 16 + 1, dtype="u1").reshape(3, 4, 4)

    def start(run_id: str) -> str:
        return create_temporary_stack(
            layout, location, shape=frames.shape, dtype=frames.dtype, run_id=run_id
        )

    def commit(temporary: str, run_id: str) -> None:
        commit_stack(
            temporary,
            layout,
            location,
            spacing=(1.0, 1.0, 1.0),
            affine=np.eye(4),
            attributes={},
            run_id=run_id,
        )

    first = start("run-a")
    FrameWriter(first, layout).write(0, frames)
    again = start("run-a")
    assert again == first
    assert np.array_equal(open_temporary_array(again, layout)[:], frames)
    commit(again, "run-a")
    committed = open_stack_group(layout, location.relative_path)
    assert committed.attrs["run_id"] == "run-a"
    assert np.array_equal(committed["0"][:], frames)

    # the plan recomputed once more, after the commit (its worker died before the series
    # task's result was fetched): the committed frames survive the repeated commit
    commit(start("run-a"), "run-a")
    assert np.array_equal(open_stack_group(layout, location.relative_path)["0"][:], frames)
    if where == "local":
        assert hidden_entries(tmp_path / "lake", location) == []

    other = start("run-b")  # a later run: nothing of run-a's stack is reused
    assert not open_temporary_array(other, layout)[:].any()
