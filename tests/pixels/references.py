"""Reference frames for the decode tests, from :mod:`tests.pixels.pydicom_oracle` (a
process that never imports dicomflow), and the files whose reference is not pydicom's
own decode of the file itself."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np

from tests.conftest import CORPUS, PYDICOM_TEST_FILES

ORACLE = Path(__file__).with_name("pydicom_oracle.py")
DATA = "pydicom__pydicom-data"

# Images pydicom's own backends cannot decode, with the reference used instead.
REFERENCES: dict[str, tuple[str, str | None]] = {
    # 12-bit JPEG Extended whose scan headers pylibjpeg-libjpeg refuses
    "pydicom__pydicom/test_files/JPEG-lossy.dcm": ("dcmdjpeg", None),
    "pydicom/JPEG-lossy.dcm": ("dcmdjpeg", None),
    "robyoung__dicom-test-files/JPLY/MG1_JPLY": ("dcmdjpeg", None),
    "robyoung__dicom-test-files/JPLY/MR1_JPLY": ("dcmdjpeg", None),
    "robyoung__dicom-test-files/JPLY/RG3_JPLY": ("dcmdjpeg", None),  # values above Bits Stored
    # stored without file meta
    f"{DATA}/OT-PAL-8-face.dcm": ("pydicom_no_meta", None),
    # Bits Allocated 1 in RLE and deflated image frames, against their native twins
    f"{DATA}/liver_rle.dcm": ("twin", f"{DATA}/liver.dcm"),
    f"{DATA}/liver_nonbyte_aligned_rle.dcm": ("twin", f"{DATA}/liver_nonbyte_aligned.dcm"),
    f"{DATA}/liver_deflate.dcm": ("twin", f"{DATA}/liver.dcm"),
}
# JPEG XL: only libjxl decodes it here (tests/pixels/test_decode_gaps.py checks it so).
CODEC_ONLY = {"kaitakeradiology__orthanc-jxl/test_ct1_jxl.dcm"}


def key(path: Path) -> str:
    """A file's name in the tables above: its corpus path, or ``pydicom/<name>``."""
    if path.is_relative_to(CORPUS):
        return str(path.relative_to(CORPUS))
    return f"pydicom/{path.relative_to(PYDICOM_TEST_FILES)}"


def reference_frames(paths: list[Path], folder: Path) -> list[np.ndarray | str]:
    """Each file's reference frames (Modality LUT applied), or why there is none."""
    jobs = []
    for path in paths:
        kind, twin = REFERENCES.get(key(path), ("pydicom", None))
        twin_path = str(CORPUS / twin) if twin else None
        jobs.append(json.dumps({"path": str(path), "reference": kind, "twin": twin_path}))
    subprocess.run(
        [sys.executable, str(ORACLE), str(folder)],
        input="\n".join(jobs) + "\n",
        text=True,
        check=True,
        timeout=900,
    )
    results: list[np.ndarray | str] = []
    for index in range(len(paths)):
        npy = folder / f"{index}.npy"
        results.append(np.load(npy) if npy.exists() else (folder / f"{index}.err").read_text())
    return results
