"""WADO-RS frames: chosen frames of one instance, without retrieving the instance.

A header-only scan leaves each instance's pixels on the server, its ``source`` the
instance's WADO-RS URL. :func:`read_frames` fetches the instance's ``/metadata`` and
the frames asked for (``/frames/1,3,…``) in Explicit VR Little Endian, the transfer
syntax every WADO-RS server must offer (the server decodes compressed frames), and
decodes them with pydicom into the stored values, as pydicom's ``pixel_array`` gives
them for the whole file.

Only the frames cross the network: a slice of a 2,000-frame instance costs one frame.
"""

from __future__ import annotations

import json
import re
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.uid import ExplicitVRLittleEndian

from dicomflow.connectors.dicomweb.address import (
    DicomwebAddress,
    DicomwebError,
    DicomwebOptions,
    open_client,
)
from dicomflow.errors import ConfigError
from dicomflow.lake.layout import safe_uid_component

ACCEPT = 'multipart/related; type="application/octet-stream"; transfer-syntax=1.2.840.10008.1.2.1'
INSTANCE_URL = re.compile(r"^(?P<root>.+)/studies/([^/]+)/series/([^/]+)/instances/([^/]+)$")
PIXEL_DESCRIPTION = (
    "00280002",  # Samples per Pixel
    "00280004",  # Photometric Interpretation
    "00280006",  # Planar Configuration
    "00280008",  # Number of Frames
    "00280010",  # Rows
    "00280011",  # Columns
    "00280100",  # Bits Allocated
    "00280101",  # Bits Stored
    "00280102",  # High Bit
    "00280103",  # Pixel Representation
)
# What decoding needs: a search that leaves any of these out sends us to /metadata.
REQUIRED = (
    "SamplesPerPixel",
    "PhotometricInterpretation",
    "Rows",
    "Columns",
    "BitsAllocated",
    "BitsStored",
    "PixelRepresentation",
)
# Colour models that exist only inside compressed data: a server that decodes such
# frames does not say which model the decoded values are in.
COMPRESSED_ONLY = frozenset({"YBR_FULL_422", "YBR_PARTIAL_420", "YBR_ICT", "YBR_RCT"})


@dataclass(frozen=True)
class InstanceLocation:
    """One instance on a DICOMweb server: the server and the instance's three UIDs."""

    address: DicomwebAddress
    study: str
    series: str
    sop: str

    def __post_init__(self) -> None:
        for uid in (self.study, self.series, self.sop):
            if not uid or safe_uid_component(uid) != uid:
                raise ConfigError("an instance's URL names UIDs that are not valid UIDs")

    @classmethod
    def parse(cls, url: str) -> InstanceLocation:
        """``dicomweb+https://host/root/studies/S/series/R/instances/I`` (a header-only
        scan's ``source``)."""
        found = INSTANCE_URL.match(url)
        if found is None:
            raise ConfigError("an instance's URL ends in /studies/S/series/R/instances/I")
        return cls(DicomwebAddress.parse(found["root"]), *found.groups()[1:])

    @property
    def url(self) -> str:
        return (
            f"{self.address.base_url}/studies/{self.study}/series/{self.series}"
            f"/instances/{self.sop}"
        )


def read_frames(
    location: InstanceLocation, options: DicomwebOptions, frames: Sequence[int]
) -> np.ndarray:
    """Frames ``frames`` (numbered from 1) of one instance, as an array of shape
    (frames, rows, columns[, samples]) holding the stored values."""
    if not frames or any(int(n) < 1 for n in frames):
        raise ConfigError("frames are numbered from 1")
    client = open_client(location.address, options)
    dataset = _metadata(client, location, frames)
    missing = [keyword for keyword in REQUIRED if keyword not in dataset]
    if missing:
        raise DicomwebError(f"WADO-RS metadata: the server does not describe {', '.join(missing)}")
    count = int(dataset.get("NumberOfFrames") or 1)
    if max(frames) > count:
        raise ConfigError(f"the instance has {count} frame(s)")
    photometric = str(dataset.get("PhotometricInterpretation", ""))
    if photometric in COMPRESSED_ONLY:
        raise DicomwebError(
            f"WADO-RS frames: {photometric} frames come back decoded in an unnamed colour "
            "model; retrieve the instance instead"
        )
    parts = _frames(client, location, frames)
    if len(parts) != len(frames):
        raise DicomwebError(f"WADO-RS frames: asked for {len(frames)}, got {len(parts)}")
    return _decode(dataset, parts)


