"""Write one stack as an OME-Zarr 0.5 image, atomically, under validated UID path components.

Layout: ``<lake>/pixels.zarr/<StudyInstanceUID>/<SeriesInstanceUID>/<stack>/`` is a
Zarr v3 group holding the OME ``multiscales`` metadata and the array ``0`` shaped
(z, y, x), or (c, z, y, x) for colour, compressed with Blosc-LZ4 (large 2-D images
add pyramid levels ``1``, ``2``…). The array is sharded along z: each frame is its
own inner chunk, and a shard of many frames is one file or object, written whole
by one task (:class:`ShardWriter`, :mod:`dicomflow.lake.shards`). In a local lake
the group is built in a hidden temporary directory and renamed into place, so
readers never see a half-written stack.

Object stores (``s3://``, ``gs://``, ``az://``, ``memory://``) have no rename. There
a stack is written straight to its final prefix, after any previous version is
deleted, and its attributes (affine, UIDs, OME metadata) are written last, by the
commit; the ledger entry that follows is what makes it part of the lake. A stack
being replaced is therefore briefly absent from a bucket lake, never mixed.
"""

from __future__ import annotations

import hashlib
import math
import shutil
import uuid
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from dicomflow.errors import SinkError
from dicomflow.lake.layout import PIXELS_ROOT, LakeLayout, safe_uid_component
from dicomflow.lake.loop_finalizers import close_filesystems_before_loops_stop
from dicomflow.lake.shards import Chunk, write_parts
from dicomflow.lake.writer import put_atomically
from dicomflow.lake.zarr_documents import (
    KEY_SEPARATOR,
    chunk_key,
    group_document,
    sharded_array_document,
)
from dicomflow.schemas.zarr_layout import ZARR_SCHEMA_VERSION, ome_multiscales

if TYPE_CHECKING:  # zarr is imported where it is used: a run without pixels never needs it
    import zarr
    from zarr.codecs import BloscCodec


@dataclass(frozen=True)
class StackLocation:
    """Where a stack lives, relative to the lake root, built only from validated components."""

    study_uid: str
    series_uid: str
    stack: str

    @property
    def relative_path(self) -> str:
        return "/".join(
            (
                PIXELS_ROOT,
                safe_uid_component(self.study_uid),
                safe_uid_component(self.series_uid),
                self.stack,
            )
        )


def _local_root(layout: LakeLayout) -> Path:
    _, root = layout.filesystem()
    return Path(root)


def _local_path(layout: LakeLayout, location: str) -> Path:
    """A stack's ``location`` in a local lake (relative to the root, or absolute)."""
    return Path(location) if location.startswith("/") else _local_root(layout) / location


def _url(layout: LakeLayout, relative: str) -> str:
    """The fsspec URL of ``relative`` (a path under the lake root)."""
    _, root = layout.filesystem()
    return layout.url(f"{root}/{relative}")


def open_stack_group(layout: LakeLayout, location: str, mode: Any = "r") -> zarr.Group:
    """The Zarr group at ``location``: a path under the lake root, or the absolute path
    or URL :func:`create_temporary_stack` returned."""
    import zarr

    if layout.is_local():
        return zarr.open_group(str(_local_path(layout, location)), mode=mode, zarr_format=3)
    url = location if "://" in location else _url(layout, location)
    close_filesystems_before_loops_stop()
    return zarr.open_group(url, mode=mode, zarr_format=3, storage_options=layout.storage_options)


def _ensure_groups(layout: LakeLayout, location: StackLocation) -> None:
    """Make the study and series levels Zarr groups too, so the hierarchy is navigable."""
    fs, root = layout.filesystem()
    path = PIXELS_ROOT
    for part in (
        None,
        safe_uid_component(location.study_uid),
        safe_uid_component(location.series_uid),
    ):
        if part is not None:
            path = f"{path}/{part}"
        document = f"{root}/{path}/zarr.json"
        if not fs.exists(document):  # another worker may write the same bytes meanwhile
            put_atomically(fs, document, group_document())


