"""Open pixel stacks from a lake as lazy xarray/dask arrays, for ML and notebooks."""

from __future__ import annotations

from typing import Any

import numpy as np
import pyarrow.compute as pc

from dicomflow.errors import ConfigError
from dicomflow.lake.reader import Lake
from dicomflow.lake.zarr_store import open_stack_group


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


def open_stack(
    lake: Lake, series_uid: str, *, stack: str | None = None, as_numpy: bool = False
) -> Any:
    """See :func:`dicomflow.open_series`."""
    import dask.array as da
    import zarr

    row = _stack_row(lake, series_uid, stack)
    group = open_stack_group(lake.layout, row["zarr_path"])
    array = group["0"]
    assert isinstance(array, zarr.Array)
    affine = np.asarray(group.attrs["affine"], float)
    if as_numpy:
        return array[:], affine
    import xarray as xr

    data = da.from_zarr(array)
    spacing = row["spacing"]
    coords = {
        name: np.arange(n) * step for name, n, step in zip("zyx", data.shape, spacing, strict=False)
    }
    dims = ["z", "y", "x", "c"][: data.ndim]
    return xr.DataArray(
        data,
        dims=dims,
        coords=coords,
        name=series_uid,
        attrs={
            "affine": affine.tolist(),
            "units": row["units"],
            "sop_instance_uids": row["sop_instance_uids"],
            "qc_flags": row["qc_flags"],
            "zarr_path": row["zarr_path"],
        },
    )
