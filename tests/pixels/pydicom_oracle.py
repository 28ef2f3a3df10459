"""The reference decode of a list of files, run in its own process.

dicomflow adds its imagecodecs plugin to pydicom's decoders, after which
``Dataset.pixel_array`` in the same process may fall back on that plugin and
agree with dicomflow by construction. This script therefore imports nothing
from dicomflow or its tests (``test_decode_gaps`` checks), so pydicom here has
only its own backends.

Reads one JSON object a line on standard input, ``{"path": …, "reference": …}``,
and writes ``<index>.npy`` (frames first, the Modality LUT or the
functional groups' rescale applied, as dicomflow applies them) or
``<index>.err`` (why there is no reference) into the folder given as the only
argument. References:

- ``pydicom``: ``pydicom.dcmread(path).pixel_array``;
- ``pydicom_no_meta``: the same, for a data set stored without a Transfer Syntax
  UID, given the native syntax of the encoding pydicom itself read it in;
- ``dcmdjpeg``: DCMTK's ``dcmdjpeg`` decompresses the file, pydicom reads the result;
- ``twin``: pydicom's decode of ``twin``, the same pixels stored natively.
"""

from __future__ import annotations

import json
import subprocess
import sys
import tempfile
import warnings
from pathlib import Path

import numpy as np
import pydicom
from pydicom.pixels import apply_modality_lut
from pydicom.uid import ExplicitVRBigEndian, ExplicitVRLittleEndian, ImplicitVRLittleEndian

NATIVE = {
    (True, True): ImplicitVRLittleEndian,
    (False, True): ExplicitVRLittleEndian,
    (False, False): ExplicitVRBigEndian,
}


def _group_rescale(group: pydicom.Dataset) -> tuple[float, float] | None:
    items = group.get("PixelValueTransformationSequence")
    if not items or "RescaleSlope" not in items[0] or "RescaleIntercept" not in items[0]:
        return None
    return float(items[0].RescaleSlope), float(items[0].RescaleIntercept)


def _rescaled(ds: pydicom.Dataset, frames: np.ndarray) -> np.ndarray:
    """The Modality LUT, or else each frame's Pixel Value Transformation (per frame,
    then shared), which pydicom's ``apply_modality_lut`` does not apply."""
    if "RescaleSlope" in ds or "ModalityLUTSequence" in ds:
        return np.asarray(apply_modality_lut(frames, ds))
    shared = ds.get("SharedFunctionalGroupsSequence")
    shared_value = _group_rescale(shared[0]) if shared else None
    per_frame = ds.get("PerFrameFunctionalGroupsSequence") or []
    values = [
        (_group_rescale(per_frame[i]) if i < len(per_frame) else None) or shared_value
        for i in range(len(frames))
    ]
    if not values or any(v is None for v in values):
        return frames
    return np.stack(
        [f.astype(np.float64) * v[0] + v[1] for f, v in zip(frames, values, strict=True) if v]
    )


def _frames(ds: pydicom.Dataset) -> np.ndarray:
    array = ds.pixel_array
    frames = array[np.newaxis] if int(ds.get("NumberOfFrames") or 1) == 1 else array
    return _rescaled(ds, frames)


def reference(path: str, kind: str, twin: str | None) -> np.ndarray:
    if kind == "pydicom":
        return _frames(pydicom.dcmread(path, force=True))
    if kind == "pydicom_no_meta":
        ds = pydicom.dcmread(path, force=True)
        ds.file_meta.TransferSyntaxUID = NATIVE[ds.original_encoding]
        return _frames(ds)
    if kind == "dcmdjpeg":
        with tempfile.TemporaryDirectory() as folder:
            out = Path(folder) / "out.dcm"
            subprocess.run(["dcmdjpeg", path, str(out)], check=True, capture_output=True)
            return _frames(pydicom.dcmread(out))
    if kind == "twin" and twin is not None:
        return _frames(pydicom.dcmread(twin))
    raise ValueError(f"unknown reference {kind}")


def main() -> None:
    out = Path(sys.argv[1])
    warnings.simplefilter("ignore")
    for index, line in enumerate(sys.stdin):
        job = json.loads(line)
        try:
            array = reference(job["path"], job["reference"], job.get("twin"))
        except Exception as exc:  # the reason is the result
            (out / f"{index}.err").write_text(f"{type(exc).__name__}: {exc}")
            continue
        np.save(out / f"{index}.npy", array, allow_pickle=False)


if __name__ == "__main__":
    main()
