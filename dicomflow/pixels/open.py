"""Open pixel stacks from a lake as lazy xarray/dask arrays, for ML and notebooks.

A stack opens as an ``xarray.DataArray`` whose dimensions are the Zarr array's own
``dimension_names`` (``z``, ``y``, ``x`` and, for colour, ``c``, in the order stored),
backed by ``dask.array`` so nothing is read until it is computed. Its coordinates:

- ``z``, ``y``, ``x`` (dimension coordinates): millimetres measured from the patient
  origin along the stack's own axes (the slice normal, the column direction and the
  row direction), that is the OME ``translation + index * scale`` of the level opened.
  For an axial stack they are the S, P and L coordinates of the pixel centres. A stack
  without geometry (QC flag ``missing_geometry``) has no place in the patient: its
  coordinates count level-0 pixels instead.
- ``position_L``, ``position_P``, ``position_S`` (along ``z``): where each slice's first
  pixel centre is in patient space (LPS, mm); at level 0, the slice's Image Position
  (Patient). On a regular stack that is the affine's grid (they agree within the
  headers' rounding). A stack flagged ``gaps``, ``uneven_spacing`` or
  ``duplicate_positions`` is not on its grid: there each single-frame slice takes the
  position its header gives (from the ``instances`` table), so slices after a gap sit
  where they were acquired while ``z`` keeps the regular grid of the OME metadata.
- ``SOPInstanceUID`` (along ``z``): the instance each slice came from.

The ``attrs`` hold the ``affine`` (4x4: index (z, y, x) of this level to LPS mm), the
``spatial_units`` (``"mm"`` or ``"pixel"``), the ``spacing`` in those units, the
``ImageOrientationPatient``, the ``FrameOfReferenceUID`` when known (from the stack's
attributes, or the headers read for an irregular stack), the UIDs, the value
``units`` (``HU`` for CT) and the stack's QC flags.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np
import pyarrow.compute as pc

from dicomflow.errors import ConfigError
from dicomflow.lake.reader import Lake
from dicomflow.lake.zarr_store import open_stack_group

SPACE = ("z", "y", "x")  # the stack's index axes, in the affine's column order
DEFAULT_DIMS = ("z", "y", "x", "c")  # stacks written before arrays named their dimensions
MISSING_GEOMETRY = "missing_geometry"
# QC flags of stacks whose slices are not all on the affine's regular grid
IRREGULAR = frozenset({"gaps", "uneven_spacing", "duplicate_positions"})
PIXEL = "pixel"
UNIT_SYMBOLS = {"millimeter": "mm", "micrometer": "um", "centimeter": "cm", "meter": "m"}
LPS = "LPS"


def _stack_row(lake: Lake, series_uid: str, stack: str | None) -> dict[str, Any]:
    table = lake.series()
    rows = table.filter(pc.equal(table["SeriesInstanceUID"], series_uid)).to_pylist()
    if stack is not None:
        rows = [r for r in rows if r["stack"] == stack]
    if not rows:
        raise ConfigError("no pixel stack for that series in this lake")
    if len(rows) > 1 and stack is None:
        # The largest stack is what "the series" means to most users; others by name.
        rows.sort(key=lambda r: (-r["frames"], r["stack"]))
    return rows[0]


@dataclass(frozen=True)
class Level:
    """One resolution of a stack, as its OME metadata places it.

    ``scale`` and ``translation`` are the OME numbers of the space axes (z, y, x) at this
    level; ``ratio`` and ``offset`` map its indices to level 0's (``i0 = offset + i *
    ratio``), so the affine of the level is level 0's composed with that map.
    """

    index: int
    path: str
    scale: tuple[float, float, float]
    translation: tuple[float, float, float]
    ratio: tuple[float, float, float]
    offset: tuple[float, float, float]
    unit: str | None  # the OME unit of the space axes, None when it names none


def _transforms(dataset: dict[str, Any], names: list[str]) -> tuple[list[float], list[float]]:
    """A dataset's scale and translation over the OME axes ``names`` (translation 0
    when it has none)."""
    scale, translation = [1.0] * len(names), [0.0] * len(names)
    for transform in dataset.get("coordinateTransformations") or []:
        if transform.get("type") == "scale":
            scale = [float(v) for v in transform["scale"]]
        elif transform.get("type") == "translation":
            translation = [float(v) for v in transform["translation"]]
    return scale, translation


def _space(values: list[float], names: list[str]) -> tuple[float, float, float]:
    return (
        values[names.index("z")],
        values[names.index("y")],
        values[names.index("x")],
    )


def stack_level(attrs: dict[str, Any], level: int) -> Level:
    """Level ``level`` of the stack whose group attributes are ``attrs`` (negative
    counts from the coarsest, as list indices do)."""
    try:
        (multiscale, *_) = attrs["ome"]["multiscales"]
        axes = multiscale["axes"]
        datasets = multiscale["datasets"]
    except (KeyError, TypeError, ValueError):
        raise ConfigError("the stack has no OME multiscales metadata") from None
    if not -len(datasets) <= level < len(datasets):
        raise ConfigError(f"level {level} is outside the stack's {len(datasets)} levels")
    index = level % len(datasets)
    names = [str(a["name"]) for a in axes]
    if not set(SPACE) <= set(names):
        raise ConfigError("the stack's OME axes are not z, y and x")
    base_scale, base_translation = (_space(v, names) for v in _transforms(datasets[0], names))
    scale, translation = (_space(v, names) for v in _transforms(datasets[index], names))
    units = {a.get("unit") for a in axes if a["name"] in SPACE}
    return Level(
        index=index,
        path=str(datasets[index]["path"]),
        scale=scale,
        translation=translation,
        # a zero scale (a Pixel Spacing of 0 in an older lake) places nothing: level 0's
        ratio=_tuple3(s / b if b else 1.0 for s, b in zip(scale, base_scale, strict=True)),
        offset=_tuple3(
            (t - t0) / b if b else 0.0
            for t, t0, b in zip(translation, base_translation, base_scale, strict=True)
        ),
        unit=str(units.pop()) if len(units) == 1 and None not in units else None,
    )


def _tuple3(values: Any) -> tuple[float, float, float]:
    z, y, x = (float(v) for v in values)
    return z, y, x


def level_affine(affine: np.ndarray, level: Level) -> np.ndarray:
    """The stack's level-0 ``affine`` (index (z, y, x) to LPS) for indices of ``level``."""
    to_base = np.eye(4)
    to_base[:3, :3] = np.diag(level.ratio)
    to_base[:3, 3] = level.offset
    result: np.ndarray = np.asarray(affine, float) @ to_base
    return result


