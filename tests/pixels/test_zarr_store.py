"""Stacks are sharded Zarr v3: our shards are the bytes zarr writes; commits are atomic."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import zarr

from dicomflow.lake.layout import LakeLayout
from dicomflow.lake.shards import shard_bytes
from dicomflow.lake.zarr_store import (
    ChunkEncoder,
    ShardWriter,
    StackLocation,
    commit_stack,
    committed_array,
    create_temporary_stack,
    frames_per_shard,
    open_stack_group,
    stack_shape,
)

# decoded layout: (frames, rows, cols[, samples])
SHAPES = {"grey": (5, 33, 47), "rgb": (3, 16, 20, 3)}


def _write_with_zarr(path: Path, stored: np.ndarray, per_shard: int) -> zarr.Array:
    """The same array written by zarr itself: the oracle for our shard bytes."""
    axis = stored.ndim - 3
    chunks = tuple(1 if i == axis else n for i, n in enumerate(stored.shape))
    shards = tuple(per_shard if i == axis else n for i, n in enumerate(stored.shape))
    array = zarr.create_array(
        str(path),
        shape=stored.shape,
        chunks=chunks,
        shards=shards,
        dtype=stored.dtype,
        compressors=[zarr.codecs.BloscCodec(cname="lz4", clevel=5, shuffle="bitshuffle")],
        fill_value=0,
        chunk_key_encoding={"name": "default", "separator": "."},
    )
    array[...] = stored
    return array


@pytest.mark.parametrize("kind", SHAPES)
@pytest.mark.parametrize("dtype", ["uint8", "int16", "uint16", "int32", "float64"])
def test_assembled_shards_are_the_bytes_zarr_writes(
    tmp_path: Path, kind: str, dtype: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    decoded_shape = SHAPES[kind]
    rng = np.random.default_rng(7)
    frames = rng.normal(0, 300, decoded_shape).astype(dtype)
    frames[1] = 0  # an all-zero frame: zarr stores no chunk for it, nor do we
    stored = np.moveaxis(frames, -1, 0) if frames.ndim == 4 else frames
    assert stored.shape == stack_shape(decoded_shape[0], decoded_shape[1:])
    layout = LakeLayout(str(tmp_path / "lake"))
    location = StackLocation("1.2", "1.2.3", "stack-0")
    per_shard = 2  # several shards, the last one partial
    frame_bytes = frames[0].nbytes
    monkeypatch.setattr("dicomflow.lake.zarr_store.SHARD_BYTES", per_shard * frame_bytes)
    encode = ChunkEncoder()
    chunks = [encode(frames[f : f + 1]) for f in range(len(frames))]
    assert chunks[1] is None
    temporary = create_temporary_stack(layout, location, shape=stored.shape, dtype=frames.dtype)
    write = ShardWriter(temporary, layout, stored.ndim)
    for number in range(0, len(chunks), per_shard):
        group = chunks[number : number + per_shard]
        data = shard_bytes(group + [None] * (per_shard - len(group)))
        assert data is not None
        write(number // per_shard, data)
    theirs = _write_with_zarr(tmp_path / "theirs", stored, per_shard)

    def shards(root: Path) -> dict[str, bytes]:
        return {p.name: p.read_bytes() for p in root.glob("c.*")}

    ours = open_stack_group(layout, temporary)["0"]
    assert ours.shards == theirs.shards
    assert len(shards(Path(temporary) / "0")) == -(-len(frames) // per_shard)
    assert shards(Path(temporary) / "0") == shards(tmp_path / "theirs")
    assert np.array_equal(ours[:], stored)
    assert np.array_equal(
        encode.decode(chunks[0], frames.dtype, (1, *decoded_shape[1:]))[0], frames[0]
    )


@pytest.mark.parametrize("kind", SHAPES)
def test_one_shard_file_holds_what_zarr_writes_for_it(tmp_path: Path, kind: str) -> None:
    """With the stacks' own sharding, the assembled shard equals zarr's, byte for byte."""
    rng = np.random.default_rng(3)
    frames = rng.integers(0, 4000, SHAPES[kind]).astype("uint16")
    frames[2] = 0
    stored = np.moveaxis(frames, -1, 0) if frames.ndim == 4 else frames
    per_shard = frames_per_shard(stored.shape, stored.dtype)
    assert per_shard == len(frames)  # a small stack is one shard
    encode = ChunkEncoder()
    data = shard_bytes([encode(frames[f : f + 1]) for f in range(len(frames))])
    _write_with_zarr(tmp_path / "theirs", stored, per_shard)
    (theirs,) = (tmp_path / "theirs").glob("c.*")
    assert data == theirs.read_bytes()


def test_an_all_zero_shard_is_not_written() -> None:
    assert shard_bytes([None, None]) is None


@pytest.mark.parametrize(
    ("shape", "dtype", "per_chunk", "expected"),
    [
        ((400, 512, 512), "int16", 1, 128),  # 64 MiB of 512 KiB frames
        ((400, 512, 512), "int16", 3, 126),  # a multiple of the chunk
        ((10, 64, 64), "int16", 1, 10),  # never more than the stack
        ((10, 64, 64), "int16", 4, 12),  # ...rounded up to whole chunks
        ((1, 9000, 9000), "uint16", 1, 1),  # a frame larger than the target: one a shard
        ((3, 400, 512, 512), "uint8", 1, 85),  # colour: the frame holds every channel
    ],
)
def test_frames_per_shard(
    shape: tuple[int, ...], dtype: str, per_chunk: int, expected: int
) -> None:
    assert frames_per_shard(shape, np.dtype(dtype), per_chunk) == expected


def test_commit_moves_the_stack_into_place_atomically(tmp_path: Path) -> None:
    layout = LakeLayout(str(tmp_path / "lake"))
    location = StackLocation("1.2", "1.2.3", "stack-0")
    for value in (1, 2):  # a rerun replaces the previous stack
        temporary = create_temporary_stack(layout, location, shape=(2, 4, 4), dtype=np.dtype("u1"))
        encode = ChunkEncoder()
        frames = np.full((2, 4, 4), value, "u1")
        data = shard_bytes([encode(frames[:1]), encode(frames[1:])])
        assert data is not None
        ShardWriter(temporary, layout, frames.ndim)(0, data)
        commit_stack(
            temporary,
            layout,
            location,
            spacing=(1.0, 1.0, 1.0),
            affine=np.eye(4),
            attributes={"units": None},
            shape=(2, 4, 4),
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
def test_a_stack_is_known_as_committed_by_its_run_only(tmp_path: Path, where: str) -> None:
    """A task computed again after its commit finds the stack its run committed (local
    lakes; in a bucket a repeated write is harmless); another run starts afresh."""
    root = str(tmp_path / "lake") if where == "local" else f"memory://{tmp_path.name}/lake"
    layout = LakeLayout(root)
    location = StackLocation("1.2", "1.2.3", "stack-0")
    frames = np.arange(1, 3 * 16 + 1, dtype="u1").reshape(3, 4, 4)
    temporary = create_temporary_stack(
        layout, location, shape=frames.shape, dtype=frames.dtype, run_id="run-a"
    )
    encode = ChunkEncoder()
    data = shard_bytes([encode(frames[f : f + 1]) for f in range(3)])
    assert data is not None
    ShardWriter(temporary, layout, frames.ndim)(0, data)
    assert committed_array(layout, location, "run-a") is None  # not committed yet
    commit_stack(
        temporary,
        layout,
        location,
        spacing=(1.0, 1.0, 1.0),
        affine=np.eye(4),
        attributes={},
        shape=frames.shape,
        run_id="run-a",
    )
    committed = open_stack_group(layout, location.relative_path)
    assert committed.attrs["run_id"] == "run-a"
    assert np.array_equal(committed["0"][:], frames)
    if where == "local":
        assert committed_array(layout, location, "run-a") is not None
        assert committed_array(layout, location, "run-b") is None
        assert hidden_entries(tmp_path / "lake", location) == []
    other = create_temporary_stack(layout, location, shape=frames.shape, dtype=frames.dtype)
    assert not open_stack_group(layout, other)["0"][:].any()  # nothing of run-a's reused


def test_a_shard_written_in_pieces_is_the_shard_joined(tmp_path: Path) -> None:
    """writev may take part of what it is given: every byte still lands, in order."""
    from dicomflow.lake import shards

    rng = np.random.default_rng(5)
    chunks = [None if i % 7 == 3 else rng.bytes(int(rng.integers(1, 5000))) for i in range(1500)]
    parts = shards.shard_parts(chunks)
    assert parts is not None and len(parts) > shards.WRITEV_MAX  # several writev calls
    shards.write_parts(str(tmp_path / "shard"), parts)
    assert (tmp_path / "shard").read_bytes() == shards.shard_bytes(chunks)
