"""Write one stack as an OME-Zarr 0.5 image, atomically, under validated UID path components.

Layout: ``<lake>/pixels.zarr/<StudyInstanceUID>/<SeriesInstanceUID>/<stack>/`` is a
Zarr v3 group holding the OME ``multiscales`` metadata and one array ``0``
shaped (frames, rows, cols[, samples]), chunked per frame, compressed with
Blosc-LZ4. The group is built in a hidden temporary directory (workers may
fill disjoint frame ranges of it in parallel) and renamed into place, so
readers never see a half-written stack.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import shutil
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numcodecs
import numpy as np
import zarr
from zarr.codecs import BloscCodec

from dicomflow.errors import SinkError
from dicomflow.lake.layout import LakeLayout, safe_uid_component
from dicomflow.schemas.zarr_layout import ZARR_SCHEMA_VERSION, ome_multiscales

PIXELS_ROOT = "pixels.zarr"


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
    fs, root = layout.filesystem()
    if fs.protocol not in ("file", "local") and "file" not in fs.protocol:
        raise SinkError("pixel output currently needs a local lake directory")
    return Path(root)


def _ensure_groups(root: Path, location: StackLocation) -> None:
    """Make the study and series levels Zarr groups too, so the hierarchy is navigable."""
    path = root / PIXELS_ROOT
    for part in (
        None,
        safe_uid_component(location.study_uid),
        safe_uid_component(location.series_uid),
    ):
        if part is not None:
            path = path / part
        if not (path / "zarr.json").exists():
            # another worker may make it between our check and our call
            with contextlib.suppress(zarr.errors.ContainsGroupError):
                zarr.open_group(str(path), mode="a", zarr_format=3)


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
    :func:`commit_stack` renames it into place. With ``run_id`` the temporary's
    name is fixed for the run, so a plan recomputed after a worker died
    replaces its predecessor's half-written temporary instead of leaving it.
    """
    root = _local_root(layout)
    final = root / location.relative_path
    final.parent.mkdir(parents=True, exist_ok=True)
    _ensure_groups(root, location)
    token = hashlib.sha256(run_id.encode()).hexdigest()[:16] if run_id else uuid.uuid4().hex
    temporary = final.parent / f".{final.name}.{token}.tmp"
    try:
        group = zarr.open_group(str(temporary), mode="w", zarr_format=3)
        group.create_array(
            "0",
            shape=shape,
            chunks=(frames_per_chunk, *shape[1:]),
            dtype=dtype,
            compressors=[_compressor()],
            fill_value=0,
            dimension_names=["z", "y", "x", "c"][: len(shape)],
        )
    except OSError as exc:
        shutil.rmtree(temporary, ignore_errors=True)
        raise SinkError(f"cannot create a pixel stack ({type(exc).__name__})") from exc
    return str(temporary)


COMPRESSOR = {"cname": "lz4", "clevel": 5, "shuffle": "bitshuffle"}


def _compressor() -> BloscCodec:
    return BloscCodec(**COMPRESSOR)  # type: ignore[arg-type]


class FrameWriter:
    """Write whole frames of a stack being built, one Zarr chunk per frame.

    With one frame per chunk, each frame is Blosc-encoded and written straight
    to its chunk file: the same bytes zarr itself writes (a test checks this),
    without zarr's per-chunk overhead, which dominated the write time. Frames
    that are all zero are skipped, as zarr skips chunks equal to the fill
    value. Other chunkings go through zarr's own API.
    """

    def __init__(self, temporary: str) -> None:
        self.array = open_temporary_array(temporary)
        self.direct = self.array.chunks[0] == 1
        self.root = Path(temporary) / "0" / "c"
        self.tail = "/".join("0" for _ in self.array.shape[1:])
        self.codec = numcodecs.Blosc(
            cname=COMPRESSOR["cname"],
            clevel=COMPRESSOR["clevel"],
            shuffle=numcodecs.Blosc.BITSHUFFLE,
        )

    def write(self, start: int, frames: np.ndarray) -> None:
        frames = frames.astype(self.array.dtype, copy=False)
        if not self.direct:
            self.array[start : start + len(frames)] = frames
            return
        for offset, frame in enumerate(frames):
            if not frame.any():
                continue
            chunk = self.root / str(start + offset) / self.tail
            chunk.parent.mkdir(parents=True, exist_ok=True)
            chunk.write_bytes(self.codec.encode(np.ascontiguousarray(frame)))


def open_temporary_array(temporary: str) -> zarr.Array:
    """The array of a stack being written (from any worker on the same filesystem)."""
    array = zarr.open_array(str(Path(temporary) / "0"), mode="r+")
    return array


def commit_stack(
    temporary: str,
    layout: LakeLayout,
    location: StackLocation,
    *,
    spacing: tuple[float, float, float],
    affine: np.ndarray,
    attributes: dict[str, Any],
) -> None:
    """Write the stack's attributes and rename it into place, replacing any previous one.

    Safe to repeat: a retried commit (say the ledger commit after it failed) finds
    its temporary gone and the final stack stamped with that temporary's name,
    and does nothing.
    """
    root = _local_root(layout)
    final = root / location.relative_path
    staged = Path(temporary)
    if not staged.exists() and final.exists():
        shape = tuple(zarr.open_array(str(final / "0"), mode="r").shape)
        if _stored_attributes(final) == _json(
            _stack_attributes(attributes, spacing, affine, shape)
        ):
            return  # this very stack was committed already (a retried commit)
    try:
        group = zarr.open_group(str(staged), mode="r+")
        shape = open_temporary_array(temporary).shape
        group.attrs.update(_stack_attributes(attributes, spacing, affine, shape))
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


def _json(value: Any) -> Any:
    """``value`` as it reads back from zarr.json (tuples become lists, and so on)."""
    return json.loads(json.dumps(value, default=str))


def _stored_attributes(final: Path) -> Any:
    try:
        return _json(dict(zarr.open_group(str(final), mode="r").attrs))
    except (OSError, zarr.errors.GroupNotFoundError):
        return None


def discard_stack(temporary: str) -> None:
    shutil.rmtree(temporary, ignore_errors=True)
