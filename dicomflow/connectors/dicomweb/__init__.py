"""DICOMweb connector: QIDO-RS search, WADO-RS retrieve and STOW-RS store, on dicomweb-client."""

from dicomflow.connectors.dicomweb.address import DicomwebAddress, DicomwebError, DicomwebOptions

__all__ = ["DicomwebAddress", "DicomwebError", "DicomwebOptions"]
