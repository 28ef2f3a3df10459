"""Build Grayscale Softcopy Presentation States for tests (PS3.3 A.33.1) with pydicom."""

from __future__ import annotations

from pathlib import Path

import pydicom
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.sequence import Sequence
from pydicom.uid import ExplicitVRLittleEndian, generate_uid

GSPS_CLASS = "1.2.840.10008.5.1.4.1.1.11.1"


def build(
    image: Dataset,
    *,
    window: tuple[float, float] | None = None,
    shape: str = "IDENTITY",
    rotation: int = 0,
    flip: bool = False,
    area: tuple[int, int, int, int] | None = None,
    frames: list[int] | None = None,
    rescale: bool = True,
) -> Dataset:
    """A GSPS referencing ``image`` with an optional Softcopy VOI window, Presentation LUT
    Shape, spatial transformation and displayed area (column, row, column, row, 1-based).
    With ``rescale`` the image's Rescale Slope/Intercept are copied, as creators must."""
    ps = Dataset()
    ps.file_meta = FileMetaDataset()
    ps.file_meta.MediaStorageSOPClassUID = GSPS_CLASS
    ps.SOPInstanceUID = ps.file_meta.MediaStorageSOPInstanceUID = generate_uid()
    ps.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ps.SOPClassUID = GSPS_CLASS
    ps.Modality = "PR"
    for keyword in ("StudyInstanceUID", "PatientID", "PatientName", "StudyDate", "StudyTime"):
        setattr(ps, keyword, image.get(keyword, ""))
    ps.SeriesInstanceUID = generate_uid()
    ps.SeriesNumber = ps.InstanceNumber = 1
    ps.ContentLabel = "TEST"
    ps.ContentDescription = ""
    ps.PresentationCreationDate = "20240101"
    ps.PresentationCreationTime = "000000"
    ps.ContentCreatorName = ""
    reference = Dataset()
    reference.ReferencedSOPClassUID = image.SOPClassUID
    reference.ReferencedSOPInstanceUID = image.SOPInstanceUID
    if frames:
        reference.ReferencedFrameNumber = frames
    series = Dataset()
    series.SeriesInstanceUID = image.SeriesInstanceUID
    series.ReferencedImageSequence = Sequence([reference])
    ps.ReferencedSeriesSequence = Sequence([series])
    if window is not None:
        voi = Dataset()
        voi.WindowCenter, voi.WindowWidth = window
        ps.SoftcopyVOILUTSequence = Sequence([voi])
    displayed = Dataset()
    rows, cols = int(image.Rows), int(image.Columns)
    c0, r0, c1, r1 = area or (1, 1, cols, rows)
    displayed.DisplayedAreaTopLeftHandCorner = [c0, r0]
    displayed.DisplayedAreaBottomRightHandCorner = [c1, r1]
    displayed.PresentationSizeMode = "SCALE TO FIT"
    displayed.PresentationPixelAspectRatio = [1, 1]
    ps.DisplayedAreaSelectionSequence = Sequence([displayed])
    ps.ImageRotation = rotation
    ps.ImageHorizontalFlip = "Y" if flip else "N"
    ps.PresentationLUTShape = shape
    if rescale and "RescaleSlope" in image:
        ps.RescaleSlope, ps.RescaleIntercept = image.RescaleSlope, image.RescaleIntercept
        ps.RescaleType = image.get("RescaleType") or "HU"
    return ps


def write(ps: Dataset, path: Path) -> Path:
    pydicom.dcmwrite(path, ps, enforce_file_format=True)
    return path
