"""Header-only scans of a DICOMweb server: QIDO-RS finds the instances, WADO-RS
``/metadata`` brings their headers, and no pixel data is transferred.

This is cohort selection over a remote archive: the ``instances`` table is filled
as a scan of the files would fill it, from the server's DICOM JSON, one request per
series. Bulk data (Pixel Data, large binary values) stays on the server: each such
element keeps its place in the row as a bulk data reference to the instance's URL,
and ``has_pixel_data`` says whether the instance has pixels (for a server that
leaves Pixel Data out of its metadata, whether it has the Image Pixel module). A
series the server cannot describe, or an instance missing from its answer, is an
error row.
"""

from __future__ import annotations

import json
import logging
import warnings
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass, field, replace
from io import BytesIO
from itertools import groupby
from typing import Any

from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.tag import Tag
from pydicom.uid import ExplicitVRLittleEndian

from dicomflow.connectors.dicomweb.address import (
    DicomwebAddress,
    DicomwebError,
    DicomwebOptions,
    open_client,
)
from dicomflow.connectors.dicomweb.qido import search_instances
from dicomflow.connectors.files import Listing
from dicomflow.dicom.header import read_header
from dicomflow.errors import ErrorCode, SourceError
from dicomflow.records import Element, Header, InstanceRecord, SourceRef

logger = logging.getLogger(__name__)

ACCEPT = "application/dicom+json"
STAGE = "read"
PIXEL_TAGS = frozenset({0x7FE00010, 0x7FE00008, 0x7FE00009})
UNDEFINED_LENGTH = 0xFFFFFFFF
IMAGE_PIXEL_KEYWORDS = ("Rows", "Columns", "BitsAllocated")


@dataclass(frozen=True)
class DicomwebMetadata:
    """A listing source over a DICOMweb server: ``query`` on the client (QIDO-RS),
    ``fetch`` on workers (WADO-RS metadata, a series per request)."""

    address: DicomwebAddress
    options: DicomwebOptions
    query_keys: Mapping[str, str] = field(default_factory=dict)

    def query(self) -> Listing:
        """Every instance the query matches, as a reference to its WADO-RS URL."""
        found = search_instances(self.address, self.query_keys, self.options)
        refs = [
            SourceRef(
                f"{self.address}/studies/{f.study_uid}/series/{f.series_uid}/instances/{f.sop_uid}"
            )
            for f in found
        ]
        return Listing(sorted(refs, key=lambda r: r.url), [])

    def fetch(self, refs: Iterable[SourceRef]) -> Iterator[InstanceRecord]:
        """The header of each instance from its series' metadata (one request a series
        among ``refs``); failures become records with an error."""
        client = open_client(self.address, self.options)
        for (study, series), group in groupby(refs, key=_series_of):
            members = list(group)
            try:
                described = self._series_metadata(client, study, series)
            except SourceError as exc:
                for ref in members:
                    yield InstanceRecord(ref).with_error(STAGE, ErrorCode.UNREADABLE, str(exc))
                continue
            for ref in members:
                item = described.get(ref.url.rsplit("/", 1)[-1])
                if item is None:
                    message = "the server's metadata of its series does not describe it"
                    yield InstanceRecord(ref).with_error(STAGE, ErrorCode.NOT_RETRIEVED, message)
                    continue
                try:
                    yield InstanceRecord(ref, header=header_from_json(item))
                except Exception:  # the server's JSON for this instance only
                    message = "the server's metadata of this instance is not valid DICOM JSON"
                    yield InstanceRecord(ref).with_error(STAGE, ErrorCode.MALFORMED, message)

    def _series_metadata(self, client: Any, study: str, series: str) -> dict[str, Any]:
        """SOP Instance UID → DICOM JSON object, for one series."""
        url = f"{self.address.base_url}/studies/{study}/series/{series}/metadata"
        try:
            response = client._http_get(url, headers={"Accept": ACCEPT})
            items = json.loads(response.content)
        except json.JSONDecodeError:
            raise DicomwebError("WADO-RS metadata: the server's answer is not JSON") from None
        except Exception as exc:
            raise DicomwebError.wrap("WADO-RS metadata", exc) from None
        if not isinstance(items, list):
            raise DicomwebError("WADO-RS metadata: the answer is not a list of DICOM JSON objects")
        described = {}
        for item in items:
            uid = (
                item.get("00080018", {}).get("Value", [None])[0] if isinstance(item, dict) else None
            )
            if isinstance(uid, str):
                described[uid] = item
        return described


