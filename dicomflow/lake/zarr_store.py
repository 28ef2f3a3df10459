"""Write one stack as an OME-Zarr 0.5 image, atomically, under validated UID path components.

Layout: ``<lake>/pixels.zarr/<StudyInstanceUID>/<SeriesInstanceUID>/<stack>/`` is a
Zarr v3 group holding the OME ``multiscales`` metadata and one array ``0``
shaped (frames, rows, cols[, samples]), chunked per frame, compressed with
Blosc-LZ4. In a local lake the group is built in a hidden temporary directory
(workers may fill disjoint frame ranges of it in parallel) and renamed into
place, so readers never see a half-written stack.

Object stores (``s3://``, ``gs://``, ``az://``, ``memory://``) have no rename. There
a stack is written straight to its final prefix, after any previous version is
deleted, and its attributes (affine, UIDs, OME metadata) are written last, by the
commit; the ledger entry that follows is what makes it part of the lake. A stack
being replaced is therefore briefly absent from a bucket lake, never mixed.
"""

from __future__ import annotations

import hashlib
import shutil
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numcodecs
import numpy as np
import zarr
from zarr.codecs import BloscCodec
from zarr.core.buffer import default_buffer_prototype
from zarr.core.group import GroupMetadata
from zarr.core.metadata import ArrayV3Metadata

from dicomflow.errors import SinkError
from dicomflow.lake.layout import PIXELS_ROOT, LakeLayout, safe_uid_component
from dicomflow.lake.writer import put_atomically
from dicomflow.schemas.zarr_layout import ZARR_SCHEMA_VERSION, ome_multiscales

# An empty Zarr v3 group, as zarr writes it (the study and series levels): written
# directly, it costs a file write instead of two calls into zarr's event loop.
GROUP_DOCUMENT = (
    GroupMetadata(zarr_format=3).to_buffer_dict(default_buffer_prototype())["zarr.json"].to_bytes()
)


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
    fs, root = layout.filesystem()
    return str(fs.unstrip_protocol(f"{root}/{relative}"))


def open_stack_group(layout: LakeLayout, location: str, mode: Any = "r") -> zarr.Group:
    """The Zarr group at ``location``: a path under the lake root, or the absolute path
    or URL :func:`create_temporary_stack` returned."""
    if layout.is_local():
        return zarr.open_group(str(_local_path(layout, location)), mode=mode, zarr_format=3)
    url = location if "://" in location else _url(layout, location)
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
            put_atomically(fs, document, GROUP_DOCUMENT)


def stack_temporary(layout: LakeLayout, location: StackLocation, run_id: str | None) -> str:
    """Where a stack is built: in a local lake a hidden directory beside its place, named
    for the run (random without one); in a bucket its place itself."""
    if not layout.is_local():  # no rename: written in place, the previous version removed first
        return _url(layout, location.relative_path)
    final = _local_root(layout) / location.relative_path
    token = hashlib.sha256(run_id.encode()).hexdigest()[:16] if run_id else uuid.uuid4().hex
    return str(final.parent / f".{final.name}.{token}.tmp")


def create_temporary_stack(
    layout: LakeLayout,
    location: StackLocation,
    *,
    shape: tuple[int, ...],
    dtype: np.dtype,
    frames_per_chunk: int = 1,
    run_id: str | None = None,
) -> str:
    """Create the stack's group and empty array in a hidden temporary directory; return it.

    Workers fill the array (disjoint frame ranges, one chunk per frame), then
    :func:`commit_stack` renames it into place. With ``run_id`` the stack is
    stamped with the run (attribute ``run_id``, kept by the commit): a plan
    recomputed after its worker died (while the decode-and-write shares of the
    first attempt finished, still run, or even after the commit) finds its own
    stack and keeps the frames written into it. Anything else at the place, such
    as a killed earlier run's temporary or, in a bucket, the previous version
    committed by another run, is replaced.
    """
    _ensure_groups(layout, location)
    temporary = stack_temporary(layout, location, run_id)
    chunks = (frames_per_chunk, *shape[1:])
    if run_id is not None and _building(temporary, layout, run_id, shape, chunks, dtype):
        return temporary
    if not layout.is_local():
        discard_stack(temporary, layout)
    try:
        group = open_stack_group(layout, temporary, mode="w")
        group.create_array(
            "0",
            shape=shape,
            chunks=chunks,
            dtype=dtype,
            compressors=[_compressor()],
            fill_value=0,
            # "c.7.0.0", not "c/7/0/0": one file per chunk and no directories, whose
            # creation cost more than encoding the frame (two mkdirs per chunk)
            chunk_key_encoding={"name": "default", "separator": "."},
            dimension_names=["z", "y", "x", "c"][: len(shape)],
        )
        if run_id is not None:
            group.attrs.put({RUN_ID: run_id})
    except OSError as exc:
        discard_stack(temporary, layout)
        raise SinkError(f"cannot create a pixel stack ({type(exc).__name__})") from exc
    return temporary


RUN_ID = "run_id"  # attribute: the run that wrote the stack (and is writing it, before commit)


def _building(
    location: str,
    layout: LakeLayout,
    run_id: str,
    shape: tuple[int, ...],
    chunks: tuple[int, ...],
    dtype: np.dtype,
) -> bool:
    """Whether ``location`` holds the stack this run is building, with this very array."""
    array = _array_of_run(layout, location, run_id)
    return (
        array is not None
        and tuple(array.shape) == tuple(shape)
        and tuple(array.chunks) == chunks
        and array.dtype == np.dtype(dtype)
    )


