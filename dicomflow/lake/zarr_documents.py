"""The Zarr v3 metadata documents of the pixel stacks, written without zarr.

A stack is a group (``zarr.json`` holding its attributes) with the sharded array
``0`` (its own ``zarr.json``). Writing those two documents through zarr costs its
import (0.25 s, a sixth of an 800-slice job run in the command's process) and two
trips through its event loop; their content is fixed by the Zarr v3 specification
and the sharding codec's, so they are written here as zarr writes them (the tests
compare each with the document zarr's own ``create_array`` and ``attrs.put`` write,
and read the stacks back with zarr). Arrays of other kinds (pyramid levels) are
still written by zarr.
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

KEY_SEPARATOR = "."  # chunk keys "c.7.0.0", not "c/7/0/0": no directory per shard


def group_document(attributes: Mapping[str, Any] | None = None) -> bytes:
    """A Zarr v3 group's ``zarr.json`` with ``attributes`` (plain JSON values)."""
    document = {"attributes": dict(attributes or {}), "zarr_format": 3, "node_type": "group"}
    return _dumps(document)


def sharded_array_document(
    *,
    shape: Sequence[int],
    dtype: np.dtype,
    chunks: Sequence[int],
    shards: Sequence[int],
    dimension_names: Sequence[str],
    blosc: Mapping[str, Any],
) -> bytes | None:
    """The ``zarr.json`` of an array of ``shape`` in shards of ``shards``, each inner
    chunk ``chunks`` compressed by Blosc with the ``blosc`` settings (cname, clevel,
    shuffle), fill value 0; None for a dtype this module does not describe."""
    dtype = np.dtype(dtype)
    if dtype.kind not in "biuf" or dtype.byteorder not in ("=", "<", "|"):
        return None
    one_byte = dtype.itemsize == 1
    bytes_codec: dict[str, Any] = (
        {"name": "bytes"} if one_byte else {"name": "bytes", "configuration": {"endian": "little"}}
    )
    blosc_codec = {
        "name": "blosc",
        "configuration": {
            "typesize": dtype.itemsize,
            "cname": blosc["cname"],
            "clevel": blosc["clevel"],
            "shuffle": blosc["shuffle"],
            "blocksize": 0,
        },
    }
    fill: bool | int | float = False if dtype.kind == "b" else 0.0 if dtype.kind == "f" else 0
    document = {
        "shape": list(shape),
        "data_type": dtype.name,
        "chunk_grid": {"name": "regular", "configuration": {"chunk_shape": list(shards)}},
        "chunk_key_encoding": {"name": "default", "configuration": {"separator": KEY_SEPARATOR}},
        "fill_value": fill,
        "codecs": [
            {
                "name": "sharding_indexed",
                "configuration": {
                    "chunk_shape": list(chunks),
                    "codecs": [bytes_codec, blosc_codec],
                    "index_codecs": [
                        {"name": "bytes", "configuration": {"endian": "little"}},
                        {"name": "crc32c"},
                    ],
                    "index_location": "end",
                },
            }
        ],
        "attributes": {},
        "dimension_names": list(dimension_names),
        "zarr_format": 3,
        "node_type": "array",
        "storage_transformers": [],
    }
    return _dumps(document)


def chunk_key(position: Sequence[int]) -> str:
    """The key of the shard (or chunk) at grid ``position``, as the documents above encode it."""
    return KEY_SEPARATOR.join(["c", *(str(int(i)) for i in position)])


def _dumps(document: Mapping[str, Any]) -> bytes:
    return json.dumps(document, indent=2, allow_nan=True).encode()
