"""What a written segment is (its label, category, type and algorithm): the one thing
``write_seg`` callers describe, kept apart from highdicom so that importing it is free."""

from __future__ import annotations

from dataclasses import dataclass

from dicomflow._version import __version__

# SNOMED CT "Tissue" (85756007): a category and a type that fit any segment.
TISSUE = ("85756007", "SCT", "Tissue")


@dataclass(frozen=True)
class SegmentInfo:
    """What a segment is: its label, SNOMED-style category and type (code value, scheme,
    meaning), and the algorithm that made it."""

    label: str
    category: tuple[str, str, str] = TISSUE
    type: tuple[str, str, str] = TISSUE
    algorithm: str = "dicomflow"
    algorithm_version: str = __version__
