"""WADO-RS: fetch a series (or named instances) into a folder, one file per instance.

Instances are asked for in their stored transfer syntax (``transfer-syntax=*``) and
streamed part by part. Each part lands byte for byte as the server sent it, written
to a temporary name and renamed to ``<folder>/<SOPInstanceUID>.dcm`` (a validated
UID), so a file that exists is complete: a part stored without a preamble or file
meta (which Orthanc serves as it holds them) is the reader's to judge, never
rewritten or dropped here. A part is named by the SOP Instance UID pydicom finds in
it (``force``). A part that is not DICOM, is cut short (a value shorter than its
length) or names an instance the caller did not ask for is not kept: the caller
reports the instances it lacks as not retrieved.

dicomweb-client parses every part with pydicom before handing it over, so the GET
(with its retries) and the multipart decoding are taken from its client's own
methods, and the bytes are kept.
"""

from __future__ import annotations

import uuid
from collections.abc import Collection, Iterable, Iterator
from io import BytesIO
from pathlib import Path

import pydicom
from dicomweb_client.api import DICOMwebClient
from pydicom.dataelem import RawDataElement
from pydicom.dataset import Dataset

from dicomflow.connectors.dicomweb.address import (
    DicomwebAddress,
    DicomwebError,
    DicomwebOptions,
    open_client,
)
from dicomflow.lake.layout import safe_uid_component

ACCEPT = 'multipart/related; type="application/dicom"; transfer-syntax=*'


def _truncated(dataset: Dataset) -> bool:
    """True when a value is shorter than its length said (the part was cut short)."""
    raws = [dataset.get_item(tag) for tag in dataset.keys()]  # noqa: SIM118 (iterating converts)
    return any(
        isinstance(raw, RawDataElement)
        and raw.value is not None
        and raw.length != 0xFFFFFFFF
        and len(raw.value) < raw.length
        for raw in raws
    )


def sop_instance_uid(part: bytes) -> str | None:
    """The SOP Instance UID of a whole instance, read by pydicom (``force``: with or
    without a preamble and file meta); None for a part that is not DICOM, names no
    instance, or was cut short."""
    try:
        ds = pydicom.dcmread(BytesIO(part), force=True)
        value = ds.get("SOPInstanceUID")
        if not value or _truncated(ds):
            return None
    except Exception:  # any parse failure: not an instance we can name
        return None
    return str(value)


def _land(part: bytes, folder: Path, wanted: Collection[str]) -> tuple[str, Path] | None:
    """Write ``part`` as it came, named by its SOP Instance UID; return the UID and path,
    or None for a part that names no whole instance or one not asked for (reported by
    the caller as not retrieved)."""
    uid = sop_instance_uid(part)
    if uid is None or uid not in wanted:
        return None
    target = folder / f"{safe_uid_component(uid)}.dcm"
    temporary = folder / f".{target.name}.{uuid.uuid4().hex}"
    temporary.write_bytes(part)
    temporary.replace(target)
    return uid, target


def _parts(client: DICOMwebClient, url: str) -> Iterator[bytes]:
    """The parts of a WADO-RS response, streamed, as the server sent them (a server
    that answers with one bare ``application/dicom`` body gives one part)."""
    response = client._http_get(url, headers={"Accept": ACCEPT}, stream=True)
    if response.headers.get("Content-Type", "").startswith("application/dicom"):
        yield response.content
        return
    yield from client._decode_multipart_message(response, stream=True)


def _land_all(parts: Iterable[bytes], folder: Path, wanted: Collection[str]) -> dict:
    landed: dict[str, Path] = {}
    for part in parts:
        result = _land(part, folder, wanted)
        if result is not None:
            landed[result[0]] = result[1]
    return landed


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
    url = f"{address.base_url}/studies/{study_uid}/series/{series_uid}"
    try:
        return _land_all(_parts(client, url), folder, wanted)
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
    landed: dict[str, Path] = {}
    for uid in sop_uids:
        url = f"{address.base_url}/studies/{study_uid}/series/{series_uid}/instances/{uid}"
        try:
            landed.update(_land_all(_parts(client, url), folder, {uid}))
        except Exception:  # noqa: S112 (reported by the caller as not retrieved)
            continue
    return landed
