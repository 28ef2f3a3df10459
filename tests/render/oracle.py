"""DCMTK as the oracle: run dcm2pnm / dcmp2pgm on a file and read back what it rendered.

DCMTK is a peer, not a library: a missing tool skips outside CI and fails in CI
(:func:`tests.conftest.require`). When DCMTK cannot decode a file (JPEG 2000,
HTJ2K and JPEG XL are not in DCMTK) there is nothing to compare against.
"""

from __future__ import annotations

import shutil
import subprocess
import warnings
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import pydicom
from PIL import Image

from dicomflow.pixels.decode import decode
from dicomflow.render import RenderSettings, render_instance
from tests.conftest import require

JPEG_FAMILY = {
    "1.2.840.10008.1.2.4.50",
    "1.2.840.10008.1.2.4.51",
    "1.2.840.10008.1.2.4.57",
    "1.2.840.10008.1.2.4.70",
}


JPEG_LS = {"1.2.840.10008.1.2.4.80", "1.2.840.10008.1.2.4.81"}


class DcmtkCannotRead(Exception):
    """DCMTK exited with an error: the file is outside what it decodes."""


def tool(name: str) -> str:
    """Path of a DCMTK tool (skip outside CI, fail in CI when missing)."""
    path = shutil.which(name)
    require(path is not None, f"{name} (Debian package dcmtk)")
    assert path is not None
    return path


def read(path: Path) -> pydicom.Dataset:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return pydicom.dcmread(path, force=True)


def converter(ds: pydicom.Dataset) -> str:
    """dcmj2pnm for the JPEG family, dcml2pnm for JPEG-LS, dcm2pnm for everything else."""
    meta = getattr(ds, "file_meta", None)
    syntax = str(meta.get("TransferSyntaxUID", "")) if meta is not None else ""
    if syntax in JPEG_LS:
        return tool("dcml2pnm")
    return tool("dcmj2pnm" if syntax in JPEG_FAMILY else "dcm2pnm")


def voi_options(ds: pydicom.Dataset, frame: int = 0) -> list[str]:
    """The DCMTK VOI option matching RenderSettings(window="auto"), read from the header.

    Per-frame windows of enhanced images are passed explicitly (+Ww): DCMTK 3.6
    reads only image-level windows. It also ignores a per-frame Pixel Value
    Transformation functional group (a shared one it applies), so such a window is
    handed to it in stored values: ``(center - intercept) / slope``, ``width / slope``."""
    groups = []
    per_frame = ds.get("PerFrameFunctionalGroupsSequence") or []
    if frame < len(per_frame):
        groups.append(per_frame[frame])
    groups.extend((ds.get("SharedFunctionalGroupsSequence") or [])[:1])
    for item in groups:
        voi = item.get("FrameVOILUTSequence")
        if voi and voi[0].get("WindowCenter") is not None:
            center, width = _first(voi[0].WindowCenter), _first(voi[0].WindowWidth)
            slope, intercept = _group_rescale(ds)
            center, width = (center - intercept) / slope, width / slope
            function = str(voi[0].get("VOILUTFunction") or "LINEAR").upper()
            options = ["+Ww", repr(center), repr(width)]
            return [*options, "+Wfs"] if function == "SIGMOID" else options
    if ds.get("WindowCenter") not in (None, "") and ds.get("WindowWidth") not in (None, ""):
        return ["+Wi", "1"]
    if ds.get("VOILUTSequence"):
        return ["+Wl", "1"]
    return ["+Wm"]


def _group_rescale(ds: pydicom.Dataset) -> tuple[float, float]:
    """The per-frame rescale DCMTK leaves unapplied ((1, 0) when the image has a
    top-level or shared one, which DCMTK applies)."""
    shared = (ds.get("SharedFunctionalGroupsSequence") or [None])[0]
    if "RescaleSlope" in ds or (
        shared is not None and "PixelValueTransformationSequence" in shared
    ):
        return 1.0, 0.0
    for item in (ds.get("PerFrameFunctionalGroupsSequence") or [])[:1]:
        pvt = item.get("PixelValueTransformationSequence")
        if pvt and "RescaleSlope" in pvt[0] and "RescaleIntercept" in pvt[0]:
            return float(pvt[0].RescaleSlope), float(pvt[0].RescaleIntercept)
    return 1.0, 0.0


def _first(value: object) -> float:
    return (
        float(value[0])
        if isinstance(value, Sequence | pydicom.multival.MultiValue)
        else float(value)
    )  # type: ignore[arg-type,index]


def dcm2pnm(
    path: Path, out_dir: Path, options: Sequence[str], *, ds: pydicom.Dataset | None = None
) -> np.ndarray:
    """DCMTK's 8-bit PNG rendering of ``path`` with ``options``."""
    ds = ds if ds is not None else read(path)
    out = out_dir / "dcmtk.png"
    result = subprocess.run(
        [converter(ds), "--write-png", *options, str(path), str(out)],
        capture_output=True,
        timeout=120,
        check=False,
    )
    if result.returncode != 0 or not out.exists():
        raise DcmtkCannotRead(result.stderr.decode(errors="replace")[-300:])
    with Image.open(out) as image:
        return np.asarray(image)


def dcmp2pgm(image: Path, presentation_state: Path, out_dir: Path) -> np.ndarray:
    """DCMTK's rendering of ``image`` through ``presentation_state`` (8-bit PGM)."""
    out = out_dir / "dcmp2pgm.pgm"
    subprocess.run(
        [tool("dcmp2pgm"), "-p", str(presentation_state), str(image), str(out)],
        capture_output=True,
        timeout=120,
        check=True,
    )
    with Image.open(out) as rendered:
        return np.asarray(rendered)


def ours(
    path: Path, settings: RenderSettings, presentation_state: pydicom.Dataset | None = None
) -> np.ndarray:
    """Our rendering of the first selected frame, read as the operator reads."""
    ds = read(path)
    return render_instance(ds, decode(ds), settings, presentation_state)[0].image


def differences(a: np.ndarray, b: np.ndarray) -> tuple[float, int]:
    """(mean, max) absolute difference of two images of the same shape."""
    assert a.shape == b.shape, f"shapes differ: {a.shape} vs {b.shape}"
    diff = np.abs(a.astype(np.int32) - b.astype(np.int32))
    return float(diff.mean()), int(diff.max())