def _sop_instance_uid(item: Any) -> str | None:
    """The SOP Instance UID of one DICOM JSON object; None when it names none."""
    element = item.get("00080018") if isinstance(item, dict) else None
    values = element.get("Value") if isinstance(element, dict) else None
    if isinstance(values, list) and values and isinstance(values[0], str):
        return values[0]
    return None


def _series_of(ref: SourceRef) -> tuple[str, str]:
    parts = ref.url.split("/")
    return parts[-5], parts[-3]  # …/studies/<study>/series/<series>/instances/<sop>


def header_from_json(item: Mapping[str, Any]) -> Header:
    """A :class:`Header` from one instance's DICOM JSON, read by the same reader as a
    file (the data set is encoded as explicit VR little endian first), so its row is
    what a scan of the file gives. Bulk data elements are kept as references (not
    read); an image whose Pixel Data the server leaves out of its metadata (Orthanc
    does) is known by its Image Pixel module (Rows, Columns, Bits Allocated)."""
    kept, bulk = _without_bulk(item)
    with warnings.catch_warnings():  # pydicom's words on a value may quote it
        warnings.simplefilter("ignore")
        ds = Dataset.from_json(kept)
        ds.file_meta = FileMetaDataset()
        ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
        encoded = BytesIO()
        ds.save_as(encoded, enforce_file_format=True)
    data = encoded.getvalue()
    header = read_header(BytesIO(data), size=len(data))
    elements = list(header.elements)
    pixel: tuple[int, str] | None = None
    for tag, vr in bulk:
        if tag in PIXEL_TAGS:
            pixel = (tag, vr)
        else:
            elements.append(Element(tag, vr, None, None, UNDEFINED_LENGTH))
    if pixel is None and all(k in ds for k in IMAGE_PIXEL_KEYWORDS):
        pixel = (0x7FE00010, "OW" if int(ds.BitsAllocated or 0) > 8 else "OB")
    elements.sort(key=lambda e: e.tag)
    return replace(
        header,
        elements=tuple(elements),
        file_meta=(),  # a file's, and there is no file
        transfer_syntax_uid=None,
        pixel_data_tag=pixel[0] if pixel else None,
        pixel_data_vr=pixel[1] if pixel else None,
        pixel_data_offset=None,
        pixel_data_length=None,
    )


def _without_bulk(item: Mapping[str, Any]) -> tuple[dict[str, Any], list[tuple[int, str]]]:
    """``item`` without its top-level bulk data elements (and those nested in sequences
    dropped), plus the top-level ones' tags and VRs."""
    bulk: list[tuple[int, str]] = []
    kept: dict[str, Any] = {}
    for key, element in item.items():
        if isinstance(element, dict) and "BulkDataURI" in element:
            bulk.append((int(Tag(key)), str(element.get("vr", "UN"))))
            continue
        kept[key] = _nested_without_bulk(element)
    return kept, bulk


def _nested_without_bulk(element: Any) -> Any:
    if not isinstance(element, dict) or element.get("vr") != "SQ":
        return element
    items = [
        {k: _nested_without_bulk(v) for k, v in i.items() if not _is_bulk(v)}
        for i in element.get("Value", [])
        if isinstance(i, dict)
    ]
    return {**element, "Value": items}


def _is_bulk(element: Any) -> bool:
    return isinstance(element, dict) and "BulkDataURI" in element
