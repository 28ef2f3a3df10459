"""Burned-in text: quarantine what may carry it, or black out known regions.

An instance is *suspect* when it says Burned In Annotation = YES, or when it
is of a kind that commonly carries burned-in text: ultrasound, secondary
capture and other screenshots, document scans. A suspect instance is cleaned
only when a configured rule matches its device (Manufacturer, Manufacturer's
Model Name, Rows, Columns), in the spirit of RSNA CTP's DicomPixelAnonymizer;
otherwise it is quarantined and never written.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from pydicom.dataset import Dataset

from dicomflow.errors import ConfigError, DeidentificationError, ErrorCode

SUSPECT_MODALITIES = frozenset({"US", "IVUS", "XC", "DOC", "OT", "SC"})
SUSPECT_SOP_CLASS_PREFIXES = (
    "1.2.840.10008.5.1.4.1.1.7",  # secondary capture, single and multi-frame
    "1.2.840.10008.5.1.4.1.1.6.",  # ultrasound image / multi-frame
    "1.2.840.10008.5.1.4.1.1.3.1",  # ultrasound multi-frame (retired)
    "1.2.840.10008.5.1.4.1.1.104.",  # encapsulated PDF, CDA, STL, ... (document scans)
    "1.2.840.10008.5.1.4.1.1.77.1.1",  # VL endoscopic / photographic (video screenshots)
)
SUSPECT_CONVERSION_TYPES = frozenset({"WSD", "SD", "SI", "DF", "DV"})


@dataclass(frozen=True)
class Region:
    """A rectangle in pixel coordinates: left column, top row, width, height."""

    x: int
    y: int
    width: int
    height: int


@dataclass(frozen=True)
class PixelRule:
    """Regions to black out on images from one device at one matrix size."""

    manufacturer: str
    model: str
    rows: int
    columns: int
    regions: tuple[Region, ...]

    def matches(self, ds: Dataset) -> bool:
        return (
            _text(ds, "Manufacturer") == self.manufacturer.strip().upper()
            and _text(ds, "ManufacturerModelName") == self.model.strip().upper()
            and int(ds.get("Rows", -1) or -1) == self.rows
            and int(ds.get("Columns", -1) or -1) == self.columns
        )


def _text(ds: Dataset, keyword: str) -> str:
    return str(ds.get(keyword, "") or "").strip().upper()


def load_rules(path: str) -> tuple[PixelRule, ...]:
    """Rules from a JSON file: ``[{"manufacturer", "model", "rows", "columns",
    "regions": [[x, y, width, height], ...]}, ...]``."""
    try:
        with Path(path).open(encoding="utf-8") as fp:
            raw = json.load(fp)
        return tuple(_rule(item) for item in raw)
    except (OSError, ValueError, KeyError, TypeError) as exc:
        raise ConfigError(f"cannot read the pixel-cleaning rules ({type(exc).__name__})") from None


def _rule(item: Mapping[str, Any]) -> PixelRule:
    regions = tuple(Region(*(int(v) for v in r)) for r in item["regions"])
    return PixelRule(
        str(item["manufacturer"]),
        str(item["model"]),
        int(item["rows"]),
        int(item["columns"]),
        regions,
    )


def is_suspect(ds: Dataset) -> bool:
    """Whether ``ds`` may carry burned-in text."""
    if _text(ds, "BurnedInAnnotation") == "YES":
        return True
    if _text(ds, "Modality") in SUSPECT_MODALITIES:
        return True
    if _text(ds, "ConversionType") in SUSPECT_CONVERSION_TYPES:
        return True
    sop_class = str(ds.get("SOPClassUID", "") or "")
    return sop_class.startswith(SUSPECT_SOP_CLASS_PREFIXES)


def find_rule(ds: Dataset, rules: Iterable[PixelRule]) -> PixelRule | None:
    return next((rule for rule in rules if rule.matches(ds)), None)


def quarantine() -> DeidentificationError:
    return DeidentificationError(
        "may carry burned-in text and no pixel-cleaning rule matches its device",
        code=ErrorCode.BURNED_IN_ANNOTATION,
    )


def blank_regions(ds: Dataset, rule: PixelRule) -> None:
    """Black out the rule's regions in every frame; the result is stored uncompressed."""
    if "PixelData" not in ds:
        return
    array = np.array(ds.pixel_array)  # decoded, YBR converted to RGB
    frames = int(ds.get("NumberOfFrames", 1) or 1)
    view = array if frames > 1 else array[np.newaxis]
    for region in rule.regions:
        view[:, region.y : region.y + region.height, region.x : region.x + region.width] = 0
    photometric = str(ds.PhotometricInterpretation)
    if photometric.startswith("YBR"):
        photometric = "RGB"
    ds.set_pixel_data(array, photometric, int(ds.BitsStored), generate_instance_uid=False)