def _metadata(client: Any, location: InstanceLocation, frames: Sequence[int]) -> Dataset:
    """The instance's pixel description: asked for by QIDO-RS ``includefield`` (a few
    hundred bytes), or read from its WADO-RS metadata when the search leaves it out
    (an enhanced multi-frame header can weigh more than its frames)."""
    search = (
        f"{location.address.base_url}/studies/{location.study}/series/{location.series}"
        f"/instances?SOPInstanceUID={location.sop}"
        + "".join(f"&includefield={tag}" for tag in PIXEL_DESCRIPTION)
    )
    try:
        found = _described(client, search, "QIDO-RS")
    except DicomwebError:  # a server that cannot search by these keys: read the metadata
        found = None
    if (
        found is not None
        and all(k in found for k in REQUIRED)
        and ("NumberOfFrames" in found or max(frames) == 1)
    ):
        return found
    described = _described(client, f"{location.url}/metadata", "WADO-RS metadata")
    if described is None:
        raise DicomwebError("WADO-RS metadata: the answer describes no instance")
    return described


def _described(client: Any, url: str, action: str) -> Dataset | None:
    """The pixel description in the first DICOM JSON object ``url`` answers with."""
    try:
        answer = client._http_get(url, headers={"Accept": "application/dicom+json"})
        if answer.status_code == 204:  # a search that matched nothing
            return None
        items = json.loads(answer.content)
        item = items[0] if isinstance(items, list) and items else None
        if not isinstance(item, dict):
            return None
        # Only the pixel description is read: the rest of the header is the scan's.
        return Dataset.from_json({tag: item[tag] for tag in PIXEL_DESCRIPTION if tag in item})
    except json.JSONDecodeError:
        raise DicomwebError(f"{action}: the server's answer is not JSON") from None
    except Exception as exc:
        raise DicomwebError.wrap(action, exc) from None


def _frames(client: Any, location: InstanceLocation, frames: Sequence[int]) -> list[bytes]:
    numbers = ",".join(str(int(n)) for n in frames)
    try:
        answer = client._http_get(f"{location.url}/frames/{numbers}", headers={"Accept": ACCEPT})
        kind = answer.headers.get("Content-Type", "")
        if "transfer-syntax=" in kind and ExplicitVRLittleEndian not in kind:
            raise DicomwebError("WADO-RS frames: the server answered in another transfer syntax")
        return list(client._decode_multipart_message(answer, stream=False))
    except Exception as exc:
        raise DicomwebError.wrap("WADO-RS frames", exc) from None


def _decode(metadata: Dataset, parts: list[bytes]) -> np.ndarray:
    """The stored values of native frames, decoded by pydicom with the instance's pixel
    description."""
    dataset = Dataset(metadata)
    dataset.NumberOfFrames = len(parts)
    dataset.file_meta = FileMetaDataset()
    dataset.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
    expected = _frame_bytes(dataset)
    if any(len(part) < expected for part in parts):
        raise DicomwebError("WADO-RS frames: a frame is shorter than the image it belongs to")
    dataset.PixelData = b"".join(part[:expected] for part in parts)
    dataset["PixelData"].VR = "OW" if int(dataset.BitsAllocated) > 8 else "OB"
    samples = int(dataset.get("SamplesPerPixel") or 1)
    shape = (len(parts), int(dataset.Rows), int(dataset.Columns), samples)
    return dataset.pixel_array.reshape(shape if samples > 1 else shape[:3])


def _frame_bytes(dataset: Dataset) -> int:
    """The bytes of one native frame (Bits Allocated 1 is refused: its frames are not
    whole bytes in the instance, and servers pad each one differently)."""
    bits = int(dataset.get("BitsAllocated") or 0)
    if bits not in (8, 16, 32, 64) or "Rows" not in dataset or "Columns" not in dataset:
        raise DicomwebError("WADO-RS frames: the instance's pixel description is not supported")
    samples = int(dataset.get("SamplesPerPixel") or 1)
    return int(dataset.Rows) * int(dataset.Columns) * samples * bits // 8
