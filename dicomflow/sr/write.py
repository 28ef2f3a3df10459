"""Write measurements back out as a TID 1500 Measurement Report (highdicom).

The input is a table in the shape of the lake's ``measurements`` table (a model's
output, or rows extracted from another report): each row one measurement, named by its
``concept_*`` code, with ``value`` and a UCUM ``unit``, the images it was made on in
``referenced_sop_instance_uids``, and optionally its ``tracking_identifier``/
``tracking_uid``, ``finding_*``, ``finding_site_*``, ``method_*``, ``derivation_*``,
``algorithm_name``/``algorithm_version``, ``referenced_frame_numbers`` and a region
(``region_graphic_type`` with ``region_graphic_data``: column/row pairs on the first
image, or x/y/z triples in patient space when ``region_frame_of_reference_uid`` is
given). Rows sharing a tracking identifier form one measurement group (TID 1501, or
TID 1410 with a region). :func:`write_sr` builds a Comprehensive 3D SR that references
the source images (read from the lake's sources or given as files), which the ``sr``
operator extracts back into the same rows.
"""

from __future__ import annotations

import io
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

import fsspec
import highdicom as hd
import numpy as np
import pydicom
from pydicom.dataset import Dataset
from pydicom.sr.codedict import codes
from pydicom.uid import generate_uid

from dicomflow._version import __version__
from dicomflow.errors import ConfigError

# SNOMED CT "Imaging procedure": what a report of a model's measurements reports on.
IMAGING_PROCEDURE = ("363679005", "SCT", "Imaging procedure")


def write_sr(
    measurements: Iterable[Mapping[str, Any]],
    sources: Mapping[str, str],
    out: str | Path,
    *,
    observer: str = "dicomflow",
    storage_options: Mapping[str, Any] | None = None,
) -> Path:
    """Write ``measurements`` as a TID 1500 Comprehensive 3D SR at ``out`` that
    references the images it measured. ``sources`` maps each referenced SOP Instance
    UID to where the image is (a file or fsspec URL: the lake's ``source`` column)."""
    rows = [dict(row) for row in measurements]
    if not rows:
        raise ConfigError("there are no measurements to write")
    images = _images(rows, sources, storage_options or {})
    groups: dict[str, list[dict[str, Any]]] = {}
    for number, row in enumerate(rows, start=1):
        identifier = str(row.get("tracking_identifier") or f"Measurement {number}")
        groups.setdefault(identifier, []).append(row)
    report = hd.sr.MeasurementReport(
        observation_context=hd.sr.ObservationContext(
            observer_device_context=hd.sr.ObserverContext(
                observer_type=codes.DCM.Device,
                observer_identifying_attributes=hd.sr.DeviceObserverIdentifyingAttributes(
                    uid=generate_uid(), name=observer
                ),
            )
        ),
        procedure_reported=hd.sr.CodedConcept(*IMAGING_PROCEDURE),
        imaging_measurements=[
            _group(identifier, members, images) for identifier, members in groups.items()
        ],
    )
    document = hd.sr.Comprehensive3DSR(
        evidence=list(images.values()),
        content=report,
        series_instance_uid=generate_uid(),
        series_number=901,
        sop_instance_uid=generate_uid(),
        instance_number=1,
        manufacturer="dicomflow",
        is_complete=True,
    )
    target = Path(out)
    document.save_as(target)
    return target


def _images(
    rows: Sequence[Mapping[str, Any]], sources: Mapping[str, str], options: Mapping[str, Any]
) -> dict[str, Dataset]:
    """Each referenced image's header, read from where ``sources`` says it is."""
    wanted = list(dict.fromkeys(uid for row in rows for uid in _references(row)))
    missing = [uid for uid in wanted if uid not in sources]
    if missing:
        raise ConfigError(f"{len(missing)} referenced image(s) are not among the sources")
    images: dict[str, Dataset] = {}
    for uid in wanted:
        try:
            with fsspec.open(sources[uid], "rb", **options) as handle:
                images[uid] = pydicom.dcmread(io.BytesIO(handle.read()), stop_before_pixels=True)
        except (OSError, pydicom.errors.InvalidDicomError) as exc:
            raise ConfigError(f"a referenced image cannot be read ({type(exc).__name__})") from None
    return images


