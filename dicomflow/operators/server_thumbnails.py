"""The ``server_thumbnails`` operator: thumbnails the DICOMweb server renders itself.

A header-only scan leaves pixels on the server; this operator asks the server for each
image's thumbnail (WADO-RS ``/rendered``, or ``/frames/<middle>/rendered`` for a
multi-frame image, with a ``viewport`` that keeps the image's aspect ratio and never
upscales) and writes it where the ``render`` operator would,
``renders/<study>/<series>/<sop>.<ext>``, filling ``render_path`` on ``instances``.
Only the thumbnail crosses the network. A server that ignores the viewport gets its
answer resized here; one that cannot render an image gives that image a
``not_rendered`` error row.

The instance URL is built from the row's UIDs under the source's own address, so a
token never goes to another host.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from io import BytesIO
from typing import Any, ClassVar

from PIL import Image

from dicomflow.connectors.dicomweb.address import (
    DicomwebAddress,
    DicomwebError,
    DicomwebOptions,
    open_client,
)
from dicomflow.connectors.dicomweb.frames import InstanceLocation
from dicomflow.errors import ConfigError, DicomflowError, ErrorCode
from dicomflow.lake.layout import LakeLayout
from dicomflow.lake.writer import put_atomically
from dicomflow.operators.base import FileOutput, OperatorKind, Outputs, RunSettings, map_records
from dicomflow.operators.render import RENDER_PATH, RENDERS_ROOT, render_file
from dicomflow.records import Batch, InstanceRecord
from dicomflow.schemas.spec import DicomwebPeerConfig, ServerThumbnailsOperator

MEDIA_TYPES = {"png": "image/png", "jpeg": "image/jpeg"}
PILLOW_FORMATS = {"png": "PNG", "jpeg": "JPEG"}
UID_KEYS = ("StudyInstanceUID", "SeriesInstanceUID", "SOPInstanceUID")


class NotRendered(DicomflowError):
    """The server did not render this image (refused, or answered with no image)."""

    code = ErrorCode.NOT_RENDERED


@dataclass(frozen=True)
class ServerThumbnails:
    """Fetch each image's thumbnail from the server into the lake (see the module)."""

    lake: LakeLayout
    address: DicomwebAddress
    options: DicomwebOptions
    size: int = 256
    format: str = "png"

    name: ClassVar[str] = "server_thumbnails"
    kind: ClassVar[OperatorKind] = "instance"
    Config: ClassVar[type[ServerThumbnailsOperator]] = ServerThumbnailsOperator
    outputs: ClassVar[Outputs] = Outputs(
        columns=(RENDER_PATH,),
        files=(FileOutput(RENDERS_ROOT + "/{study}/{series}/{sop}.{ext}"),),
    )
    needs_pixels: ClassVar[bool] = False

    @classmethod
    def build(cls, config: ServerThumbnailsOperator, run: RunSettings) -> ServerThumbnails:
        source = run.source
        if not isinstance(source, DicomwebPeerConfig):
            raise ConfigError("server_thumbnails asks a DICOMweb source: it needs one")
        address = DicomwebAddress.parse(source.url)
        return cls(run.lake, address, DicomwebOptions.from_peer(source), config.size, config.format)

    def __call__(self, batch: Batch) -> Batch:
        fs, root = self.lake.filesystem()
        if not any(_has_image(r.outputs.get("instances")) for r in batch.records):
            return batch
        client = open_client(self.address, self.options)
        return map_records(batch, self.name, lambda r: self._one(r, client, fs, root))

    def _one(self, record: InstanceRecord, client: Any, fs: Any, root: str) -> InstanceRecord:
        row = record.outputs.get("instances")
        if not _has_image(row):
            return record
        assert row is not None
        width, height = viewport(row, self.size)
        url = f"{self._instance_url(row)}{_frame_path(row)}/rendered?viewport={width},{height}"
        try:
            answer = client._http_get(url, headers={"Accept": MEDIA_TYPES[self.format]})
        except Exception as exc:
            raise NotRendered(str(DicomwebError.wrap("WADO-RS rendered", exc))) from None
        relative = render_file(row, None, self.format)
        put_atomically(fs, f"{root}/{relative}", self._fitted(answer.content, width, height))
        return record.with_output("instances", {**row, RENDER_PATH.name: relative})

    def _instance_url(self, row: Mapping[str, Any]) -> str:
        uids = [str(row.get(key) or "") for key in UID_KEYS]
        try:
            return InstanceLocation(self.address, *uids).url
        except ConfigError:
            raise NotRendered("the instance's UIDs are not valid UIDs") from None

    def _fitted(self, data: bytes, width: int, height: int) -> bytes:
        """The server's image as it came, or resized to the viewport when the server
        ignored it; an answer that is not an image is refused."""
        try:
            image = Image.open(BytesIO(data))
            image.load()
        except Exception:  # HTML, JSON, a truncated body
            raise NotRendered("WADO-RS rendered: the server's answer is not an image") from None
        if image.size == (width, height) and image.format == PILLOW_FORMATS[self.format]:
            return data
        fitted = image.convert("RGB" if image.mode not in ("L", "I;16", "RGB") else image.mode)
        out = BytesIO()
        fitted.resize((width, height), Image.Resampling.LANCZOS).save(
            out, PILLOW_FORMATS[self.format]
        )
        return out.getvalue()


def viewport(row: Mapping[str, Any], size: int) -> tuple[int, int]:
    """Width and height of the thumbnail: the image's aspect ratio, its longest side
    ``size`` at most (never upscaled)."""
    rows, columns = int(row.get("Rows") or 0), int(row.get("Columns") or 0)
    if rows < 1 or columns < 1:
        raise NotRendered("the instance has no image size")
    scale = min(1.0, size / max(rows, columns))
    return max(1, round(columns * scale)), max(1, round(rows * scale))


def _frame_path(row: Mapping[str, Any]) -> str:
    """``/frames/<middle>`` for a multi-frame image (the ``render`` operator's middle
    frame, numbered from 1 as WADO-RS numbers them), else nothing."""
    frames = int(row.get("NumberOfFrames") or 1)
    return f"/frames/{frames // 2 + 1}" if frames > 1 else ""


def _has_image(row: Mapping[str, Any] | None) -> bool:
    return bool(row) and bool(row.get("has_pixel_data")) and bool(row.get("Rows"))  # type: ignore[union-attr]
