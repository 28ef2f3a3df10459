"""Pictures of pixel stacks for notebooks: a series' middle slice and a contact sheet.

A :class:`SeriesView` shows one stack of a lake the way a person would rather look at
it than read it: in a notebook it is a table of facts (shape, spacing, units, QC
flags) beside the middle slice, and :meth:`SeriesView.contact_sheet` lays out evenly
spaced slices in a grid. Pixels come from the lake's Zarr stack (modality values, HU
for CT), windowed with the stack's own Window Center/Width when it has one, else
stretched over the range of the slices shown, so every tile of a sheet shares one
grey scale. The windowing, resizing and PNG encoding are :mod:`dicomflow.render`'s.
"""

from __future__ import annotations

import base64
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow.compute as pc

from dicomflow.errors import ConfigError
from dicomflow.lake.html import html_table, wrap
from dicomflow.lake.reader import Lake, read_lake
from dicomflow.lake.zarr_store import open_stack_group
from dicomflow.pixels.open import open_stack
from dicomflow.render import RenderedFrame, RenderError, encode_image
from dicomflow.render.geometry import resize
from dicomflow.render.voi import Window, apply_minmax, apply_window

THUMBNAIL_SIZE = 256
TILE_SIZE = 128
SHEET_COLUMNS = 8
SHEET_FRAMES = 48


@dataclass(frozen=True, eq=False)
class Picture:
    """A PNG image: shown inline by Jupyter, saved with :meth:`save`."""

    png: bytes = field(repr=False)
    width: int
    height: int

    def _repr_png_(self) -> bytes:
        return self.png

    def save(self, path: str | Path) -> None:
        """Write the PNG to ``path``."""
        Path(path).write_bytes(self.png)


@dataclass(frozen=True)
class SeriesView:
    """One pixel stack of a lake, for looking at: ``view_series(lake, series_uid)``."""

    lake: Lake
    series_uid: str
    stack: str | None = None

    def open(self) -> Any:
        """The stack as :func:`dicomflow.open_series` gives it: a lazy ``xarray.DataArray``."""
        return open_stack(self.lake, self.series_uid, stack=self.stack)

    def row(self) -> dict[str, Any]:
        """The stack's row of the ``series`` table."""
        table = self.lake.series()
        rows = table.filter(pc.equal(table["SeriesInstanceUID"], self.series_uid)).to_pylist()
        path = self.open().attrs["zarr_path"]
        return next(r for r in rows if r["zarr_path"] == path)

    def thumbnail(self, *, index: int | None = None, size: int = THUMBNAIL_SIZE) -> Picture:
        """Slice ``index`` (the middle one by default), longest side ``size`` pixels."""
        volume = self.open()
        count = int(volume.sizes["z"])
        index = count // 2 if index is None else index
        if not 0 <= index < count:
            raise ConfigError(f"slice {index} is outside the stack's {count} slices")
        image = display_images(self.lake, volume, [index])[0]
        return picture(fit(image, size))

    def contact_sheet(
        self,
        *,
        columns: int = SHEET_COLUMNS,
        size: int = TILE_SIZE,
        max_frames: int = SHEET_FRAMES,
        labels: bool = True,
    ) -> Picture:
        """Up to ``max_frames`` evenly spaced slices in a grid of ``columns``, each tile
        ``size`` pixels at most, labelled with its index and position along z (mm)."""
        if columns < 1 or size < 1 or max_frames < 1:
            raise ConfigError("columns, size and max_frames must be positive")
        volume = self.open()
        indices = spread(int(volume.sizes["z"]), max_frames)
        images = [fit(i, size) for i in display_images(self.lake, volume, indices)]
        z = volume.coords["z"].values
        units = volume.attrs.get("spatial_units")
        placed = units != "pixel" and "missing_geometry" not in volume.attrs.get("qc_flags", ())
        captions = [f"{i}  {float(z[i]):.1f} {units}" if placed else f"{i}" for i in indices]
        return picture(
            grid(images, columns=columns, size=size, captions=captions if labels else None)
        )

    def _repr_png_(self) -> bytes:
        return self.thumbnail().png

    def _repr_html_(self) -> str:
        row = self.row()
        facts = [
            ("SeriesInstanceUID", row["SeriesInstanceUID"]),
            ("stack", row["stack"]),
            ("Modality", row["Modality"]),
            ("shape", row["shape"]),
            ("dtype", row["dtype"]),
            ("spacing (mm, z/y/x)", row["spacing"]),
            ("units", row["units"]),
            ("photometric", row["photometric_interpretation"]),
            ("QC flags", ", ".join(row["qc_flags"]) or "none"),
            ("Zarr", row["zarr_path"]),
        ]
        table = html_table(("", ""), facts, chars=240)  # UIDs and paths in full
        encoded = base64.b64encode(self.thumbnail().png).decode()
        image = f'<img src="data:image/png;base64,{encoded}" alt="middle slice"/>'
        return wrap(
            '<div style="display:flex;gap:16px;align-items:flex-start">',
            table,
            f"<figure style='margin:0'>{image}<figcaption>middle slice</figcaption></figure>",
            "</div>",
        )


