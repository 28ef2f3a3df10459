"""Commit one Parquet part atomically: temporary file + rename, or one object put."""

from __future__ import annotations

import logging
import uuid
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq
from fsspec.core import url_to_fs
from fsspec.implementations.local import LocalFileSystem

from dicomflow.errors import SinkError
from dicomflow.lake.layout import LakeLayout

logger = logging.getLogger(__name__)

COMPRESSION = "zstd"


def write_part(layout: LakeLayout, table_name: str, part_name: str, table: pa.Table) -> str:
    """Write ``table`` as ``<lake>/<table_name>/<part_name>.parquet`` and return its path.

    On a local filesystem the part is written to a hidden temporary file and
    renamed into place, so readers never see a partial part. On object stores a
    single put is already atomic. Re-writing the same part replaces it.
    """
    fs, _ = layout.filesystem()
    directory = layout.table_dir(table_name)
    try:
        final = _write_atomically(fs, directory, part_name, table)
    except OSError as exc:
        raise SinkError(
            f"cannot write {table_name} part {part_name}: {type(exc).__name__}"
        ) from exc
    logger.debug("committed %s part %s (%d rows)", table_name, part_name, table.num_rows)
    return final


def write_table_file(
    url: str, table: pa.Table, storage_options: dict[str, Any] | None = None
) -> str:
    """Write ``table`` to the Parquet file ``url`` (any fsspec URL), atomically."""
    fs, path = url_to_fs(url, **(storage_options or {}))
    directory, _, filename = path.rpartition("/")
    try:
        return _write_atomically(fs, directory, filename.removesuffix(".parquet"), table)
    except OSError as exc:
        raise SinkError(f"cannot write a Parquet file: {type(exc).__name__}") from exc


def _write_atomically(fs: Any, directory: str, part_name: str, table: pa.Table) -> str:
    final = f"{directory}/{part_name}.parquet"
    buffer = pa.BufferOutputStream()
    pq.write_table(table, buffer, compression=COMPRESSION)
    put_atomically(fs, final, buffer.getvalue().to_pybytes())
    return final


def put_atomically(fs: Any, path: str, data: bytes) -> None:
    """Make ``path`` hold ``data``, all or nothing: locally a hidden temporary file
    renamed into place (the next run sweeps a leftover ``.tmp``); elsewhere one put of
    the complete buffer, which never leaves a partial object."""
    directory, _, name = path.rpartition("/")
    fs.makedirs(directory, exist_ok=True)
    if not isinstance(fs, LocalFileSystem):
        fs.pipe_file(path, data)
        return
    temporary = f"{directory}/.{name}.{uuid.uuid4().hex}.tmp"
    try:
        fs.pipe_file(temporary, data)
        fs.mv(temporary, path)
    finally:
        if fs.exists(temporary):
            fs.rm(temporary)