def stack_temporary(layout: LakeLayout, location: StackLocation, run_id: str | None) -> str:
    """Where a stack is built: in a local lake a hidden directory beside its place, named
    for the run (random without one); in a bucket its place itself."""
    if not layout.is_local():  # no rename: written in place, the previous version removed first
        return _url(layout, location.relative_path)
    final = _local_root(layout) / location.relative_path
    token = hashlib.sha256(run_id.encode()).hexdigest()[:16] if run_id else uuid.uuid4().hex
    return str(final.parent / f".{final.name}.{token}.tmp")


def stack_shape(frames: int, frame_shape: Sequence[int]) -> tuple[int, ...]:
    """The array shape of ``frames`` frames shaped ``frame_shape`` as decoded ((rows, cols)
    or (rows, cols, samples)): channels first, as OME-Zarr 0.5 orders its axes."""
    if len(frame_shape) == 3:
        return (frame_shape[2], frames, frame_shape[0], frame_shape[1])
    return (frames, *frame_shape)


def decoded_frame_shape(shape: Sequence[int]) -> tuple[int, ...]:
    """The shape of one frame as decoded ((rows, cols[, samples])) of a stack shaped
    ``shape``: the inverse of :func:`stack_shape`."""
    return tuple(shape[1:]) if len(shape) == 3 else (shape[2], shape[3], shape[0])


def frame_axis(ndim: int) -> int:
    """The axis of a stack's array that counts frames (z): after the channels, if any."""
    return ndim - 3


def dimension_names(ndim: int) -> list[str]:
    return ["c", "z", "y", "x"][4 - ndim :]


SHARD_BYTES = 64 << 20  # a shard holds about this much decoded data (at least a chunk)


