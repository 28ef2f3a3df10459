"""Synthesize realistic CT-like DICOM files for benchmarks and scale tests.

Each file is a 512×512 16-bit CT slice with about 100 header elements,
including a few sequences and private elements, written by pydicom. Its pixels are
noise (:func:`write_ct_series`) or a compressible phantom, stored in any transfer
syntax pydicom can compress to (:func:`write_phantom_series`).
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.sequence import Sequence
from pydicom.uid import UID, CTImageStorage, ExplicitVRLittleEndian, generate_uid

_ROOT = "1.2.826.0.1.3680043.8.498."


def _item(**values: object) -> Dataset:
    item = Dataset()
    for keyword, value in values.items():
        setattr(item, keyword, value)
    return item


def ct_dataset(
    index: int, *, study: str, series: str, frame_of_ref: str, rows: int = 512, cols: int = 512
) -> Dataset:
    """One CT slice; values vary with ``index`` so rows differ."""
    ds = Dataset()
    ds.SpecificCharacterSet = "ISO_IR 100"
    ds.ImageType = ["ORIGINAL", "PRIMARY", "AXIAL"]
    ds.InstanceCreationDate = "20240105"
    ds.InstanceCreationTime = "101500.123"
    ds.SOPClassUID = CTImageStorage
    ds.SOPInstanceUID = f"{_ROOT}{index + 1}.{abs(hash(study)) % 10**8}"
    ds.StudyDate = "20240105"
    ds.SeriesDate = "20240105"
    ds.AcquisitionDate = "20240105"
    ds.ContentDate = "20240105"
    ds.StudyTime = "101010"
    ds.SeriesTime = "101200.5"
    ds.AcquisitionTime = "101210.250"
    ds.ContentTime = "101211"
    ds.AccessionNumber = f"ACC{index // 100:06d}"
    ds.Modality = "CT"
    ds.Manufacturer = "ACME Medical"
    ds.InstitutionName = "General Hospital"
    ds.InstitutionAddress = "1 Hospital Road, Springfield"
    ds.ReferringPhysicianName = "Doctor^Referring"
    ds.StationName = "CTSCAN01"
    ds.StudyDescription = "CT CHEST ABDOMEN PELVIS W CONTRAST"
    ds.SeriesDescription = "AXIAL 1.25mm SOFT TISSUE"
    ds.InstitutionalDepartmentName = "Radiology"
    ds.PhysiciansOfRecord = "Doctor^Record"
    ds.OperatorsName = ["Tech^One", "Tech^Two"]
    ds.ManufacturerModelName = "Scanner 9000"
    ds.ReferencedPerformedProcedureStepSequence = Sequence(
        [
            _item(
                ReferencedSOPClassUID="1.2.840.10008.3.1.2.3.3",
                ReferencedSOPInstanceUID=f"{_ROOT}9.{index}",
            )
        ]
    )
    ds.PatientName = f"Patient^{index // 100:05d}^Q"
    ds.PatientID = f"PID{index // 100:07d}"
    ds.PatientBirthDate = "19600214"
    ds.PatientSex = "F" if index % 2 else "M"
    ds.PatientAge = "063Y"
    ds.PatientSize = "1.68"
    ds.PatientWeight = "72.5"
    ds.BodyPartExamined = "CHEST"
    ds.ScanOptions = "HELICAL MODE"
    ds.SliceThickness = "1.25"
    ds.KVP = "120"
    ds.DataCollectionDiameter = "500"
    ds.SoftwareVersions = ["sw 1.2.3", "recon 4.5"]
    ds.ProtocolName = "CAP WITH CONTRAST"
    ds.ReconstructionDiameter = "360"
    ds.DistanceSourceToDetector = "949.075"
    ds.DistanceSourceToPatient = "541"
    ds.GantryDetectorTilt = "0"
    ds.TableHeight = "160"
    ds.RotationDirection = "CW"
    ds.ExposureTime = "500"
    ds.XRayTubeCurrent = "300"
    ds.Exposure = "150"
    ds.FilterType = "BODY FILTER"
    ds.GeneratorPower = "36"
    ds.FocalSpots = "0.7"
    ds.ConvolutionKernel = "STANDARD"
    ds.PatientPosition = "FFS"
    ds.RevolutionTime = 0.5
    ds.SingleCollimationWidth = 0.625
    ds.TotalCollimationWidth = 40.0
    ds.TableSpeed = 78.75
    ds.TableFeedPerRotation = 39.375
    ds.SpiralPitchFactor = 0.984375
    ds.CTDIvol = 12.34
    ds.CTDIPhantomTypeCodeSequence = Sequence(
        [
            _item(
                CodeValue="113691",
                CodingSchemeDesignator="DCM",
                CodeMeaning="IEC Body Dosimetry Phantom",
            )
        ]
    )
    ds.StudyInstanceUID = study
    ds.SeriesInstanceUID = series
    ds.StudyID = "1"
    ds.SeriesNumber = "3"
    ds.AcquisitionNumber = "1"
    ds.InstanceNumber = str(index % 100 + 1)
    z = -100.0 + 1.25 * (index % 100)
    ds.ImagePositionPatient = ["-180.0", "-180.0", f"{z:.2f}"]
    ds.ImageOrientationPatient = ["1", "0", "0", "0", "1", "0"]
    ds.FrameOfReferenceUID = frame_of_ref
    ds.PositionReferenceIndicator = "SN"
    ds.SliceLocation = f"{z:.2f}"
    ds.SamplesPerPixel = 1
    ds.PhotometricInterpretation = "MONOCHROME2"
    ds.Rows = rows
    ds.Columns = cols
    ds.PixelSpacing = ["0.703125", "0.703125"]
    ds.BitsAllocated = 16
    ds.BitsStored = 16
    ds.HighBit = 15
    ds.PixelRepresentation = 1
    ds.PixelPaddingValue = -2000
    ds.WindowCenter = ["40", "-600"]
    ds.WindowWidth = ["400", "1500"]
    ds.RescaleIntercept = "-1024"
    ds.RescaleSlope = "1"
    ds.RescaleType = "HU"
    ds.WindowCenterWidthExplanation = ["SOFT TISSUE", "LUNG"]
    ds.LossyImageCompression = "00"
    ds.RequestAttributesSequence = Sequence(
        [
            _item(
                RequestedProcedureID=f"RP{index // 100}",
                ScheduledProcedureStepID="SPS1",
                ScheduledProtocolCodeSequence=Sequence(
                    [
                        _item(
                            CodeValue="CTCAP",
                            CodingSchemeDesignator="99LOCAL",
                            CodeMeaning="CT Chest Abdomen Pelvis",
                        )
                    ]
                ),
            )
        ]
    )
    ds.PerformedProcedureStepStartDate = "20240105"
    ds.PerformedProcedureStepStartTime = "100900"
    ds.PerformedProcedureStepID = "PPS1"
    ds.PerformedProcedureStepDescription = "CT CAP"
    block = ds.private_block(0x0019, "ACME CT PRIVATE", create=True)
    block.add_new(0x10, "LO", "private value")
    block.add_new(0x11, "DS", "1.5")
    block.add_new(0x12, "US", 42)
    rng = np.random.default_rng(index)
    ds.PixelData = rng.integers(-1000, 2000, size=(rows, cols), dtype=np.int16).tobytes()
    return ds


def write_ct_series(
    out: Path, n: int, *, per_series: int = 100, rows: int = 512, cols: int = 512
) -> list[Path]:
    """Write ``n`` CT slices under ``out`` (``per_series`` per series); return the paths."""
    out.mkdir(parents=True, exist_ok=True)
    paths = []
    study = series = frame_of_ref = ""
    for i in range(n):
        if i % per_series == 0:
            study, series, frame_of_ref = generate_uid(), generate_uid(), generate_uid()
        ds = ct_dataset(
            i, study=study, series=series, frame_of_ref=frame_of_ref, rows=rows, cols=cols
        )
        meta = FileMetaDataset()
        meta.MediaStorageSOPClassUID = ds.SOPClassUID
        meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID
        meta.TransferSyntaxUID = ExplicitVRLittleEndian
        ds.file_meta = meta
        path = out / f"{i // per_series:04d}" / f"{i % per_series:04d}.dcm"
        path.parent.mkdir(exist_ok=True)
        ds.save_as(path, enforce_file_format=True)
        paths.append(path)
    return paths


def phantom(index: int, size: int) -> np.ndarray:
    """A body-like ellipse with organs and noise: compressible, like real CT."""
    y, x = np.mgrid[:size, :size]
    centre = size / 2
    body = ((x - centre) / (0.42 * size)) ** 2 + ((y - centre) / (0.32 * size)) ** 2 <= 1
    organ = ((x - centre * 0.8) / (0.1 * size)) ** 2 + ((y - centre) / (0.08 * size)) ** 2 <= 1
    image = np.full((size, size), -1000, np.int16)
    image[body] = 40
    image[organ] = 60 + index % 7
    noise = np.random.default_rng(index).integers(-15, 16, (size, size), dtype=np.int16)
    return image + noise * body


def write_phantom_series(
    out: Path, n: int, *, size: int = 512, transfer_syntax: UID = ExplicitVRLittleEndian
) -> list[Path]:
    """Write one series of ``n`` phantom slices (12 bits stored, as most CT scanners store)
    under ``out`` in ``transfer_syntax``; return the paths."""
    out.mkdir(parents=True, exist_ok=True)
    study, series, frame_of_ref = generate_uid(), generate_uid(), generate_uid()
    paths = []
    for i in range(n):
        ds = ct_dataset(
            i, study=study, series=series, frame_of_ref=frame_of_ref, rows=size, cols=size
        )
        ds.PixelData = phantom(i, size).tobytes()
        ds.BitsStored, ds.HighBit = 12, 11
        meta = FileMetaDataset()
        meta.MediaStorageSOPClassUID = ds.SOPClassUID
        meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID
        meta.TransferSyntaxUID = ExplicitVRLittleEndian
        ds.file_meta = meta
        if transfer_syntax != ExplicitVRLittleEndian:
            ds.compress(transfer_syntax)
        path = out / f"{i:04d}.dcm"
        ds.save_as(path, enforce_file_format=True)
        paths.append(path)
    return paths


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("out", type=Path)
    parser.add_argument("-n", type=int, default=1000)
    args = parser.parse_args()
    write_ct_series(args.out, args.n)


if __name__ == "__main__":
    main()
