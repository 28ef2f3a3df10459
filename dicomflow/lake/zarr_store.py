"""Write one stack as an OME-Zarr 0.5 image, atomically, under validated UID path components.

Layout: ``<lake>/pixels.zarr/<StudyInstanceUID>/<SeriesInstanceUID>/<stack>/`` is a
Zarr v3 group holding the OME ``multiscales`` metadata and one array ``0``
shaped (frames, rows, cols[, samples]), chunked per frame, compressed with
Blosc-LZ4. The group is built in a hidden temporary directory and renamed into
place, so readers never see a half-written stack.
"""

from __future__ import annotations

import shutil
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

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
            zarr.open_group(str(path), mode="a", zarr_format=3)


@contextmanager
def stack_writer(
    layout: LakeLayout,
    location: StackLocation,
    *,
    shape: tuple[int, ...],
    dtype: np.dtype,
    spacing: tuple[float, float, float],
    affine: np.ndarray,
    attributes: dict[str, Any],
    frames_per_chunk: int = 1,
) -> Iterator[zarr.Array]:
    """Yield the array to fill; on success the stack replaces any previous one atomically."""
    root = _local_root(layout)
    final = root / location.relative_path
    final.parent.mkdir(parents=True, exist_ok=True)
    _ensure_groups(root, location)
    temporary = final.parent / f".{final.name}.{uuid.uuid4().hex}.tmp"
    try:
        group = zarr.open_group(str(temporary), mode="w", zarr_format=3)
        chunks = (frames_per_chunk, *shape[1:])
        array = group.create_array(
            "0",
            shape=shape,
            chunks=chunks,
            dtype=dtype,
            compressors=[BloscCodec(cname="lz4", clevel=5, shuffle="bitshuffle")],
            fill_value=0,
            dimension_names=["z", "y", "x", "c"][: len(shape)],
        )
        yield array
        group.attrs.update(
            {
                **attributes,
                "affine": np.asarray(affine, float).tolist(),
                "schema_version": ZARR_SCHEMA_VERSION,
                "ome": ome_multiscales(spacing, affine, channels=len(shape) == 4),
            }
        )
        if final.exists():
            trash = final.parent / f".{final.name}.{uuid.uuid4().hex}.old"
            final.rename(trash)
            temporary.rename(final)
            shutil.rmtree(trash, ignore_errors=True)
        else:
            temporary.rename(final)
    except OSError as exc:
        raise SinkError(f"cannot write a pixel stack ({type(exc).__name__})") from exc
    finally:
        if temporary.exists():
            shutil.rmtree(temporary, ignore_errors=True)
