"""Labels for ML: segmentations (DICOM SEG) as masks on the image stacks they annotate.

:mod:`.segments` reads a SEG into ``segments`` rows and masks (with highdicom);
:mod:`.place` writes the masks as an OME-Zarr ``labels`` group beside the image.
"""