def dimension_names(array: Any) -> tuple[str, ...]:
    """The Zarr array's ``dimension_names``, or the z, y, x[, c] stacks used to have."""
    names = getattr(array.metadata, "dimension_names", None)
    if names and len(names) == array.ndim and all(names):
        return tuple(str(n) for n in names)
    return DEFAULT_DIMS[: array.ndim]


def open_stack(
    lake: Lake,
    series_uid: str,
    *,
    stack: str | None = None,
    level: int = 0,
    as_numpy: bool = False,
    labels: bool = False,
) -> Any:
    """See :func:`dicomflow.open_series`."""
    import zarr

    row = _stack_row(lake, series_uid, stack)
    group = open_stack_group(lake.layout, row["zarr_path"])
    attrs: dict[str, Any] = dict(group.attrs)
    place = stack_level(attrs, level)
    array = group[place.path]
    assert isinstance(array, zarr.Array)
    affine = level_affine(np.asarray(attrs["affine"], float), place)
    masks = _label_arrays(group, place.index) if labels else {}
    if as_numpy:
        if labels:
            return array[:], affine, {name: mask[:] for name, mask in masks.items()}
        return array[:], affine
    import dask.array as da
    import xarray as xr

    dims = dimension_names(array)
    data = da.from_zarr(array)
    sizes = dict(zip(dims, data.shape, strict=True))
    flags = list(attrs.get("qc_flags", row["qc_flags"]) or [])
    geometric = MISSING_GEOMETRY not in flags and place.unit is not None
    spatial = UNIT_SYMBOLS.get(place.unit, place.unit) if geometric and place.unit else PIXEL
    coords = axis_coordinates(place, sizes, geometric=geometric, units=spatial)
    uids = [str(u) for u in attrs.get("sop_instance_uids", row["sop_instance_uids"]) or []]
    if "z" in sizes and _z_as_stored(place) and len(uids) == sizes["z"]:
        coords["SOPInstanceUID"] = ("z", np.asarray(uids, dtype=str))
    placed: dict[str, Any] = {}
    if geometric and "z" in sizes:
        # Off the regular grid, each slice is placed by its own header (a scan of the
        # instances table, which costs more than the rest of the open): only then.
        irregular = bool(IRREGULAR & set(flags))
        headers = _header_positions(lake, row, uids) if irregular else HeaderPositions({}, None)
        base = np.asarray(attrs["affine"], float)
        positions = slice_positions(base, place, sizes["z"], headers.positions)
        for axis, letter in enumerate(LPS):
            long_name = f"slice position, {letter} (patient, LPS)"
            coords[f"position_{letter}"] = (
                "z",
                positions[:, axis],
                {"units": spatial, "long_name": long_name},
            )
        placed = {
            "coordinate_system": LPS,
            "ImageOrientationPatient": orientation(affine),
            "FrameOfReferenceUID": attrs.get("FrameOfReferenceUID") or headers.frame_of_reference,
        }
    info = {
        "StudyInstanceUID": row.get("StudyInstanceUID"),
        "SeriesInstanceUID": row.get("SeriesInstanceUID"),
        "Modality": row.get("Modality"),
        "stack": row["stack"],
        "level": place.index,
        "units": attrs.get("units", row.get("units")),
        "spatial_units": spatial,
        "spacing": [float(v) for v in (place.scale if geometric else place.ratio)],
        "affine": affine.tolist(),
        **placed,
        "photometric_interpretation": attrs.get("photometric_interpretation"),
        "rescale_applied": attrs.get("rescale_applied"),
        "sop_instance_uids": uids,
        "qc_flags": flags,
        "zarr_path": row["zarr_path"],
    }
    image = xr.DataArray(
        data,
        dims=dims,
        coords=coords,
        name=series_uid,
        attrs={k: v for k, v in info.items() if v is not None},
    )
    if not labels:
        return image
    spatial_dims = [d for d in dims if d != "c"]
    return xr.Dataset(
        {
            "image": image,
            **{
                f"labels/{name}": (spatial_dims, da.from_zarr(mask)) for name, mask in masks.items()
            },
        },
        attrs=image.attrs,
    )


