"""The stacks' metadata documents, written without zarr, are the documents zarr writes
itself (its ``create_array`` and ``attrs.put``), and stacks built with them read back
through zarr as written."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import zarr
from zarr.codecs import BloscCodec

from dicomflow.lake.layout import LakeLayout
from dicomflow.lake.shards import shard_bytes
from dicomflow.lake.zarr_documents import chunk_key, group_document, sharded_array_document
from dicomflow.lake.zarr_store import (
    COMPRESSOR,
    ChunkEncoder,
    ShardWriter,
    StackLocation,
    commit_stack,
    create_temporary_stack,
    dimension_names,
)

DTYPES = [
    "uint8",
    "int8",
    "uint16",
    "int16",
    "uint32",
    "int32",
    "int64",
    "float32",
    "float64",
    "bool",
]
SHAPES = [((7, 16, 12), (1, 16, 12), (4, 16, 12)), ((3, 5, 8, 6), (3, 1, 8, 6), (3, 2, 8, 6))]


def _zarr_documents(tmp_path: Path, shape: tuple, chunks: tuple, shards: tuple, dtype: str) -> dict:
    group = zarr.open_group(str(tmp_path / "by-zarr"), mode="w", zarr_format=3)
    group.create_array(
        "0",
        shape=shape,
        chunks=chunks,
        shards=shards,
        dtype=dtype,
        compressors=[BloscCodec(**COMPRESSOR)],
        fill_value=0,
        chunk_key_encoding={"name": "default", "separator": "."},
        dimension_names=dimension_names(len(shape)),
    )
    return json.loads((tmp_path / "by-zarr" / "0" / "zarr.json").read_text())


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize(("shape", "chunks", "shards"), SHAPES, ids=["grayscale", "colour"])
def test_array_document_is_zarrs(
    tmp_path: Path, dtype: str, shape: tuple, chunks: tuple, shards: tuple
) -> None:
    ours = sharded_array_document(
        shape=shape,
        dtype=np.dtype(dtype),
        chunks=chunks,
        shards=shards,
        dimension_names=dimension_names(len(shape)),
        blosc=COMPRESSOR,
    )
    assert ours is not None
    assert json.loads(ours) == _zarr_documents(tmp_path, shape, chunks, shards, dtype)


def test_group_document_is_zarrs(tmp_path: Path) -> None:
    attributes = {"run_id": "r", "affine": [[1.0, 0.0], [0.5, float("nan")]], "ome": {"a": [1]}}
    group = zarr.open_group(str(tmp_path / "g"), mode="w", zarr_format=3)
    group.attrs.put(attributes)
    written = (tmp_path / "g" / "zarr.json").read_bytes()
    assert group_document(attributes) == written  # byte for byte: NaN as zarr writes it
    empty = zarr.open_group(str(tmp_path / "e"), mode="w", zarr_format=3)
    assert json.loads(group_document()) == json.loads((tmp_path / "e" / "zarr.json").read_text())
    assert dict(empty.attrs) == {}


def test_a_dtype_it_does_not_describe_is_left_to_zarr() -> None:
    for dtype in (np.dtype("complex64"), np.dtype(">i2"), np.dtype("S4")):
        document = sharded_array_document(
            shape=(1, 2, 2),
            dtype=dtype,
            chunks=(1, 2, 2),
            shards=(1, 2, 2),
            dimension_names=["z", "y", "x"],
            blosc=COMPRESSOR,
        )
        assert document is None


@pytest.mark.parametrize("dtype", ["uint8", "int16", "float64"])
def test_a_stack_written_without_zarr_reads_back_through_zarr(tmp_path: Path, dtype: str) -> None:
    layout = LakeLayout(str(tmp_path / "lake"))
    location = StackLocation("1.2.3", "1.2.3.4", "stack")
    frames = (np.random.default_rng(1).random((9, 8, 6)) * 100).astype(dtype)
    frames[4] = 0  # an empty frame: no chunk, zarr's fill value
    temporary = create_temporary_stack(
        layout, location, shape=frames.shape, dtype=frames.dtype, run_id="run-1"
    )
    encode = ChunkEncoder()
    chunks = [encode(frames[i : i + 1]) for i in range(len(frames))]
    write = ShardWriter(temporary, layout, frames.ndim)
    per_shard = json.loads((Path(temporary) / "0" / "zarr.json").read_text())["chunk_grid"]
    per_shard = per_shard["configuration"]["chunk_shape"][0]
    for number, first in enumerate(range(0, len(chunks), per_shard)):
        part = chunks[first : first + per_shard]
        data = shard_bytes(part + [None] * (per_shard - len(part)))
        if data is not None:
            write(number, data)
    commit_stack(
        temporary,
        layout,
        location,
        spacing=(1.0, 0.5, 0.5),
        affine=np.eye(4),
        attributes={"units": None},
        shape=frames.shape,
        run_id="run-1",
    )
    group = zarr.open_group(str(tmp_path / "lake" / location.relative_path), mode="r")
    np.testing.assert_array_equal(group["0"][:], frames)
    assert group.attrs["run_id"] == "run-1" and "ome" in group.attrs
    assert (Path(tmp_path / "lake" / location.relative_path / "0") / chunk_key((0, 0, 0))).exists()
