"""STOW-RS: store files on a DICOMweb server, with an outcome per file.

Files are posted in requests of at most ``MAX_REQUEST_BYTES`` (by file size),
so memory stays bounded. The server's answer (Referenced and Failed SOP
Sequences) gives each instance its outcome; a request that fails as a whole
marks each of its files with the HTTP status, never with data from the files.
"""

from __future__ import annotations

import warnings
from collections.abc import Iterator, Sequence
from pathlib import Path

import pydicom
from dicomweb_client.api import DICOMwebClient
from pydicom.dataset import Dataset

from dicomflow.connectors.dicomweb.address import (
    DicomwebAddress,
    DicomwebError,
    DicomwebOptions,
    open_client,
)
from dicomflow.connectors.outcomes import StoreOutcome

MAX_REQUEST_BYTES = 64 * 1024 * 1024
PROCESSING_FAILURE = 0x0110


def _requests(paths: Sequence[Path]) -> Iterator[list[Path]]:
    group: list[Path] = []
    size = 0
    for path in paths:
        length = path.stat().st_size if path.exists() else 0
        if group and size + length > MAX_REQUEST_BYTES:
            yield group
            group, size = [], 0
        group.append(path)
        size += length
    if group:
        yield group


def _read(path: Path) -> Dataset:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return pydicom.dcmread(path)


def _answer(exc: Exception) -> Dataset | None:
    """The STOW answer carried by an HTTP error (409: some instances failed), if any."""
    response = getattr(exc, "response", None)
    try:
        return Dataset.from_json(response.json()) if response is not None else None
    except Exception:
        return None


def _outcomes(answer: Dataset, sent: dict[str, tuple[Path, str]]) -> list[StoreOutcome]:
    found: dict[str, StoreOutcome] = {}
    for item in answer.get("ReferencedSOPSequence", []):
        uid = str(item.get("ReferencedSOPInstanceUID", ""))
        if uid in sent:
            warning = int(item.get("WarningReason", 0) or 0)
            path, sop_class = sent[uid]
            found[uid] = StoreOutcome(str(path), warning, "", sop_class, uid)
    for item in answer.get("FailedSOPSequence", []):
        uid = str(item.get("ReferencedSOPInstanceUID", ""))
        if uid in sent:
            reason = int(item.get("FailureReason", PROCESSING_FAILURE) or PROCESSING_FAILURE)
            path, sop_class = sent[uid]
            message = f"refused (failure reason 0x{reason:04X})"
            found[uid] = StoreOutcome(str(path), reason, message, sop_class, uid)
    return [
        found.get(uid) or StoreOutcome(str(path), None, "not in the server's answer", cls, uid)
        for uid, (path, cls) in sent.items()
    ]


def stow(
    address: DicomwebAddress, paths: Sequence[Path], options: DicomwebOptions | None = None
) -> list[StoreOutcome]:
    """Store every file in ``paths``; an outcome per file (unreadable files are not sent).

    Never raises for the server's sake: a request that fails (unreachable, refused,
    timed out) gives its files an outcome that says so.
    """
    options = options or DicomwebOptions()
    client = open_client(address, options)
    outcomes: list[StoreOutcome] = []
    for group in _requests(paths):
        datasets: list[Dataset] = []
        sent: dict[str, tuple[Path, str]] = {}
        for path in group:
            try:
                dataset = _read(path)
                uid, sop_class = str(dataset.SOPInstanceUID), str(dataset.SOPClassUID)
            except Exception as exc:
                reason = f"not sendable ({type(exc).__name__})"
                outcomes.append(StoreOutcome(str(path), None, reason))
                continue
            datasets.append(dataset)
            sent[uid] = (path, sop_class)
        if not datasets:
            continue
        answer = _post(client, datasets)
        if isinstance(answer, DicomwebError):
            outcomes.extend(
                StoreOutcome(str(p), None, f"not stored ({answer})", c, u)
                for u, (p, c) in sent.items()
            )
        else:
            outcomes.extend(_outcomes(answer, sent))
    return outcomes


def _post(client: DICOMwebClient, datasets: list[Dataset]) -> Dataset | DicomwebError:
    """The server's STOW answer, or the error when the request failed without one."""
    try:
        return client.store_instances(datasets)
    except Exception as exc:
        return _answer(exc) or DicomwebError.wrap("STOW-RS", exc)