def _label_arrays(group: Any, level: int) -> dict[str, Any]:
    """The stack's label images (OME-Zarr ``labels``), full resolution only."""
    if level != 0:
        raise ValueError("label images are at full resolution: open level 0 with labels")
    try:
        labels = group["labels"]
    except KeyError:
        return {}
    names = dict(labels.attrs).get("ome", {}).get("labels", [])
    return {str(name): labels[str(name)]["0"] for name in names}


def _z_as_stored(place: Level) -> bool:
    """Whether the level keeps level 0's slices, one for one."""
    return place.ratio[0] == 1.0 and place.offset[0] == 0.0


def axis_coordinates(
    place: Level, sizes: dict[str, int], *, geometric: bool, units: str
) -> dict[str, Any]:
    """The ``z``/``y``/``x`` dimension coordinates of a level: the OME ``translation +
    index * scale`` when the stack has geometry, else level-0 pixels."""
    coords: dict[str, Any] = {}
    for axis, name in enumerate(SPACE):
        if name not in sizes:
            continue
        index = np.arange(sizes[name], dtype=float)
        if geometric:
            values = place.translation[axis] + index * place.scale[axis]
        else:  # no place in the patient: level-0 pixels from the stack's first one
            values = place.offset[axis] + index * place.ratio[axis]
        coords[name] = (name, values, {"units": units, "long_name": _long_name(name)})
    return coords