def _array_of_run(layout: LakeLayout, location: str, run_id: str) -> zarr.Array | None:
    """Array ``0`` of the stack group at ``location`` (as :func:`open_stack_group` takes
    it) if run ``run_id`` stamped the group, else None."""
    if layout.is_local() and not (_local_path(layout, location) / "zarr.json").exists():
        return None  # nothing there (the usual case): no need to ask zarr
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
    return BloscCodec(**COMPRESSOR)  # type: ignore[arg-type]


class ChunkEncoder:
    """One frame as the bytes of its Zarr chunk (the stacks' Blosc codec), or None for an
    all-zero frame, which zarr leaves unwritten (the fill value)."""

    def __init__(self) -> None:
        self.codec = numcodecs.Blosc(
            cname=COMPRESSOR["cname"],
            clevel=COMPRESSOR["clevel"],
            shuffle=numcodecs.Blosc.BITSHUFFLE,
        )

    def __call__(self, frame: np.ndarray) -> bytes | None:
        if not frame.any():
            return None
        data: bytes = self.codec.encode(np.ascontiguousarray(frame))
        return data


class FrameWriter:
    """Write whole frames of a stack being built, one Zarr chunk per frame.

    With one frame per chunk, each frame is Blosc-encoded and written straight
    to its chunk file: the same bytes zarr itself writes (a test checks this),
    without zarr's per-chunk overhead, which dominated the write time. Frames
    that are all zero are skipped, as zarr skips chunks equal to the fill
    value. Other chunkings go through zarr's own API.
    """

    def __init__(self, temporary: str, layout: LakeLayout) -> None:
        self.array = open_temporary_array(temporary, layout)
        self.direct = self.array.chunks[0] == 1
        self.fs = None if layout.is_local() else layout.filesystem()[0]
        self.root = f"{temporary}/0"
        metadata = self.array.metadata
        assert isinstance(metadata, ArrayV3Metadata)  # stacks are always Zarr v3
        self.keys = metadata.chunk_key_encoding
        self.folders: set[Path] = set()  # chunk folders known to exist
        self.encode = ChunkEncoder()

    def place(self, frame: int, chunk: Path) -> None:
        """Move ``chunk``, a file already encoded as this stack's chunks are (same codec,
        same dtype), into ``frame``'s place (local stacks, one frame per chunk). A chunk
        already in place and its source gone (a plan computed again) counts as placed."""
        if self.fs is not None or not self.direct:
            raise SinkError("pre-encoded chunks are placed only in local one-frame chunks")
        position = (frame, *(0 for _ in self.array.shape[1:]))
        target = Path(f"{self.root}/{self.keys.encode_chunk_key(position)}")
        try:
            chunk.replace(target)
        except FileNotFoundError:
            if not target.exists():
                raise

    def write(self, start: int, frames: np.ndarray) -> None:
        frames = frames.astype(self.array.dtype, copy=False)
        if not self.direct:
            self.array[start : start + len(frames)] = frames
            return
        for offset, frame in enumerate(frames):
            data = self.encode(frame)
            if data is None:
                continue
            position = (start + offset, *(0 for _ in self.array.shape[1:]))
            key = f"{self.root}/{self.keys.encode_chunk_key(position)}"
            if self.fs is not None:
                self.fs.pipe_file(key, data)
                continue
            chunk = Path(key)
            if chunk.parent not in self.folders:
                chunk.parent.mkdir(parents=True, exist_ok=True)
                self.folders.add(chunk.parent)
            chunk.write_bytes(data)


def open_temporary_array(temporary: str, layout: LakeLayout) -> zarr.Array:
    """The array of a stack being written (from any worker that sees the lake)."""
    array = open_stack_group(layout, temporary, mode="r+")["0"]
    assert isinstance(array, zarr.Array)
    return array


def commit_stack(
    temporary: str,
    layout: LakeLayout,
    location: StackLocation,
    *,
    spacing: tuple[float, float, float],
    affine: np.ndarray,
    attributes: dict[str, Any],
    run_id: str | None = None,
    shape: tuple[int, ...] | None = None,
) -> None:
    """Write the stack's attributes and rename it into place, replacing any previous one
    (``shape``, when the caller knows it, spares reopening the array for it).

    Safe to repeat within a run: a retried commit (say the ledger commit after it
    failed, or the whole series task after its worker died) finds the final stack
    stamped with ``run_id`` and only removes what a recomputed plan started again.
    """
    stamp = {RUN_ID: run_id} if run_id is not None else {}
    if not layout.is_local():  # written in place: the attributes are the commit
        try:
            group = open_stack_group(layout, temporary, mode="r+")
            shape = shape or open_temporary_array(temporary, layout).shape
            group.attrs.put(_stack_attributes({**attributes, **stamp}, spacing, affine, shape))
        except (OSError, zarr.errors.GroupNotFoundError) as exc:
            raise SinkError(f"cannot commit a pixel stack ({type(exc).__name__})") from exc
        return
    final = _local_root(layout) / location.relative_path
    staged = Path(temporary)
    if committed_array(layout, location, run_id) is not None:
        shutil.rmtree(staged, ignore_errors=True)  # this run committed the stack already
        return
    try:
        group = zarr.open_group(str(staged), mode="r+")
        shape = shape or open_temporary_array(temporary, layout).shape
        group.attrs.put(_stack_attributes({**attributes, **stamp}, spacing, affine, shape))
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
    attributes: dict[str, Any],
    spacing: tuple[float, float, float],
    affine: np.ndarray,
    shape: tuple[int, ...],
) -> dict[str, Any]:
    return {
        **attributes,
        "affine": np.asarray(affine, float).tolist(),
        "schema_version": ZARR_SCHEMA_VERSION,
        "ome": ome_multiscales(spacing, affine, channels=len(shape) == 4),
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
