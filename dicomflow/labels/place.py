"""Write label images into a stack's OME-Zarr ``labels`` group (the image-label layout).

``<stack>/labels`` lists its label images; each, ``<stack>/labels/<name>``, is a
multiscale image of integers on the stack's full-resolution grid (its z/y/x axes
and transformations, without a channel axis) whose ``image-label`` metadata names
the source image and a colour per value. A label image is built beside its place
and renamed into it (in a bucket, written in place), and the list is updated
after it, so a reader never sees a label listed before it is whole.
"""

from __future__ import annotations

import shutil
import uuid
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np
import zarr

from dicomflow.labels.segments import LabelImage
from dicomflow.lake.layout import LakeLayout
from dicomflow.lake.zarr_store import open_stack_group
from dicomflow.schemas.zarr_layout import OME_VERSION

LABELS = "labels"
# A colour per label value (tab10, opaque), cycled.
PALETTE = [
    (31, 119, 180), (255, 127, 14), (44, 160, 44), (214, 39, 40), (148, 103, 189),
    (140, 86, 75), (227, 119, 194), (127, 127, 127), (188, 189, 34), (23, 190, 207),
]  # fmt: skip


def label_metadata(image_attrs: Mapping[str, Any], values: Mapping[int, int]) -> dict[str, Any]:
    """The ``ome`` attribute of a label image on the stack whose attributes are
    ``image_attrs``: its level-0 grid without the channel axis, colours, source."""
    (multiscale, *_) = image_attrs["ome"]["multiscales"]
    axes = list(multiscale["axes"])
    keep = [i for i, axis in enumerate(axes) if axis.get("type") != "channel"]
    transforms = []
    for transform in multiscale["datasets"][0]["coordinateTransformations"]:
        key = "scale" if transform["type"] == "scale" else "translation"
        transforms.append({"type": transform["type"], key: [transform[key][i] for i in keep]})
    colours = [
        {"label-value": int(value), "rgba": [*PALETTE[(int(value) - 1) % len(PALETTE)], 255]}
        for value in sorted(set(values.values()))
    ]
    return {
        "version": OME_VERSION,
        "multiscales": [
            {
                "name": "labels",
                "axes": [axes[i] for i in keep],
                "datasets": [{"path": "0", "coordinateTransformations": transforms}],
            }
        ],
        "image-label": {
            "version": OME_VERSION,
            "colors": colours,
            "source": {"image": "../../"},
        },
    }


def write_label(
    layout: LakeLayout, zarr_path: str, name: str, label: LabelImage, extra: Mapping[str, Any]
) -> str:
    """Write ``label`` as ``<zarr_path>/labels/<name>`` and list it; return its path
    relative to the lake. ``extra`` attributes (the SEG's UIDs) go beside ``ome``."""
    stack = open_stack_group(layout, zarr_path, mode="r+")
    attrs = {"ome": label_metadata(dict(stack.attrs), label.values), **extra}
    labels = stack.require_group(LABELS)
    relative = f"{zarr_path}/{LABELS}/{name}"
    if layout.is_local():
        root = Path(layout.filesystem()[1])
        final = root / relative
        staged = final.parent / f".{name}.{uuid.uuid4().hex}.tmp"
        try:
            _write_group(zarr.open_group(str(staged), mode="w"), label.data, attrs)
            if final.exists():
                shutil.rmtree(final)
            staged.rename(final)
        finally:
            if staged.exists():
                shutil.rmtree(staged, ignore_errors=True)
    else:
        _write_group(labels.create_group(name, overwrite=True), label.data, attrs)
    existing: Any = dict(labels.attrs)
    listed = list(existing.get("ome", {}).get(LABELS, []))
    if name not in listed:
        listed.append(name)
    labels.attrs.put({"ome": {"version": OME_VERSION, LABELS: listed}})
    return relative


def _write_group(group: zarr.Group, data: np.ndarray, attrs: Mapping[str, Any]) -> None:
    array = group.create_array(
        "0",
        shape=data.shape,
        chunks=(1, *data.shape[1:]),
        dtype=data.dtype,
        fill_value=0,
        dimension_names=["z", "y", "x"],
    )
    array[...] = data
    group.attrs.put(dict(attrs))


def placed_labels(layout: LakeLayout, zarr_path: str) -> list[str]:
    """The label images listed beside the stack at ``zarr_path``."""
    try:
        stack = open_stack_group(layout, zarr_path)
        labels = stack[LABELS]
    except (KeyError, FileNotFoundError, zarr.errors.GroupNotFoundError):
        return []
    attrs: Any = dict(labels.attrs)
    return list(attrs.get("ome", {}).get(LABELS, []))