def _long_name(axis: str) -> str:
    return {
        "z": "z (slice normal)",
        "y": "y (column direction)",
        "x": "x (row direction)",
    }[axis]


def slice_positions(
    affine: np.ndarray,
    place: Level,
    count: int,
    headers: dict[int, tuple[float, float, float]],
) -> np.ndarray:
    """LPS positions (count x 3) of each slice's first pixel centre at level ``place``:
    the level-0 ``affine``'s, or where the slice's header puts it (``headers``, Image
    Position (Patient) by slice index) when the level keeps level 0's slices."""
    level = level_affine(affine, place)
    index = np.zeros((4, count))
    index[0] = np.arange(count)
    index[3] = 1.0
    positions: np.ndarray = (level @ index)[:3].T.copy()
    if _z_as_stored(place):  # each slice where it was acquired, not on the regular grid
        shift = affine[:3, 1] * place.offset[1] + affine[:3, 2] * place.offset[2]
        for frame, position in headers.items():
            if frame < count:
                positions[frame] = np.asarray(position) + shift
    return positions


def orientation(affine: np.ndarray) -> list[float]:
    """Image Orientation (Patient) of ``affine``: the row direction (x) then the column
    direction (y), as unit vectors."""
    matrix = np.asarray(affine, float)
    row, column = matrix[:3, 2], matrix[:3, 1]
    return [float(v) for v in (*_unit(row), *_unit(column))]


def _unit(vector: np.ndarray) -> np.ndarray:
    norm = float(np.linalg.norm(vector))
    return vector / norm if norm else vector


@dataclass(frozen=True)
class HeaderPositions:
    """What the ``instances`` rows of a stack say about where its frames are."""

    positions: dict[int, tuple[float, float, float]]  # frame index -> Image Position
    frame_of_reference: str | None


HEADER_COLUMNS = (
    "SOPInstanceUID",
    "ImagePositionPatient",
    "FrameOfReferenceUID",
    "zarr_path",
    "frame_index",
    "number_of_frames",
)


def _header_positions(lake: Lake, row: dict[str, Any], uids: list[str]) -> HeaderPositions:
    """The Image Position (Patient) of each single-frame instance of the stack (by frame
    index) and the stack's Frame of Reference, from the lake's ``instances`` rows."""
    dataset = lake.dataset("instances")
    if not set(HEADER_COLUMNS) <= set(dataset.schema.names) or not row.get("SeriesInstanceUID"):
        return HeaderPositions({}, None)
    table = dataset.to_table(
        columns=list(HEADER_COLUMNS),
        filter=(pc.field("SeriesInstanceUID") == row["SeriesInstanceUID"])
        & (pc.field("zarr_path") == row["zarr_path"]),
    )
    positions: dict[int, tuple[float, float, float]] = {}
    frame_of_reference = None
    for item in table.to_pylist():
        frame = item["frame_index"]
        if frame is None or not 0 <= frame < len(uids) or uids[frame] != item["SOPInstanceUID"]:
            continue  # a row of another version of the stack
        frame_of_reference = frame_of_reference or item["FrameOfReferenceUID"]
        position = item["ImagePositionPatient"]
        if (item["number_of_frames"] or 1) == 1 and position and len(position) == 3:
            positions.setdefault(frame, _tuple3(position))
    return HeaderPositions(positions, frame_of_reference)
