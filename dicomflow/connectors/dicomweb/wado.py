"""WADO-RS: fetch a series (or named instances) into a folder, one file per instance.

Instances are asked for in their stored transfer syntax (``transfer-syntax=*``),
streamed part by part, and each is written to a temporary name and renamed to
``<folder>/<SOPInstanceUID>.dcm`` (a validated UID), so a file that exists is
complete. Instances the caller did not ask for are not kept.
"""

from __future__ import annotations

import uuid
from collections.abc import Collection, Iterable
from pathlib import Path

import pydicom
from pydicom.dataelem import RawDataElement
from pydicom.dataset import Dataset

from dicomflow.connectors.dicomweb.address import (
    DicomwebAddress,
    DicomwebError,
    DicomwebOptions,
    open_client,
)
from dicomflow.lake.layout import safe_uid_component

ANY_SYNTAX = (("application/dicom", "*"),)


def _truncated(dataset: Dataset) -> bool:
    """True when a value is shorter than its length said (the part was cut short): written
    out again, it would look complete."""
    raws = [dataset.get_item(tag) for tag in dataset.keys()]  # noqa: SIM118 (iterating converts)
    return any(
        isinstance(raw, RawDataElement)
        and raw.value is not None
        and raw.length != 0xFFFFFFFF
        and len(raw.value) < raw.length
        for raw in raws
    )


def _save(dataset: Dataset, folder: Path, wanted: Collection[str]) -> tuple[str, Path] | None:
    uid = str(dataset.get("SOPInstanceUID", ""))
    if uid not in wanted or _truncated(dataset):
        return None
    target = folder / f"{safe_uid_component(uid)}.dcm"
    temporary = folder / f".{target.name}.{uuid.uuid4().hex}"
    pydicom.dcmwrite(temporary, dataset, enforce_file_format=False)
    temporary.replace(target)
    return uid, target


def _save_all(datasets: Iterable[Dataset], folder: Path, wanted: Collection[str]) -> dict:
    saved: dict[str, Path] = {}
    for dataset in datasets:
        result = _save(dataset, folder, wanted)
        if result is not None:
            saved[result[0]] = result[1]
    return saved


def retrieve_series(
    address: DicomwebAddress,
    options: DicomwebOptions,
    study_uid: str,
    series_uid: str,
    folder: Path,
    wanted: Collection[str],
) -> dict[str, Path]:
    """Fetch the series whole; keep the instances in ``wanted``. SOP UID → path."""
    folder.mkdir(parents=True, exist_ok=True)
    client = open_client(address, options)
    try:
        return _save_all(
            client.iter_series(study_uid, series_uid, media_types=ANY_SYNTAX), folder, wanted
        )
    except Exception as exc:
        raise DicomwebError.wrap("WADO-RS series", exc) from None


def retrieve_instances(
    address: DicomwebAddress,
    options: DicomwebOptions,
    study_uid: str,
    series_uid: str,
    folder: Path,
    sop_uids: Iterable[str],
) -> dict[str, Path]:
    """Fetch named instances one by one; an instance that fails is skipped (not raised)."""
    folder.mkdir(parents=True, exist_ok=True)
    client = open_client(address, options)
    saved: dict[str, Path] = {}
    for uid in sop_uids:
        try:
            dataset = client.retrieve_instance(study_uid, series_uid, uid, media_types=ANY_SYNTAX)
        except Exception:  # noqa: S112 (reported by the caller as not retrieved)
            continue
        saved.update(_save_all([dataset], folder, {uid}))
    return saved
