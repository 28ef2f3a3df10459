"""DICOM-level helpers over pydicom: reading headers cheaply and flattening them.

This package sits in the foundation layer: it depends on pydicom and on
:mod:`dicomflow.records`, :mod:`dicomflow.errors` and :mod:`dicomflow.schemas` only.
"""