def _references(row: Mapping[str, Any]) -> list[str]:
    uids = [str(uid) for uid in row.get("referenced_sop_instance_uids") or []]
    if not uids:
        raise ConfigError("each measurement names the images it was made on")
    return uids


def _code(row: Mapping[str, Any], prefix: str) -> hd.sr.CodedConcept | None:
    value = row.get(f"{prefix}_code_value")
    if not value:
        return None
    return hd.sr.CodedConcept(
        str(value), str(row.get(f"{prefix}_scheme") or ""), str(row.get(f"{prefix}_meaning") or "")
    )


def _measurement(row: Mapping[str, Any]) -> hd.sr.Measurement:
    concept = _code(row, "concept")
    if concept is None or row.get("value") is None or not row.get("unit"):
        raise ConfigError("each measurement needs a concept code, a value and a UCUM unit")
    unit = str(row["unit"])
    return hd.sr.Measurement(
        name=concept,
        value=float(row["value"]),
        unit=hd.sr.CodedConcept(unit, "UCUM", unit),
        method=_code(row, "method"),
        derivation=_code(row, "derivation"),
    )


def _group(
    identifier: str, rows: Sequence[Mapping[str, Any]], images: Mapping[str, Dataset]
) -> Any:
    first = rows[0]
    tracking = hd.sr.TrackingIdentifier(
        uid=str(first.get("tracking_uid") or generate_uid()), identifier=identifier
    )
    site = _code(first, "finding_site")
    algorithm = (
        hd.sr.AlgorithmIdentification(
            name=str(first["algorithm_name"]),
            version=str(first.get("algorithm_version") or __version__),
        )
        if first.get("algorithm_name")
        else None
    )
    common: dict[str, Any] = {
        "tracking_identifier": tracking,
        "finding_type": _code(first, "finding"),
        "finding_sites": [hd.sr.FindingSite(site)] if site else None,
        "measurements": [_measurement(row) for row in rows],
        "algorithm_id": algorithm,
    }
    referenced = [images[uid] for uid in _references(first)]
    frames = [int(n) for n in first.get("referenced_frame_numbers") or []] or None
    if first.get("region_graphic_type"):
        return hd.sr.PlanarROIMeasurementsAndQualitativeEvaluations(
            referenced_region=_region(first, referenced[0], frames), **common
        )
    return hd.sr.MeasurementsAndQualitativeEvaluations(
        source_images=[
            hd.sr.SourceImageForMeasurementGroup.from_source_image(image, frames)
            for image in referenced
        ],
        **common,
    )


def _region(row: Mapping[str, Any], image: Dataset, frames: list[int] | None) -> Any:
    """The row's region: in patient space (SCOORD3D, x y z triples) when it names a
    frame of reference, else in the image's pixels (SCOORD, column row pairs)."""
    data = np.asarray(row.get("region_graphic_data") or [], float)
    kind = str(row["region_graphic_type"])
    frame_of_reference = row.get("region_frame_of_reference_uid")
    if frame_of_reference:
        if data.size % 3:
            raise ConfigError("a region in patient space is a list of x, y, z triples")
        return hd.sr.ImageRegion3D(kind, data.reshape(-1, 3), str(frame_of_reference))
    if data.size % 2:
        raise ConfigError("a region on an image is a list of column, row pairs")
    return hd.sr.ImageRegion(
        graphic_type=kind,
        graphic_data=data.reshape(-1, 2),
        source_image=hd.sr.SourceImageForRegion.from_source_image(image, frames),
    )
