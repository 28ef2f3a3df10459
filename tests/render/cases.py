"""Which corpus files the DCMTK comparisons cover, and the documented exceptions.

A file is compared when it is an image (not SEG, RT, SR or a presentation state),
in a transfer syntax DCMTK decodes, and DCMTK reads it. Every other exclusion or
allowance is listed here, one file at a time, with its reason.
"""

from __future__ import annotations

from pathlib import Path

from tests.conftest import CORPUS, corpus_manifest

NOT_IMAGES = (
    "1.2.840.10008.5.1.4.1.1.66",  # SEG (label maps, not pictures)
    "1.2.840.10008.5.1.4.1.1.481",  # RT
    "1.2.840.10008.5.1.4.1.1.11",  # presentation states
    "1.2.840.10008.5.1.4.1.1.88",  # SR
)
# JPEG 2000, HTJ2K and JPEG XL are not in DCMTK 3.6 (no free codec): no oracle.
DCMTK_SYNTAXES = (
    "1.2.840.10008.1.2",
    "1.2.840.10008.1.2.1",
    "1.2.840.10008.1.2.1.99",
    "1.2.840.10008.1.2.2",
    "1.2.840.10008.1.2.5",
    "1.2.840.10008.1.2.4.50",
    "1.2.840.10008.1.2.4.51",
    "1.2.840.10008.1.2.4.57",
    "1.2.840.10008.1.2.4.70",
    "1.2.840.10008.1.2.4.80",
    "1.2.840.10008.1.2.4.81",
)

# Files in those syntaxes that DCMTK itself refuses: nothing to compare against.
DCMTK_CANNOT_READ = {
    "nipy__nibabel/csa_slice_norm.dcm": "no Photometric Interpretation; DCMTK refuses it",
    "pydicom__pydicom/charset_files/chrJapMulti.dcm": "header-only sample: no Pixel Data",
    "pydicom__pydicom/charset_files/chrJapMultiExplicitIR6.dcm": "header-only: no Pixel Data",
    "pydicom__pydicom/charset_files/chrKoreanMulti.dcm": "header-only sample: no Pixel Data",
    "orthanc-mirrors__orthanc-tests/HierarchicalAnonymization/2019-03-28/CR000000.dcm": (
        "header-only CR: no Pixel Data"
    ),
    "pydicom__pydicom/test_files/MR_truncated.dcm": "Pixel Data truncated; DCMTK stops",
    "pydicom__pydicom-data/JLSL_08_07_0_1F.dcm": "DCMTK's JPEG-LS decoder rejects 7-bit data",
    "pydicom__pydicom-data/parametric_map_float.dcm": "Float Pixel Data: DCMTK has no renderer",
    "pydicom__pydicom-data/parametric_map_double_float.dcm": "Double Float Pixel Data",
    "themorlan__openREM/MG-Im-Hologic-PropProj.dcm": "DCMTK reads past its end (private data)",
    "themorlan__openREM/NM-NmIm-Siemens-s1-1.dcm": "Pixel Data empty (0 bytes)",
    "pydicom__pydicom/test_files/SC_rgb_jpeg.dcm": "mislabelled VR encoding; DCMTK stops",
    "pydicom__pydicom-data/SC_rgb_32bit.dcm": "32 bits a sample: DCMTK rejects it",
    "pydicom__pydicom-data/gdcm-US-ALOKA-16.dcm": (
        "segmented palette: DCMTK rejects it (checked against pydicom in test_palettes)"
    ),
    "pydicom__pydicom-data/gdcm-US-ALOKA-16_big.dcm": "segmented palette, as above",
    "pydicom__pydicom-data/OT-PAL-8-face.dcm": "no file meta: no transfer syntax to decode by",
}

# dicomflow.pixels.decode cannot decode these (a decode matter, not rendering):
# Files decode cannot read although DCMTK renders them; the test checks they still
# fail cleanly with PixelDecodeError, so a fix in decode shows up here. (The 12-bit
# JPEG Extended streams whose SOS parameters pylibjpeg and GDCM reject were here:
# decode now falls back on libjpeg-turbo, lenient as DCMTK's IJG decoder.)
DECODE_CANNOT_READ: dict[str, str] = {}

# Where we agree on the window but the decoded values differ: (reason, mean, max).
CT0012_LOSSY = "cornerstonejs__dicomParser/encapsulated/multi-frame/" + (
    "CT0012.fragmented_no_bot_jpeg_baseline.51.dcm"
)
DIFFERENCES = {
    CT0012_LOSSY: (
        "lossy 12-bit JPEG: libjpeg and DCMTK's IJG decoder may differ by one stored "
        "value (lossy IDCTs need not agree), and the 102-wide window turns one stored "
        "value into 2.5 gray levels",
        1.0,
        3,
    ),
}


def images(photometric: tuple[str, ...]) -> list[str]:
    """Relative paths of comparable images whose photometric starts with one of ``photometric``."""
    out = []
    for row in corpus_manifest():
        if not row["photometric_interpretation"].startswith(photometric):
            continue
        if row["sop_class_uid"].startswith(NOT_IMAGES):
            continue
        if row["transfer_syntax_uid"] not in DCMTK_SYNTAXES and row["transfer_syntax_uid"]:
            continue
        if (
            row["relative_path"] in DCMTK_CANNOT_READ
            or not (CORPUS / row["relative_path"]).is_file()
        ):
            continue
        if not row["transfer_syntax_uid"]:
            continue
        out.append(row["relative_path"])
    return out


def path(relative: str) -> Path:
    return CORPUS / relative
