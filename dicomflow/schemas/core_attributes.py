"""The core attributes that become typed columns of the ``instances`` table.

Grouped by the PS3.3 module (or the file meta information) they come from.
Column names are pydicom keywords; the Arrow type follows from the VR and VM in
pydicom's data dictionary (see :mod:`dicomflow.schemas.instances`).
"""

from __future__ import annotations

FILE_META = (
    "MediaStorageSOPClassUID",
    "MediaStorageSOPInstanceUID",
    "TransferSyntaxUID",
    "ImplementationClassUID",
    "ImplementationVersionName",
    "SourceApplicationEntityTitle",
)

MODULES: dict[str, tuple[str, ...]] = {
    "SOP Common": (
        "SpecificCharacterSet",
        "SOPClassUID",
        "SOPInstanceUID",
        "InstanceCreationDate",
        "InstanceCreationTime",
        "InstanceCreatorUID",
        "TimezoneOffsetFromUTC",
        "InstanceNumber",
        "InstanceCoercionDateTime",
    ),
    "Patient": (
        "PatientName",
        "PatientID",
        "IssuerOfPatientID",
        "PatientBirthDate",
        "PatientBirthTime",
        "PatientSex",
        "PatientComments",
        "EthnicGroup",
        "PatientSpeciesDescription",
        "PatientBreedDescription",
        "PatientIdentityRemoved",
        "DeidentificationMethod",
    ),
    "General Study": (
        "StudyInstanceUID",
        "StudyDate",
        "StudyTime",
        "ReferringPhysicianName",
        "StudyID",
        "AccessionNumber",
        "StudyDescription",
        "PhysiciansOfRecord",
        "NameOfPhysiciansReadingStudy",
    ),
    "Patient Study": (
        "AdmittingDiagnosesDescription",
        "PatientAge",
        "PatientSize",
        "PatientWeight",
        "Occupation",
        "AdditionalPatientHistory",
        "PregnancyStatus",
        "SmokingStatus",
    ),
    "General Series": (
        "Modality",
        "SeriesInstanceUID",
        "SeriesNumber",
        "Laterality",
        "SeriesDate",
        "SeriesTime",
        "PerformingPhysicianName",
        "ProtocolName",
        "SeriesDescription",
        "OperatorsName",
        "BodyPartExamined",
        "PatientPosition",
        "PerformedProcedureStepID",
        "PerformedProcedureStepStartDate",
        "PerformedProcedureStepStartTime",
        "PerformedProcedureStepDescription",
    ),
    "Frame of Reference": (
        "FrameOfReferenceUID",
        "PositionReferenceIndicator",
    ),
    "General Equipment": (
        "Manufacturer",
        "InstitutionName",
        "InstitutionAddress",
        "StationName",
        "InstitutionalDepartmentName",
        "ManufacturerModelName",
        "DeviceSerialNumber",
        "SoftwareVersions",
        "SpatialResolution",
        "DateOfLastCalibration",
        "TimeOfLastCalibration",
        "PixelPaddingValue",
    ),
    "General Image": (
        "PatientOrientation",
        "ContentDate",
        "ContentTime",
        "ImageType",
        "AcquisitionNumber",
        "AcquisitionDate",
        "AcquisitionTime",
        "AcquisitionDateTime",
        "ImagesInAcquisition",
        "ImageComments",
        "QualityControlImage",
        "BurnedInAnnotation",
        "RecognizableVisualFeatures",
        "LossyImageCompression",
        "LossyImageCompressionRatio",
        "LossyImageCompressionMethod",
        "PresentationLUTShape",
        "IrradiationEventUID",
        "DerivationDescription",
    ),
    "Image Plane": (
        "PixelSpacing",
        "ImageOrientationPatient",
        "ImagePositionPatient",
        "SliceThickness",
        "SpacingBetweenSlices",
        "SliceLocation",
    ),
    "Image Pixel": (
        "SamplesPerPixel",
        "PhotometricInterpretation",
        "Rows",
        "Columns",
        "BitsAllocated",
        "BitsStored",
        "HighBit",
        "PixelRepresentation",
        "PlanarConfiguration",
        "PixelAspectRatio",
        "SmallestImagePixelValue",
        "LargestImagePixelValue",
    ),
    # Not in the brief's list, but every pixel consumer needs them next to Image Pixel.
    "Modality LUT and VOI LUT": (
        "RescaleIntercept",
        "RescaleSlope",
        "RescaleType",
        "WindowCenter",
        "WindowWidth",
        "VOILUTFunction",
    ),
    # MR and multi-phase acquisitions: they decide how a series splits into stacks.
    "MR Image and Temporal": (
        "EchoNumbers",
        "TemporalPositionIdentifier",
    ),
    "Multi-frame": (
        "NumberOfFrames",
        "FrameIncrementPointer",
    ),
}


def core_keywords() -> tuple[str, ...]:
    """All typed-column keywords: file meta first, then the modules in order."""
    seen: dict[str, None] = dict.fromkeys(FILE_META)
    for keywords in MODULES.values():
        seen.update(dict.fromkeys(keywords))
    return tuple(seen)
