"""The ``render`` operator: windowed PNG/JPEG renders of each image, thumbnails by default.

An ordinary instance operator that asks for decoded pixels (each instance is decoded
once per run, whoever else asks: :mod:`dicomflow.operators.images`). It writes
``renders/<study>/<series>/<sop>[_<frame>].<ext>`` under the lake (the frame number
when the instance has several frames) and fills ``render_path`` on ``instances``
with the first file it wrote. The image work itself is :mod:`dicomflow.render`.

A presentation state (GSPS) named in the configuration is read once, on the client,
and applied to every image it references.
"""

from __future__ import annotations

import functools
from collections.abc import Mapping
from dataclasses import dataclass, field
from io import BytesIO
from typing import Any, ClassVar

import pyarrow as pa
import pydicom
from fsspec.core import url_to_fs
from pydicom.dataset import Dataset

from dicomflow.errors import ConfigError
from dicomflow.lake.layout import LakeLayout, safe_uid_component
from dicomflow.lake.writer import put_atomically
from dicomflow.operators.base import (
    FileOutput,
    OperatorKind,
    Outputs,
    RunSettings,
    map_records,
)
from dicomflow.operators.images import Image, image_of
from dicomflow.records import Batch, InstanceRecord
from dicomflow.render import RenderSettings, encode_image, references, render_instance
from dicomflow.schemas.spec import RenderOperator, parse_window

RENDERS_ROOT = "renders"
RENDER_PATH = pa.field("render_path", pa.string())
GSPS_CLASS = "1.2.840.10008.5.1.4.1.1.11.1"  # Grayscale Softcopy Presentation State Storage
EXTENSIONS = {"png": "png", "jpeg": "jpg"}


@dataclass(frozen=True)
class Render:
    """Render each image of a batch into the lake (see the module's docstring)."""

    lake: LakeLayout
    settings: RenderSettings = field(default_factory=RenderSettings)
    format: str = "png"
    presentation_states: tuple[bytes, ...] = field(default=(), repr=False)
    referenced: Mapping[str, tuple[int, ...]] = field(default_factory=dict, repr=False)

    name: ClassVar[str] = "render"
    kind: ClassVar[OperatorKind] = "instance"
    Config: ClassVar[type[RenderOperator]] = RenderOperator
    outputs: ClassVar[Outputs] = Outputs(
        columns=(RENDER_PATH,),
        files=(FileOutput(RENDERS_ROOT + "/{study}/{series}/{sop}[_{frame}].{ext}"),),
    )
    needs_pixels: ClassVar[bool] = True

    @classmethod
    def build(cls, config: RenderOperator, run: RunSettings) -> Render:
        settings = RenderSettings(
            window=parse_window(config.window),
            frames=config.frames,
            bits=config.bits,
            size=config.size,
            overlays=config.overlays,
            percentile=config.percentile,
        )
        states, referenced = read_presentation_states(
            config.presentation_states, run.source_storage_options
        )
        return cls(run.lake, settings, config.format, states, referenced)

    def __call__(self, batch: Batch) -> Batch:
        fs, root = self.lake.filesystem()
        return map_records(batch, self.name, lambda r: self._one(r, fs, root))

    def _one(self, record: InstanceRecord, fs: Any, root: str) -> InstanceRecord:
        image = image_of(record)
        if image is None:
            return record
        row = record.outputs["instances"]
        frames = render_instance(
            image.dataset, image.pixels, self.settings, self._presentation_state(image)
        )
        several = image.pixels.array.shape[0] > 1
        paths = []
        for frame in frames:
            relative = render_file(row, frame.frame if several else None, self.format)
            put_atomically(fs, f"{root}/{relative}", encode_image(frame, self.format))
            paths.append(relative)
        located = {**row, RENDER_PATH.name: paths[0] if paths else None}
        return record.with_output("instances", located)

    def _presentation_state(self, image: Image) -> Dataset | None:
        if not self.referenced:
            return None
        sop = str(image.dataset.get("SOPInstanceUID", ""))
        for index in self.referenced.get(sop, ()):
            state = _presentation_state(self.presentation_states[index])
            if references(state, image.dataset):
                return state
        return None


@functools.lru_cache(maxsize=32)
def _presentation_state(data: bytes) -> Dataset:
    """A GSPS parsed once per worker, however many images it references (only read)."""
    return pydicom.dcmread(BytesIO(data), force=True)


def render_file(row: Mapping[str, Any], frame: int | None, fmt: str) -> str:
    """Where one render goes, relative to the lake; every component from a DICOM value
    is checked (a value that is not a UID becomes a hash of it)."""
    parts = [
        safe_uid_component(str(row.get(key) or "unknown"))
        for key in ("StudyInstanceUID", "SeriesInstanceUID", "SOPInstanceUID")
    ]
    stem = parts[2] if frame is None else f"{parts[2]}_{frame}"
    return f"{RENDERS_ROOT}/{parts[0]}/{parts[1]}/{stem}.{EXTENSIONS[fmt]}"


def read_presentation_states(
    locations: list[str], storage_options: Mapping[str, Any]
) -> tuple[tuple[bytes, ...], dict[str, tuple[int, ...]]]:
    """The GSPS instances among ``locations`` (files or folders), as bytes, and for each
    referenced SOP Instance UID the presentation states that name it."""
    states: list[bytes] = []
    referenced: dict[str, list[int]] = {}
    for location in locations:
        try:
            fs, path = url_to_fs(location, **storage_options)
            files = sorted(fs.find(path)) if fs.isdir(path) else [path]
            if not files or not fs.exists(files[0]):
                raise FileNotFoundError(location)
            for name in files:
                data = fs.cat_file(name)
                uids = _referenced_images(data)
                if uids is None:
                    continue
                for uid in uids:
                    referenced.setdefault(uid, []).append(len(states))
                states.append(data)
        except OSError as exc:
            raise ConfigError(
                f"presentation states at {location!r} cannot be read ({type(exc).__name__})"
            ) from exc
    return tuple(states), {uid: tuple(found) for uid, found in referenced.items()}


def _referenced_images(data: bytes) -> list[str] | None:
    """The images a GSPS references; None when ``data`` is not a GSPS."""
    try:
        ds = pydicom.dcmread(BytesIO(data), force=True, stop_before_pixels=True)
    except Exception:  # not DICOM: not a presentation state
        return None
    if str(ds.get("SOPClassUID", "")) != GSPS_CLASS:
        return None
    return [
        str(image.ReferencedSOPInstanceUID)
        for series in ds.get("ReferencedSeriesSequence") or []
        for image in series.get("ReferencedImageSequence") or []
        if "ReferencedSOPInstanceUID" in image
    ]
