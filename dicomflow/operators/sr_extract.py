"""The ``sr`` operator: every Structured Report as rows of ``sr_content`` and ``measurements``.

An instance operator that needs no pixels. It reads an SR document from the element
tree the scan already parsed (no second read of the file; a document whose values the
scan left in the file is read again with pydicom) and makes its rows with
:mod:`dicomflow.sr`. An instance that is not an SR passes untouched.

A document with a broken or cyclic by-reference relationship or a missing concept
name keeps the rows of its valid items, ``flagged``, and gets one error row of stage
``sr`` (code ``malformed``); its ``instances`` row stays, the fault named in its
``warnings`` (:meth:`~dicomflow.records.InstanceRecord.with_fault`).
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, BinaryIO, ClassVar, cast

import pydicom
from fsspec.core import url_to_fs

from dicomflow.errors import DicomReadError, ErrorCode
from dicomflow.operators.base import OperatorKind, Outputs, RunSettings, TableOutput, map_records
from dicomflow.records import Batch, InstanceRecord
from dicomflow.schemas.spec import SrOperator
from dicomflow.sr import (
    CONTENT_SCHEMA,
    CONTENT_TABLE,
    CONTENT_VERSION,
    MEASUREMENTS_SCHEMA,
    MEASUREMENTS_TABLE,
    MEASUREMENTS_VERSION,
    SrExtraction,
    extract,
    is_sr_class,
)
from dicomflow.sr.items import Item, NotInMemory

SOP_CLASS_UID = 0x00080016


@dataclass(frozen=True)
class SrExtract:
    """Extract the rows of each SR document of a batch (see the module's docstring)."""

    content: bool = True
    measurements: bool = True
    storage_options: dict[str, Any] = field(default_factory=dict, repr=False)

    name: ClassVar[str] = "sr"
    kind: ClassVar[OperatorKind] = "instance"
    Config: ClassVar[type[SrOperator]] = SrOperator
    outputs: ClassVar[Outputs] = Outputs(
        tables=(
            TableOutput(CONTENT_TABLE, CONTENT_SCHEMA, CONTENT_VERSION),
            TableOutput(MEASUREMENTS_TABLE, MEASUREMENTS_SCHEMA, MEASUREMENTS_VERSION),
        )
    )
    needs_pixels: ClassVar[bool] = False

    @classmethod
    def build(cls, config: SrOperator, run: RunSettings) -> SrExtract:
        return cls(config.content, config.measurements, dict(run.source_storage_options))

    def __call__(self, batch: Batch) -> Batch:
        return map_records(batch, self.name, self._one)

    def _one(self, record: InstanceRecord) -> InstanceRecord:
        if record.header is None or not is_sr_class(_sop_class(record)):
            return record
        extraction = self._extract(record)
        sop = (record.outputs.get("instances") or {}).get("SOPInstanceUID")
        if sop:  # the row's UID (a de-identified one, after anonymize) names the document
            for row in (*extraction.content, *extraction.measurements):
                row["SOPInstanceUID"] = sop
        done = record.with_output(CONTENT_TABLE, extraction.content).with_output(
            MEASUREMENTS_TABLE, extraction.measurements
        )
        if extraction.faults:
            return done.with_fault(self.name, ErrorCode.MALFORMED, extraction.fault_message())
        return done

    def _extract(self, record: InstanceRecord) -> SrExtraction:
        assert record.header is not None
        options = {"content": self.content, "measurements": self.measurements}
        try:
            return extract(Item(record.header.elements), **options)
        except NotInMemory:
            pass  # a value the scan left in the file: read the document whole
        return extract(self._read(record.ref.url), **options)

    def _read(self, url: str) -> pydicom.Dataset:
        try:
            with _open(url, self.storage_options) as fp, warnings.catch_warnings():
                warnings.simplefilter("ignore")  # pydicom's warnings quote values
                return pydicom.dcmread(fp, force=True, stop_before_pixels=True)
        except OSError as exc:
            raise DicomReadError(
                f"cannot read the source ({type(exc).__name__})", code=ErrorCode.UNREADABLE
            ) from exc


def _sop_class(record: InstanceRecord) -> str | None:
    row = record.outputs.get("instances")
    if row is not None and row.get("SOPClassUID"):
        return str(row["SOPClassUID"])
    header = record.header
    for element in header.elements if header is not None else ():
        if element.tag == SOP_CLASS_UID:
            value = element.value
            if isinstance(value, bytes):
                return value.decode("latin-1").strip("\x00 ")
            return None if value is None else str(value)
        if element.tag > SOP_CLASS_UID:
            break
    return None


def _open(url: str, storage_options: dict[str, Any]) -> BinaryIO:
    if "://" not in url:
        return Path(url).open("rb")
    fs, path = url_to_fs(url, **storage_options)
    return cast(BinaryIO, fs.open(path, "rb"))