def view_series(lake: str | Lake, series_uid: str, *, stack: str | None = None) -> SeriesView:
    """A :class:`SeriesView` of the series' largest stack (or the one named ``stack``)."""
    view = SeriesView(read_lake(lake) if isinstance(lake, str) else lake, series_uid, stack)
    view.open()  # fail here, not when the notebook first shows it
    return view


def contact_sheet(
    lake: str | Lake,
    series_uid: str,
    *,
    stack: str | None = None,
    columns: int = SHEET_COLUMNS,
    size: int = TILE_SIZE,
    max_frames: int = SHEET_FRAMES,
) -> Picture:
    """Evenly spaced slices of a series in one picture; see :meth:`SeriesView.contact_sheet`."""
    return view_series(lake, series_uid, stack=stack).contact_sheet(
        columns=columns, size=size, max_frames=max_frames
    )


def spread(count: int, most: int) -> list[int]:
    """Up to ``most`` evenly spaced indices of ``count``, the first and last included."""
    if count <= most:
        return list(range(count))
    return sorted({round(v) for v in np.linspace(0, count - 1, most)})


def display_images(lake: Lake, volume: Any, indices: list[int]) -> list[np.ndarray]:
    """Slices ``indices`` of ``volume`` as uint8 grey or RGB images under one window."""
    attrs: dict[str, Any] = dict(open_stack_group(lake.layout, volume.attrs["zarr_path"]).attrs)
    # slices first and colour samples last, however the stack stores them
    values = np.asarray(volume.isel(z=indices).transpose("z", "y", "x", ...).values)
    photometric = str(attrs.get("photometric_interpretation") or "")
    palette = attrs.get("palette")
    if palette and values.ndim == 3:
        return list(apply_palette(values, palette))
    if values.ndim == 4:  # RGB samples
        scaled = values if values.dtype == np.uint8 else to_uint8(apply_minmax(values, None))
        return list(scaled)
    window = first_window(attrs.get("window"))
    levels = apply_window(values, window) if window else apply_minmax(values, None)
    if photometric == "MONOCHROME1":
        levels = 1.0 - levels
    return list(to_uint8(levels))


def first_window(window: Any) -> Window | None:
    """The stack's first Window Center/Width pair, if it has a usable one."""
    if not isinstance(window, dict):
        return None
    centers, widths = window.get("center") or [], window.get("width") or []
    if not centers or not widths:
        return None
    try:
        return Window(float(centers[0]), float(widths[0]))
    except (RenderError, TypeError, ValueError):
        return None


def apply_palette(indices: np.ndarray, palette: dict[str, Any]) -> np.ndarray:
    """Palette colour indices through their RGB table, as 8-bit RGB."""
    table = np.asarray(palette["rgb"], dtype=np.int64)
    if table.size and table.max() > 255:
        table = np.right_shift(table, 8)
    first = int(palette.get("first_mapped", 0))
    position = np.clip(indices.astype(np.int64) - first, 0, len(table) - 1)
    return table[position].astype(np.uint8)


def fit(image: np.ndarray, size: int) -> np.ndarray:
    """``image`` with its longest side at most ``size``: shrunk by :mod:`dicomflow.render`,
    or a small one (a 10x10 dose grid) enlarged by whole pixels so it can be seen."""
    factor = size // max(image.shape[:2])
    if factor <= 1:
        return resize(image, size)
    return np.repeat(np.repeat(image, factor, axis=0), factor, axis=1)


def to_uint8(levels: np.ndarray) -> np.ndarray:
    """Levels in [0, 1] as 8-bit values."""
    return np.clip(np.rint(levels * 255.0), 0, 255).astype(np.uint8)


def picture(image: np.ndarray) -> Picture:
    """An 8-bit grey or RGB image as a :class:`Picture`."""
    png = encode_image(RenderedFrame(0, np.ascontiguousarray(image)), "png")
    return Picture(png, width=int(image.shape[1]), height=int(image.shape[0]))


def grid(
    images: list[np.ndarray],
    *,
    columns: int,
    size: int,
    captions: list[str] | None = None,
) -> np.ndarray:
    """``images`` (each at most ``size`` pixels a side) centred in a grid of tiles."""
    from PIL import Image, ImageDraw

    rgb = any(i.ndim == 3 for i in images)
    columns = max(1, min(columns, len(images)))
    rows = -(-len(images) // columns)
    gap = 2
    sheet = np.zeros(
        (rows * (size + gap) - gap, columns * (size + gap) - gap, *((3,) if rgb else ())),
        dtype=np.uint8,
    )
    for n, image in enumerate(images):
        tile = np.stack([image] * 3, axis=-1) if rgb and image.ndim == 2 else image
        top = (n // columns) * (size + gap) + (size - tile.shape[0]) // 2
        left = (n % columns) * (size + gap) + (size - tile.shape[1]) // 2
        sheet[top : top + tile.shape[0], left : left + tile.shape[1]] = tile
    if not captions:
        return sheet
    canvas = Image.fromarray(sheet)
    draw = ImageDraw.Draw(canvas)
    for n, caption in enumerate(captions):
        x, y = (n % columns) * (size + gap) + 3, (n // columns) * (size + gap) + 2
        draw.text((x, y), caption, fill=(255, 255, 0) if rgb else 255)
    return np.asarray(canvas)