def frames_per_shard(shape: Sequence[int], dtype: np.dtype, frames_per_chunk: int = 1) -> int:
    """How many frames (z) a shard of a stack shaped ``shape`` holds: a multiple of the
    chunk, about :data:`SHARD_BYTES` of decoded data, never more than the stack."""
    axis = frame_axis(len(shape))
    frame_bytes = int(np.prod([n for i, n in enumerate(shape) if i != axis])) * dtype.itemsize
    chunks = max(1, SHARD_BYTES // max(1, frame_bytes * frames_per_chunk))
    frames = shape[axis]
    return min(chunks * frames_per_chunk, math.ceil(frames / frames_per_chunk) * frames_per_chunk)


def create_temporary_stack(
    layout: LakeLayout,
    location: StackLocation,
    *,
    shape: tuple[int, ...],
    dtype: np.dtype,
    frames_per_chunk: int = 1,
    run_id: str | None = None,
) -> str:
    """Create the stack's group and empty array where it is built (see
    :func:`stack_temporary`), replacing whatever is there; return that place.

    The array is sharded along z (:func:`frames_per_shard`), each inner chunk
    ``frames_per_chunk`` frames: one shard is one file or object, and reading a frame
    reads its chunk only. With ``run_id`` the stack is stamped with the run
    (attribute ``run_id``, kept by the commit), so that a task computed again after
    its commit finds the stack its run committed (:func:`committed_array`).
    """
    _ensure_groups(layout, location)
    temporary = stack_temporary(layout, location, run_id)
    axis = frame_axis(len(shape))
    chunks = tuple(frames_per_chunk if i == axis else n for i, n in enumerate(shape))
    shards = tuple(
        frames_per_shard(shape, dtype, frames_per_chunk) if i == axis else n
        for i, n in enumerate(shape)
    )
    discard_stack(temporary, layout)  # a killed attempt's leftovers, or the previous version
    document = sharded_array_document(
        shape=shape,
        dtype=dtype,
        chunks=chunks,
        shards=shards,
        dimension_names=dimension_names(len(shape)),
        blosc=COMPRESSOR,
    )
    try:
        if document is not None:  # the group and its array, written without zarr
            _put(layout, f"{temporary}/zarr.json", group_document(_stamp(run_id)))
            _put(layout, f"{temporary}/0/zarr.json", document)
            return temporary
        group = open_stack_group(layout, temporary, mode="w")
        group.create_array(
            "0",
            shape=shape,
            chunks=chunks,
            shards=shards,
            dtype=dtype,
            compressors=[_compressor()],
            fill_value=0,
            chunk_key_encoding={"name": "default", "separator": KEY_SEPARATOR},
            dimension_names=dimension_names(len(shape)),
        )
        if run_id is not None:
            group.attrs.put({RUN_ID: run_id})
    except OSError as exc:
        discard_stack(temporary, layout)
        raise SinkError(f"cannot create a pixel stack ({type(exc).__name__})") from exc
    return temporary


RUN_ID = "run_id"  # attribute: the run that wrote the stack (and is writing it, before commit)


def _stamp(run_id: str | None) -> dict[str, str]:
    return {RUN_ID: run_id} if run_id is not None else {}


def _put(layout: LakeLayout, path: str, data: bytes) -> None:
    """Write ``data`` at ``path`` (a local path, or a URL in the lake's bucket)."""
    if layout.is_local():
        target = Path(path)
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_bytes(data)
    else:
        layout.filesystem()[0].pipe_file(path, data)


def _array_of_run(layout: LakeLayout, location: str, run_id: str) -> zarr.Array | None:
    """Array ``0`` of the stack group at ``location`` (as :func:`open_stack_group` takes
    it) if run ``run_id`` stamped the group, else None."""
    if layout.is_local() and not (_local_path(layout, location) / "zarr.json").exists():
        return None  # nothing there (the usual case): no need to ask zarr
    import zarr

    try:
        group = open_stack_group(layout, location, mode="r")
        if group.attrs.get(RUN_ID) != run_id:
            return None
        array = group["0"]
    except (OSError, KeyError, zarr.errors.BaseZarrError):
        return None
    return array if isinstance(array, zarr.Array) else None


COMPRESSOR = {"cname": "lz4", "clevel": 5, "shuffle": "bitshuffle"}


def _compressor() -> BloscCodec:
    from zarr.codecs import BloscCodec

    return BloscCodec(**COMPRESSOR)  # type: ignore[arg-type]


def as_chunk(frames: np.ndarray) -> np.ndarray:
    """Frames as decoded ((n, rows, cols[, samples])) in the stacks' axis order."""
    return np.moveaxis(frames, -1, 0) if frames.ndim == 4 else frames


class ChunkEncoder:
    """Frames as the bytes of their Zarr chunk (the stacks' Blosc codec, the same bytes
    zarr writes: a test checks), or None for all-zero frames, which zarr leaves
    unwritten (the fill value); and back."""

    def __init__(self) -> None:
        import numcodecs

        self.codec = numcodecs.Blosc(
            cname=COMPRESSOR["cname"],
            clevel=COMPRESSOR["clevel"],
            shuffle=numcodecs.Blosc.BITSHUFFLE,
        )

    def __call__(self, frames: np.ndarray) -> bytes | None:
        """``frames`` as decoded, (n, rows, cols[, samples]): one chunk's worth."""
        if not frames.any():
            return None
        data: bytes = self.codec.encode(np.ascontiguousarray(as_chunk(frames)))
        return data

    def decode(
        self, data: bytes | memoryview | None, dtype: np.dtype, shape: Sequence[int]
    ) -> np.ndarray:
        """The frames (as decoded, shaped ``shape``) that :meth:`__call__` encoded."""
        if data is None:
            return np.zeros(shape, dtype)
        chunk_shape = stack_shape(shape[0], shape[1:])
        chunk = np.frombuffer(self.codec.decode(data), dtype).reshape(chunk_shape)
        return np.moveaxis(chunk, 0, -1) if len(shape) == 4 else chunk


class ShardWriter:
    """Writes whole shards (:mod:`dicomflow.lake.shards`) of one stack being built: one
    file, or one PUT in a bucket, each."""

    def __init__(self, temporary: str, layout: LakeLayout, ndim: int) -> None:
        """``ndim``: the array's dimensions, as :func:`create_temporary_stack` made it
        (its shards keyed as :func:`dicomflow.lake.zarr_documents.chunk_key` keys them)."""
        self.ndim = ndim
        self.axis = frame_axis(ndim)
        self.root = f"{temporary}/0"
        self.fs = None if layout.is_local() else layout.filesystem()[0]

    def __call__(self, number: int, data: bytes | Sequence[Chunk]) -> None:
        """Write shard ``number`` (counted along z): its bytes, or the pieces that make
        them in order (:func:`dicomflow.lake.shards.shard_parts`)."""
        position = tuple(number if i == self.axis else 0 for i in range(self.ndim))
        key = f"{self.root}/{chunk_key(position)}"
        parts = [data] if isinstance(data, bytes) else data
        if self.fs is None:
            write_parts(key, parts)
        else:
            self.fs.pipe_file(key, parts[0] if len(parts) == 1 else b"".join(parts))


def write_level(temporary: str, layout: LakeLayout, level: int, data: np.ndarray) -> None:
    """Write pyramid level ``level`` (array ``"<level>"``, in the stacks' axis order) of
    the stack being built at ``temporary``: one chunk, small by construction."""
    group = open_stack_group(layout, temporary, mode="r+")
    array = group.create_array(
        str(level),
        shape=data.shape,
        chunks=data.shape,
        dtype=data.dtype,
        compressors=[_compressor()],
        fill_value=0,
        chunk_key_encoding={"name": "default", "separator": KEY_SEPARATOR},
        dimension_names=dimension_names(data.ndim),
    )
    array[...] = data


def commit_stack(
    temporary: str,
    layout: LakeLayout,
    location: StackLocation,
    *,
    spacing: tuple[float, float, float],
    affine: np.ndarray,
    attributes: dict[str, Any],
    shape: tuple[int, ...],
    run_id: str | None = None,
    levels: int = 1,
    units: Sequence[str | None] = ("millimeter",) * 3,
) -> None:
    """Write the stack's attributes (the OME metadata naming its ``levels`` and the
    ``units`` of its z, y and x axes, None for pixels) and rename it into place,
    replacing any previous one.

    Safe to repeat within a run: a retried commit (say the ledger commit after it
    failed, or the whole series task after its worker died) finds the final stack
    stamped with ``run_id`` and only removes what was started again.
    """
    ome = ome_multiscales(spacing, affine, channels=len(shape) == 4, levels=levels, units=units)
    document = group_document(_stack_attributes({**attributes, **_stamp(run_id)}, affine, ome))
    if not layout.is_local():  # written in place: the attributes are the commit
        try:
            fs = layout.filesystem()[0]
            if not fs.exists(f"{temporary}/0/zarr.json"):
                raise SinkError("cannot commit a pixel stack (its array is missing)")
            fs.pipe_file(f"{temporary}/zarr.json", document)
        except OSError as exc:
            raise SinkError(f"cannot commit a pixel stack ({type(exc).__name__})") from exc
        return
    final = _local_root(layout) / location.relative_path
    staged = Path(temporary)
    if committed_array(layout, location, run_id) is not None:
        shutil.rmtree(staged, ignore_errors=True)  # this run committed the stack already
        return
    try:
        if not (staged / "0" / "zarr.json").exists():
            raise SinkError("cannot commit a pixel stack (its array is missing)")
        (staged / "zarr.json").write_bytes(document)
        if final.exists():
            # ``.tmp`` at the end: the next run sweeps it if we die before the rmtree
            trash = final.parent / f".{final.name}.{uuid.uuid4().hex}.old.tmp"
            final.rename(trash)
            staged.rename(final)
            shutil.rmtree(trash, ignore_errors=True)
        else:
            staged.rename(final)
    except OSError as exc:
        raise SinkError(f"cannot commit a pixel stack ({type(exc).__name__})") from exc
    finally:
        if staged.exists():
            shutil.rmtree(staged, ignore_errors=True)


def _stack_attributes(
    attributes: dict[str, Any], affine: np.ndarray, ome: dict[str, Any]
) -> dict[str, Any]:
    return {
        **attributes,
        "affine": np.asarray(affine, float).tolist(),
        "schema_version": ZARR_SCHEMA_VERSION,
        "ome": ome,
    }


def committed_array(
    layout: LakeLayout, location: StackLocation, run_id: str | None
) -> zarr.Array | None:
    """The array of the stack at ``location`` if run ``run_id`` committed it, else None.
    Local lakes only: a bucket lake's stack is written in place, where the run's stamp
    marks it from its creation, and a repeated write there is harmless."""
    if not run_id or not layout.is_local():
        return None
    return _array_of_run(layout, location.relative_path, run_id)


def discard_stack(temporary: str, layout: LakeLayout) -> None:
    """Remove a stack being written (and, in a bucket lake, whatever was at its place)."""
    if layout.is_local():
        shutil.rmtree(temporary, ignore_errors=True)
        return
    fs, _ = layout.filesystem()
    path = fs._strip_protocol(temporary)
    if fs.exists(path):
        fs.rm(path, recursive=True)
