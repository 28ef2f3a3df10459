"""De-identified outputs carry nothing of what was planted in the inputs.

About twenty synthetic files carry a unique marker (``QZX`` + six letters or
digits) in every attribute of the shipped PS3.15 Annex E table that can hold
text, unique dates and times in every DA/TM/DT row, unique UIDs under one root,
names in ISO_IR 100 and UTF-8, markers in nested and private sequences, in a
private element stored as UN, in curves, overlays, the file meta, and in the
folder and file names. ``ingest --anonymize --dicom --pixels`` runs through the
CLI; then every byte of the lake (raw, and decoded: Parquet values, Blosc
chunks, base64 inline binaries) and the captured logs are searched for every
planted value in several encodings. Further tests cover the honest-broker
mapping, determinism across cluster sizes and keys, configuration errors and
the burned-in policy.
"""

from __future__ import annotations

import base64
import contextlib
import datetime as dt
import io
import json
import logging
import os
import random
import re
import string
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar

import numcodecs
import numpy as np
import pyarrow.parquet as pq
import pydicom
import pytest
import zarr
from distributed import Client
from distributed.diagnostics.plugin import SchedulerPlugin
from pydicom.datadict import dictionary_VM
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.encaps import encapsulate
from pydicom.sequence import Sequence
from pydicom.uid import (
    CTImageStorage,
    ExplicitVRLittleEndian,
    ImplicitVRLittleEndian,
    JPEG2000Lossless,
    MRImageStorage,
    SecondaryCaptureImageStorage,
    UltrasoundImageStorage,
)

from dicomflow.anonymize.keys import SecretKey
from dicomflow.anonymize.profile import Action, Profile, load_table
from dicomflow.anonymize.pseudonyms import Pseudonymizer
from dicomflow.api import AnonymizeSettings, deidentifier, ingest, read_lake
from dicomflow.dicom.header import read_header
from tests.conftest import REPO

pytestmark = pytest.mark.slow

BASIC_TEXT_SR = "1.2.840.10008.5.1.4.1.1.88.11"
# Every planted UID starts with this root, so any occurrence of it in an output is a leak.
UID_ROOT = "1.2.826.0.1.3680043.8.498.7731."
PREFIX = "QZX"
# Set per instance (series, patient) rather than per attribute.
STRUCTURAL = frozenset({0x00080018, 0x0020000D, 0x0020000E, 0x00200052, 0x00100010, 0x00100020})
TEXT_VRS = frozenset({"AE", "CS", "SH", "LO", "ST", "LT", "UT", "UC"})
CONTENT_SEQUENCE = 0x0040A730
# Keys as a key file holds them (``openssl rand -hex 32``): the file's bytes are the key.
KEY_A = b"5f1c0a9e3d7b2c4e6a8f0b1d3c5e7a9b2d4f6a8c0e1b3d5f7a9c2e4b6d8f0a1c"
KEY_B = b"a0b1c2d3e4f5061728394a5b6c7d8e9fa0b1c2d3e4f5061728394a5b6c7d8e9f"
WORDS = ("Müller", "Jürgen", "山田", "太郎")
US_RULE_REGION = (0, 0, 16, 4)  # x, y, width, height: the "text band" of the US image
PER_RUN_COLUMNS = ("run_id", "scanned_at", "modified")


# --------------------------------------------------------------------------- planting


@dataclass
class Secrets:
    """Everything planted that must not survive de-identification."""

    markers: set[str] = field(default_factory=set)
    dates: set[str] = field(default_factory=set)
    times: set[str] = field(default_factory=set)
    datetimes: set[str] = field(default_factory=set)
    uids: set[str] = field(default_factory=set)
    numbers: set[str] = field(default_factory=set)
    names: set[str] = field(default_factory=set)  # folder and file names


class Planter:
    """Unique, seeded values for every VR that can carry one."""

    def __init__(self, seed: int) -> None:
        self.rng = random.Random(seed)
        self.secrets = Secrets()
        self.next_uid = 100000
        self.actions = Profile().actions

    def marker(self) -> str:
        while True:
            token = PREFIX + "".join(self.rng.choices(string.ascii_uppercase + string.digits, k=6))
            if token not in self.secrets.markers:
                self.secrets.markers.add(token)
                return token

    def date(self) -> str:
        while True:
            year, month, day = (
                self.rng.randint(1901, 1989),
                self.rng.randint(1, 12),
                self.rng.randint(1, 28),
            )
            value = f"{year}{month:02d}{day:02d}"
            if value not in self.secrets.dates:
                self.secrets.dates.add(value)
                return value

    def time(self) -> str:
        rng = self.rng
        value = (
            f"{rng.randint(0, 23):02d}{rng.randint(0, 59):02d}{rng.randint(0, 59):02d}"
            f".{rng.randint(100000, 999999)}"
        )
        self.secrets.times.add(value)
        return value

    def datetime(self) -> str:
        value = self.date() + self.time()
        self.secrets.datetimes.add(value)
        return value

    def uid(self) -> str:
        self.next_uid += 1
        value = f"{UID_ROOT}{self.next_uid}"
        self.secrets.uids.add(value)
        return value

    def number(self, digits: tuple[int, int]) -> str:
        """A unique DS (``dddd.dddd``) or IS (nine digits) value."""
        while True:
            whole = str(self.rng.randint(10 ** (digits[0] - 1), 10 ** digits[0] - 1))
            # no trailing zero, so the value reads back the same from a float column
            fraction = self.rng.randint(100, 999) * 10 + self.rng.randint(1, 9)
            value = f"{whole}.{fraction}" if digits[1] else whole
            if value not in self.secrets.numbers:
                self.secrets.numbers.add(value)
                return value

    def value(self, vr: str, given: str) -> Any:
        """A unique planted value for ``vr`` (None for VRs that cannot carry one)."""
        if vr in TEXT_VRS:
            return self.marker()
        if vr == "PN":
            return f"{self.marker()}^{given}"
        if vr == "DA":
            return self.date()
        if vr == "TM":
            return self.time()
        if vr == "DT":
            return self.datetime()
        if vr == "UI":
            return self.uid()
        if vr == "DS":
            return self.number((4, 4))
        if vr == "IS":
            return self.number((9, 0))
        if vr == "UR":
            return f"https://{self.marker().lower()}.example.org/"
        return None  # AS, US: too short to be told apart from other values

    def values(self, tag: int, vr: str, given: str) -> Any:
        """As many planted values as the attribute's VM asks for (two for ``1-n``)."""
        if vr in ("OB", "UN"):
            return (self.marker() + " ").encode()
        vm = dictionary_VM(tag)
        count = 2 if "n" in vm else int(vm.split("-")[0])
        values = [self.value(vr, given) for _ in range(count)]
        if values[0] is None:
            return None
        return values[0] if count == 1 else values

    def private_block(self, ds: Dataset, group: int) -> None:
        """A private creator, private text, a private UN element and a private sequence."""
        ds.add_new((group, 0x0010), "LO", f"{self.marker()} CREATOR")
        ds.add_new((group, 0x1010), "LO", self.marker())
        ds.add_new((group, 0x1011), "UN", (self.marker() + " ").encode())
        item = Dataset()
        item.add_new((group, 0x0010), "LO", f"{self.marker()} INNER")
        item.add_new((group, 0x1001), "SH", self.marker())
        item.InstitutionName = self.marker()
        ds.add_new((group, 0x1012), "SQ", Sequence([item]))

    def item(self, given: str, *, unlisted_text: bool) -> Dataset:
        """A sequence item: listed attributes at two depths, a private block at depth two,
        and (where the enclosing sequence's action covers it) unlisted free text."""
        item = Dataset()
        item.ReferencedSOPClassUID = CTImageStorage
        item.ReferencedSOPInstanceUID = self.uid()
        item.InstitutionName = self.marker()
        item.PersonName = f"{self.marker()}^{given}"
        item.Date = self.date()
        if unlisted_text:
            item.TextValue = self.marker()
        inner = Dataset()
        inner.CodeValue = "121311"
        inner.CodingSchemeDesignator = "DCM"
        inner.CodeMeaning = "Localizer"
        inner.InstitutionAddress = self.marker()
        inner.ReferringPhysicianName = f"{self.marker()}^{given}"
        inner.StudyDate = self.date()
        inner.StudyInstanceUID = self.uid()
        self.private_block(inner, 0x0013)
        item.PurposeOfReferenceCodeSequence = Sequence([inner])
        return item

    def plant_table(self, ds: Dataset, given: str, skip: frozenset[int] = frozenset()) -> None:
        """A unique value in every row of the shipped Annex E table that can hold one,
        plus curves, overlays and a private block."""
        for row in load_table().rows:
            tag = row.tag
            if tag is None or tag in STRUCTURAL or tag in skip or tag >> 16 in (0x0000, 0x0002):
                continue  # command set and file meta rows cannot be in a data set
            vr = row.vr or ""
            if vr == "SQ":
                # A kept (K) sequence keeps unlisted standard attributes, by the standard.
                keep = self.actions[tag] is Action.KEEP
                ds.add_new(tag, "SQ", Sequence([self.item(given, unlisted_text=not keep)]))
                continue
            value = self.values(tag, vr, given)
            if value is not None:
                ds.add_new(tag, vr, value)
        ds.add_new(0x50002500, "LO", self.marker())  # Curve Label
        ds.add_new(0x50003000, "OB", (self.marker() + " ").encode())  # Curve Data
        ds.add_new(0x60000010, "US", 16)  # an overlay plane with text in it
        ds.add_new(0x60000011, "US", 16)
        ds.add_new(0x60000022, "LO", self.marker())  # Overlay Description
        ds.add_new(0x60000040, "CS", "G")
        ds.add_new(0x60000050, "SS", [1, 1])
        ds.add_new(0x60000100, "US", 1)
        ds.add_new(0x60000102, "US", 0)
        ds.add_new(0x60001500, "LO", self.marker())  # Overlay Label
        ds.add_new(0x60003000, "OW", np.zeros(16, np.uint16).tobytes())
        ds.add_new(0x60004000, "LT", self.marker())  # Overlay Comments
        self.private_block(ds, 0x0011)

    def meta(self, ds: Dataset, syntax: str) -> None:
        meta = FileMetaDataset()
        meta.MediaStorageSOPClassUID = ds.SOPClassUID
        meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID
        meta.TransferSyntaxUID = syntax
        meta.ImplementationClassUID = self.uid()
        meta.ImplementationVersionName = self.marker()
        meta.SourceApplicationEntityTitle = self.marker()
        meta.PrivateInformationCreatorUID = self.uid()
        meta.PrivateInformation = (self.marker() + " ").encode()
        ds.file_meta = meta


@dataclass(frozen=True)
class Patient:
    id: str
    name: str
    given: str
    charset: str | None = None


@dataclass
class Planted:
    """The input folder and what was planted in it."""

    root: Path
    secrets: Secrets
    patients: list[Patient]
    files: dict[str, Path]  # role -> path
    sop_uids: dict[str, str]  # role -> original SOP Instance UID
    written_roles: set[str]  # roles expected to become instances


def image(
    planter: Planter,
    patient: Patient,
    *,
    sop_class: str,
    modality: str,
    series: tuple[str, str, str],
    index: int,
    bits: int = 16,
    skip: frozenset[int] = frozenset(),
    plant: bool = True,
) -> Dataset:
    ds = Dataset()
    if patient.charset:
        ds.SpecificCharacterSet = patient.charset
    if plant:
        planter.plant_table(ds, patient.given, skip)
    study, series_uid, frame_of_reference = series
    ds.SOPClassUID = sop_class
    ds.SOPInstanceUID = planter.uid()
    ds.StudyInstanceUID = study
    ds.SeriesInstanceUID = series_uid
    ds.FrameOfReferenceUID = frame_of_reference
    ds.PatientID = patient.id
    ds.PatientName = patient.name
    ds.Modality = modality
    ds.InstanceNumber = index + 1
    if sop_class == BASIC_TEXT_SR:
        return ds
    ds.ImagePositionPatient = [0.0, 0.0, float(index)]
    ds.ImageOrientationPatient = [1.0, 0.0, 0.0, 0.0, 1.0, 0.0]
    ds.PixelSpacing = [0.5, 0.5]
    ds.SliceThickness = 1.0
    ds.SamplesPerPixel = 1
    ds.PhotometricInterpretation = "MONOCHROME2"
    ds.Rows = ds.Columns = 16
    ds.BitsAllocated = bits
    ds.BitsStored = 12 if bits == 16 else 8
    ds.HighBit = ds.BitsStored - 1
    ds.PixelRepresentation = 0
    if bits == 16:
        ds.RescaleIntercept = -1024
        ds.RescaleSlope = 1
        pixels = (np.arange(256, dtype=np.uint16).reshape(16, 16) * 7 + index) % 4096
    else:
        pixels = (np.arange(256, dtype=np.uint16).reshape(16, 16) % 200 + 20).astype(np.uint8)
        x, y, width, height = US_RULE_REGION
        pixels[y : y + height, x : x + width] = 250  # where a device burns in its text
    ds.PixelData = pixels.tobytes()
    return ds


def content_tree(planter: Planter, given: str) -> list[Dataset]:
    """An SR content tree four levels deep with text, names, dates and UIDs at each level."""

    def code(value: str, meaning: str) -> Sequence:
        item = Dataset()
        item.CodeValue, item.CodingSchemeDesignator, item.CodeMeaning = value, "DCM", meaning
        return Sequence([item])

    def text(words: str) -> Dataset:
        item = Dataset()
        item.RelationshipType, item.ValueType = "CONTAINS", "TEXT"
        item.ConceptNameCodeSequence = code("121071", "Finding")
        item.TextValue = words
        return item

    def pname() -> Dataset:
        item = Dataset()
        item.RelationshipType, item.ValueType = "HAS OBS CONTEXT", "PNAME"
        item.ConceptNameCodeSequence = code("121008", "Person Observer Name")
        item.PersonName = f"{planter.marker()}^{given}"
        return item

    def container(children: list[Dataset]) -> Dataset:
        item = Dataset()
        item.RelationshipType, item.ValueType = "CONTAINS", "CONTAINER"
        item.ConceptNameCodeSequence = code("121070", "Findings")
        item.ContinuityOfContent = "SEPARATE"
        item.ContentSequence = Sequence(children)
        return item

    date, time, when, uid = Dataset(), Dataset(), Dataset(), Dataset()
    date.RelationshipType, date.ValueType, date.Date = "CONTAINS", "DATE", planter.date()
    time.RelationshipType, time.ValueType, time.Time = "CONTAINS", "TIME", planter.time()
    when.RelationshipType, when.ValueType = "CONTAINS", "DATETIME"
    when.DateTime = planter.datetime()
    uid.RelationshipType, uid.ValueType, uid.UID = "CONTAINS", "UIDREF", planter.uid()
    for item in (date, time, when, uid):
        item.ConceptNameCodeSequence = code("121071", "Finding")
    deepest = container(
        [text(f"{planter.marker()} seen by Dr {planter.marker()} on ward 7"), pname()]
    )
    middle = container([text(planter.marker()), pname(), deepest])
    return [
        text(f"Patient {planter.marker()} {planter.marker()}"),
        pname(),
        date,
        time,
        when,
        uid,
        middle,
    ]


def write(planter: Planter, ds: Dataset, path: Path, syntax: str = ExplicitVRLittleEndian) -> Path:
    planter.meta(ds, syntax)
    path.parent.mkdir(parents=True, exist_ok=True)
    ds.save_as(path, enforce_file_format=True)
    return path


def build_planted(base: Path, seed: int = 20240917) -> Planted:
    """About twenty inputs under folders and file names that carry markers."""
    planter = Planter(seed)
    marker = planter.marker
    root = base / f"{marker()}_archive"
    patients = [
        Patient(marker(), f"{marker()}^JOHN", "JOHN"),
        Patient(marker(), f"Müller{marker()}^Jürgen", "Jürgen", "ISO_IR 100"),
        Patient(marker(), f"{marker()}^TARO={marker()}山田^太郎", "太郎", "ISO_IR 192"),
        Patient(marker(), f"{marker()}^ANNA", "ANNA"),
    ]
    files: dict[str, Path] = {}
    sops: dict[str, str] = {}
    folders = [root / f"{marker()}_{name}" for name in ("Doe^John", "Mueller", "Yamada", "Roe")]

    def path(patient: int, word: str) -> Path:
        return folders[patient] / f"{marker()}_{word}.dcm"

    def series() -> tuple[str, str, str]:
        return planter.uid(), planter.uid(), planter.uid()

    def add(role: str, ds: Dataset, target: Path, syntax: str = ExplicitVRLittleEndian) -> None:
        files[role] = write(planter, ds, target, syntax)
        sops[role] = str(ds.SOPInstanceUID)

    ct_a = series()
    for i in range(5):
        ds = image(
            planter, patients[0], sop_class=CTImageStorage, modality="CT", series=ct_a, index=i
        )
        syntax = ImplicitVRLittleEndian if i == 2 else ExplicitVRLittleEndian
        add(f"ct-a{i}", ds, path(0, "smith"), syntax)
    sr = image(
        planter,
        patients[0],
        sop_class=BASIC_TEXT_SR,
        modality="SR",
        series=(ct_a[0], planter.uid(), planter.uid()),
        index=0,
        skip=frozenset({CONTENT_SEQUENCE}),
    )
    sr.ValueType = "CONTAINER"
    sr.ContinuityOfContent = "SEPARATE"
    sr.ConceptNameCodeSequence = Sequence([Dataset()])
    sr.ConceptNameCodeSequence[0].CodeValue = "18748-4"
    sr.ConceptNameCodeSequence[0].CodingSchemeDesignator = "LN"
    sr.ConceptNameCodeSequence[0].CodeMeaning = "Diagnostic imaging report"
    sr.ContentSequence = Sequence(content_tree(planter, patients[0].given))
    add("sr", sr, path(0, "report"))
    private = image(
        planter,
        patients[0],
        sop_class=CTImageStorage,
        modality="CT",
        series=(ct_a[0], planter.uid(), planter.uid()),
        index=0,
    )
    # A public attribute stored as UN, and a second private group written with VR UN.
    private.add_new(0x00081040, "UN", (marker() + " ").encode())  # Institutional Department
    private.add_new((0x0019, 0x0010), "LO", f"{marker()} UNKNOWN")
    private.add_new((0x0019, 0x1001), "UN", f"{marker()}\\{marker()}".encode())
    add("private", private, path(0, "private"))
    mr = image(
        planter,
        patients[0],
        sop_class=MRImageStorage,
        modality="MR",
        series=(ct_a[0], planter.uid(), planter.uid()),
        index=0,
    )
    add("mr", mr, path(0, "mr"))
    for patient, word in ((1, "mueller"), (2, "yamada")):
        uids = series()
        for i in range(4):
            ds = image(
                planter,
                patients[patient],
                sop_class=CTImageStorage,
                modality="CT",
                series=uids,
                index=i,
            )
            add(f"ct-{word}{i}", ds, path(patient, word))
    us = image(
        planter,
        patients[3],
        sop_class=UltrasoundImageStorage,
        modality="US",
        series=series(),
        index=0,
        bits=8,
    )
    us.Manufacturer, us.ManufacturerModelName, us.BurnedInAnnotation = "ACME", "SONO 1", "YES"
    add("us", us, path(3, "us"))
    sc = image(
        planter,
        patients[3],
        sop_class=SecondaryCaptureImageStorage,
        modality="OT",
        series=series(),
        index=0,
        bits=8,
    )
    sc.ConversionType = "WSD"
    add("sc", sc, path(3, "screenshot"))
    cut = image(
        planter, patients[3], sop_class=CTImageStorage, modality="CT", series=series(), index=0
    )
    target = path(3, "truncated")
    add("truncated", cut, target)
    target.write_bytes(target.read_bytes()[: target.stat().st_size * 3 // 5])
    notes = folders[3] / f"{marker()}_notes.txt"
    notes.write_text(f"Patient {marker()} born {planter.date()}, phone {marker()}\n")
    files["notes"] = notes
    secrets = planter.secrets
    for file in root.rglob("*"):
        secrets.names.update(part for part in file.relative_to(base).parts)
    written = {role for role in files if role not in ("us", "sc", "truncated", "notes")}
    return Planted(root, secrets, patients, files, sops, written)


# --------------------------------------------------------------------------- searching

TOKEN = re.compile(rb"qzx[a-z0-9]{6}")
DA_VALUE = re.compile(rb"(?<![0-9])[0-9]{8}(?![0-9])")
TM_VALUE = re.compile(rb"(?<![0-9])[0-9]{6}\.[0-9]{6}(?![0-9])")
DT_VALUE = re.compile(rb"(?<![0-9])[0-9]{14}\.[0-9]{6}(?![0-9])")
NUMBER = re.compile(rb"(?<![0-9.])(?:[0-9]{4}\.[0-9]{4}|[0-9]{9})(?![0-9])")
ENCODINGS = ("utf-8", "latin-1", "utf-16-le", "utf-16-be")


def _word_patterns() -> list[tuple[str, bytes]]:
    """Each name fragment in every encoding that can spell it, any letter case."""
    patterns = []
    for word in WORDS:
        for variant in {word, word.upper(), word.lower()}:
            for encoding in ENCODINGS:
                with contextlib.suppress(UnicodeEncodeError):  # kanji have no latin-1
                    patterns.append((f"{word} ({encoding})", variant.encode(encoding).lower()))
    return patterns


WORD_PATTERNS = _word_patterns()


def find_planted(blob: bytes, secrets: Secrets) -> set[str]:
    """Every planted value in ``blob``: ASCII/UTF-8/latin-1 and, with NULs dropped,
    UTF-16 (either byte order); markers case-insensitively."""
    hits: set[str] = set()
    lowered = blob.lower()
    for pattern_name, pattern in WORD_PATTERNS:
        if pattern in lowered:
            hits.add(pattern_name)
    for view in (blob, blob.replace(b"\x00", b"")):
        low = view.lower()
        hits |= {t.decode().upper() for t in TOKEN.findall(low)} & secrets.markers
        hits |= {d.decode() for d in DA_VALUE.findall(view)} & secrets.dates
        hits |= {t.decode() for t in TM_VALUE.findall(view)} & secrets.times
        hits |= {t.decode() for t in DT_VALUE.findall(view)} & secrets.datetimes
        hits |= {n.decode() for n in NUMBER.findall(view)} & secrets.numbers
        start = view.find(UID_ROOT.encode())
        if start >= 0:
            hits.add("UID " + view[start : start + len(UID_ROOT) + 6].decode("latin-1"))
    return hits


def _texts(value: Any) -> Iterator[bytes]:
    """Every value of a Parquet cell as bytes, dates and times in their DICOM spelling."""
    if value is None:
        return
    if isinstance(value, bytes):
        yield value
    elif isinstance(value, str):
        yield value.encode("utf-8", "surrogatepass")
        if value.startswith("{") and '"InlineBinary"' in value:  # a DICOM JSON document
            for blob in re.findall(r'"InlineBinary":\s*"([A-Za-z0-9+/=]*)"', value):
                yield base64.b64decode(blob)
    elif isinstance(value, dt.datetime):
        yield value.strftime("%Y%m%d%H%M%S.%f").encode()
    elif isinstance(value, dt.date):
        yield value.strftime("%Y%m%d").encode()
    elif isinstance(value, dt.time):
        yield value.strftime("%H%M%S.%f").encode()
    elif isinstance(value, list | tuple):
        for v in value:
            yield from _texts(v)
    elif isinstance(value, dict):
        for k, v in value.items():
            yield from _texts(k)
            yield from _texts(v)
    else:
        yield str(value).encode()


def decoded_views(path: Path, raw: bytes) -> Iterator[tuple[str, bytes]]:
    """What a file holds once decompressed: Parquet values and metadata, Blosc chunks."""
    if raw[:4] == b"PAR1":
        table = pq.read_table(path)
        metadata = table.schema.metadata or {}
        parts = [k + b"=" + v for k, v in metadata.items()]
        parts.extend(t for row in table.to_pylist() for t in _texts(row))
        yield "values", b"\n".join(parts)
    elif "pixels.zarr" in path.parts and path.name != "zarr.json":
        try:
            yield "blosc", bytes(numcodecs.Blosc().decode(raw))
        except Exception:  # not a Blosc chunk: the raw bytes were searched already
            return


def search_tree(root: Path, secrets: Secrets) -> dict[str, set[str]]:
    """Planted values found under ``root``, by file (names, raw bytes, decoded contents)."""
    found: dict[str, set[str]] = {}
    for path in sorted(root.rglob("*")):
        rel = path.relative_to(root).as_posix()
        hits = find_planted(rel.encode(), secrets)
        if path.is_file():
            raw = path.read_bytes()
            hits |= find_planted(raw, secrets)
            for _, view in decoded_views(path, raw):
                hits |= find_planted(view, secrets)
        if hits:
            found[rel] = hits
    return found


def _report(found: dict[str, set[str]]) -> str:
    lines = [f"{where}: {', '.join(sorted(hits)[:8])}" for where, hits in sorted(found.items())]
    return "planted values survived:\n" + "\n".join(lines[:40])


# --------------------------------------------------------------------------- running


def run_cli(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[bytes]:
    environment = {**os.environ, **(env or {})}
    environment["PYTHONPATH"] = os.pathsep.join(
        p for p in (str(REPO), environment.get("PYTHONPATH", "")) if p
    )
    return subprocess.run(
        [sys.executable, "-m", "dicomflow", *args],
        capture_output=True,
        env=environment,
        timeout=600,
        check=False,
    )


def _logs(result: subprocess.CompletedProcess[bytes]) -> str:
    return result.stdout.decode("utf-8", "replace") + result.stderr.decode("utf-8", "replace")


@dataclass
class Run:
    lake: Path
    result: subprocess.CompletedProcess[bytes]
    mapping: Path | None = None

    @property
    def logs(self) -> bytes:
        return self.result.stdout + b"\n" + self.result.stderr


def ingest_cli(
    src: Path,
    lake: Path,
    key_file: Path,
    *extra: str,
    workers: int = 2,
    mapping: Path | None = None,
) -> Run:
    args = [
        "-vv",
        "ingest",
        str(src),
        "--out",
        str(lake),
        "--anonymize",
        "--dicom",
        "--pixels",
        "--key-file",
        str(key_file),
        "--workers",
        str(workers),
        *extra,
    ]
    if mapping is not None:
        args += ["--mapping", str(mapping)]
    result = run_cli(*args)
    assert result.returncode == 0, _logs(result)
    return Run(lake, result, mapping)


@pytest.fixture(scope="module")
def planted(tmp_path_factory: pytest.TempPathFactory) -> Planted:
    return build_planted(tmp_path_factory.mktemp("in"))


@pytest.fixture(scope="module")
def keys(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    folder = tmp_path_factory.mktemp("keys")
    paths = {}
    for name, key in (("a", KEY_A), ("b", KEY_B)):
        paths[name] = folder / f"{name}.key"
        paths[name].write_bytes(key + b"\n")
    return paths


@pytest.fixture(scope="module")
def deid_run(
    planted: Planted, keys: dict[str, Path], tmp_path_factory: pytest.TempPathFactory
) -> Run:
    """The main run: two workers, with the honest-broker mapping outside the lake."""
    out = tmp_path_factory.mktemp("out")
    return ingest_cli(planted.root, out / "lake", keys["a"], mapping=out / "broker")


def _dicom_files(lake: Path) -> dict[str, bytes]:
    return {
        p.relative_to(lake / "dicom").as_posix(): p.read_bytes()
        for p in sorted((lake / "dicom").rglob("*.dcm"))
    }


# --------------------------------------------------------------------------- A: planted PHI


def test_no_planted_value_survives_in_the_lake_or_the_logs(planted: Planted, deid_run: Run) -> None:
    lake = read_lake(str(deid_run.lake))
    instances = lake.instances()
    # Not vacuous: every output kind was written, from every input expected to pass.
    assert instances.num_rows == len(planted.written_roles), _logs(deid_run.result)
    assert len(_dicom_files(deid_run.lake)) == len(planted.written_roles)
    pixels = deid_run.lake / "pixels.zarr"
    chunks = [p for p in pixels.rglob("c.*") if p.is_file()]
    assert lake.series().num_rows >= 3 and chunks
    assert lake.errors().num_rows == 4
    # Sanity of the search itself: the inputs hold what it looks for.
    input_hits = set()
    for path in planted.files.values():
        input_hits |= find_planted(path.read_bytes(), planted.secrets)
    assert {"Müller (latin-1)", "山田 (utf-8)"} <= input_hits
    assert len(input_hits & planted.secrets.markers) > 3000
    for kind in ("dates", "times", "datetimes", "numbers"):
        assert input_hits & getattr(planted.secrets, kind), kind
    assert any(h.startswith("UID ") for h in input_hits)
    found = search_tree(deid_run.lake, planted.secrets)
    logs = find_planted(deid_run.logs, planted.secrets)
    if logs:
        found["<logs>"] = logs
    assert not found, _report(found)
    assert KEY_A not in deid_run.logs


def test_typed_date_columns_hold_no_planted_date(planted: Planted, deid_run: Run) -> None:
    table = read_lake(str(deid_run.lake)).instances()
    planted_dates = {dt.datetime.strptime(d, "%Y%m%d").date() for d in planted.secrets.dates}
    checked = 0
    for column in table.schema.names:
        for value in table.column(column).to_pylist():
            values = value if isinstance(value, list) else [value]
            for v in values:
                if isinstance(v, dt.datetime):
                    v = v.date()
                if isinstance(v, dt.date):
                    checked += 1
                    assert v not in planted_dates, column
    assert checked  # dummy dates (1900-01-01) are there to be checked


def test_error_rows_show_keyed_ids_not_file_names(planted: Planted, deid_run: Run) -> None:
    errors = read_lake(str(deid_run.lake)).errors().to_pylist()
    assert sorted(e["code"] for e in errors) == sorted(
        ["burned_in_annotation", "burned_in_annotation", "not_dicom", "truncated"]
    ), errors
    for error in errors:
        assert re.fullmatch(r"deid://[0-9a-f]{32}", error["source"]), error
    names = {p.name for p in planted.files.values()} | {p.stem for p in planted.files.values()}
    text = json.dumps(errors, ensure_ascii=False)
    assert not [n for n in names if n in text]


def test_instance_rows_point_into_the_lake(planted: Planted, deid_run: Run) -> None:
    sources = read_lake(str(deid_run.lake)).instances(columns=["source"]).column("source")
    root = str(deid_run.lake.resolve() / "dicom") + "/"
    assert all(s.startswith(root) for s in sources.to_pylist())
    assert not {str(p) for p in planted.files.values()} & set(sources.to_pylist())


def test_the_search_finds_what_an_ingest_without_anonymize_keeps(
    planted: Planted, client: Client, tmp_path: Path
) -> None:
    """The control: the same search over a lake made without --anonymize finds the planted
    values in every kind of output, so a clean result above is not a blind search."""
    ingest([str(planted.root)], out=str(tmp_path), pixels=True, client=client, progress=False)
    found = search_tree(tmp_path, planted.secrets)
    hits = set().union(*found.values())
    parquet = set().union(*(h for where, h in found.items() if where.startswith("instances/")))
    for kind in ("markers", "dates", "times", "datetimes", "numbers"):
        assert parquet & getattr(planted.secrets, kind), kind
    assert {"Müller (utf-8)", "山田 (utf-8)"} <= parquet
    assert any(h.startswith("UID ") for h in parquet)
    assert any(where.startswith("pixels.zarr/") for where in found)
    assert any(where.startswith("series/") for where in found)
    assert len(hits & planted.secrets.markers) > 3000


@pytest.mark.parametrize(
    "option", ["clean-descriptors", "clean-structured-content", "retain-safe-private"]
)
def test_options_that_clean_or_keep_private_leave_no_marker(planted: Planted, option: str) -> None:
    """Options that clean text (C), or keep only *listed* private attributes, must still
    leave none of the planted markers, names or UIDs (dates may be shifted by C)."""
    engine = deidentifier(key=SecretKey(KEY_A), options=[option])
    secrets = planted.secrets
    shifted = secrets.dates | secrets.times | secrets.datetimes
    found = {}
    for role in sorted(planted.written_roles):
        data = engine.instance(planted.files[role].read_bytes()).data
        hits = find_planted(data, secrets) - shifted
        if hits:
            found[role] = hits
    assert not found, _report(found)


class KeyRecorder(SchedulerPlugin):
    """Records every task key the scheduler sees."""

    name: ClassVar[str] = "dicomflow-test-key-recorder"

    def __init__(self) -> None:
        self.keys: set[str] = set()

    def update_graph(self, scheduler: Any, *, keys: Any, tasks: Any, **kwargs: Any) -> None:
        self.keys.update(str(k) for k in (*keys, *tasks))

    def transition(self, key: Any, start: str, finish: str, *args: Any, **kwargs: Any) -> None:
        self.keys.add(str(key))


@dataclass
class ApiRun:
    lake: Path
    keys: list[str]
    log: str


@pytest.fixture(scope="module")
def api_run(
    planted: Planted, client: Client, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[ApiRun]:
    """The same inputs through the Python API with another key, recording task keys."""
    lake = tmp_path_factory.mktemp("api") / "lake"
    client.register_plugin(KeyRecorder(), name=KeyRecorder.name)
    stream = io.StringIO()
    handler = logging.StreamHandler(stream)
    handler.setLevel(logging.DEBUG)
    package_logger = logging.getLogger("dicomflow")
    previous = package_logger.level
    package_logger.addHandler(handler)
    package_logger.setLevel(logging.DEBUG)
    try:
        settings = AnonymizeSettings(deidentifier(key=SecretKey(KEY_B)), write_dicom=True)
        summary = ingest(
            [str(planted.root)],
            out=str(lake),
            pixels=True,
            anonymize=settings,
            client=client,
            progress=False,
        )
        recorded = client.run_on_scheduler(
            lambda dask_scheduler: sorted(dask_scheduler.plugins[KeyRecorder.name].keys)
        )
    finally:
        package_logger.removeHandler(handler)
        package_logger.setLevel(previous)
        client.unregister_scheduler_plugin(KeyRecorder.name)
    assert summary.accounted and summary.rows == len(planted.written_roles)
    yield ApiRun(lake, recorded, stream.getvalue())


def test_dask_task_keys_carry_no_names_or_values(planted: Planted, api_run: ApiRun) -> None:
    keys = api_run.keys
    for stage in ("deidentify", "rows", "series"):
        assert any(f"dicomflow-{stage}-" in k for k in keys), (stage, keys[:10])
    secrets = planted.secrets
    text = "\n".join(keys).encode()
    assert not find_planted(text, secrets)
    lowered = "\n".join(keys).lower()
    names = {*secrets.names, str(planted.root)}  # every folder and file name, and the root
    assert not [n for n in names if n.lower() in lowered]
    assert not find_planted(api_run.log.encode(), secrets)
    assert not search_tree(api_run.lake, secrets)


# --------------------------------------------------------------------------- B: mapping


def test_mapping_holds_originals_and_the_lake_none(planted: Planted, deid_run: Run) -> None:
    assert deid_run.mapping is not None
    mapping = pq.read_table(deid_run.mapping).to_pylist()
    by_kind: dict[str, dict[str, str]] = {}
    for row in mapping:
        by_kind.setdefault(row["kind"], {})[row["original"]] = row["pseudonym"]
        assert row["input_id"].startswith("deid://")
    instances = read_lake(str(deid_run.lake)).instances(
        columns=["source", "PatientID", "SOPInstanceUID", "StudyInstanceUID"]
    )
    rows = instances.to_pylist()
    # Files: every written input maps to the file the lake holds.
    files = by_kind["file"]
    for role in planted.written_roles:
        assert str(planted.files[role]) in files, role
    assert set(files.values()) == {r["source"] for r in rows}
    # Patients and UIDs: originals map to what the lake shows.
    lake_patients = {r["PatientID"] for r in rows}
    expected_patients = {p.id for p in planted.patients[:3]}
    assert expected_patients <= set(by_kind["patient_id"])
    assert {by_kind["patient_id"][p] for p in expected_patients} == lake_patients
    for role in planted.written_roles:
        pseudonym = by_kind["uid"][planted.sop_uids[role]]
        assert pseudonym in {r["SOPInstanceUID"] for r in rows}, role
        assert pseudonym == Pseudonymizer(SecretKey(KEY_A)).uid(planted.sop_uids[role])
    # The lake holds none of the originals the mapping lists.
    originals = {o for kinds in by_kind.values() for o in kinds if len(o) >= 8}
    assert len(originals) > 100
    leaks = {}
    for path in sorted(deid_run.lake.rglob("*")):
        if not path.is_file():
            continue
        raw = path.read_bytes()
        views = [raw, path.relative_to(deid_run.lake).as_posix().encode()]
        views += [v for _, v in decoded_views(path, raw)]
        hits = {o for o in originals for v in views if o.encode("utf-8") in v}
        if hits:
            leaks[path.relative_to(deid_run.lake).as_posix()] = hits
    assert not leaks, leaks


def test_mapping_inside_the_lake_is_refused(
    planted: Planted, keys: dict[str, Path], tmp_path: Path
) -> None:
    lake = tmp_path / "lake"
    result = run_cli(
        "ingest",
        str(planted.root),
        "--out",
        str(lake),
        "--anonymize",
        "--key-file",
        str(keys["a"]),
        "--workers",
        "1",
        "--mapping",
        str(lake / "broker"),
    )
    assert result.returncode == 2, _logs(result)
    assert "outside the lake" in result.stderr.decode()
    assert not lake.exists() or not any(p.is_file() for p in lake.rglob("*"))


# --------------------------------------------------------------------------- C: determinism


def _comparable(lake: Path, table: str) -> list[dict[str, Any]]:
    """The rows of ``table`` without per-run columns, with the lake's own path (in
    ``source`` and in bulk-data URIs) replaced by a placeholder."""
    rows = read_lake(str(lake)).dataset(table).to_table().to_pylist()
    root = str(lake.resolve())
    out = []
    for row in rows:
        for column in PER_RUN_COLUMNS:
            row.pop(column, None)
        for column, value in row.items():
            if isinstance(value, str):
                row[column] = value.replace(root, "<lake>")
        out.append(row)
    return sorted(out, key=lambda r: json.dumps(r, sort_keys=True, default=str))


def test_same_key_gives_identical_outputs_on_one_or_two_workers(
    planted: Planted, keys: dict[str, Path], deid_run: Run, tmp_path: Path
) -> None:
    single = ingest_cli(planted.root, tmp_path / "lake", keys["a"], workers=1)
    ours, theirs = _dicom_files(deid_run.lake), _dicom_files(single.lake)
    assert ours and sorted(ours) == sorted(theirs)
    assert [p for p in ours if ours[p] != theirs[p]] == []
    for table in ("instances", "errors", "series"):
        first, second = _comparable(deid_run.lake, table), _comparable(single.lake, table)
        assert first, table
        assert first == second, table


def _uids(lake: Path) -> dict[str, set[str]]:
    columns = ["SOPInstanceUID", "StudyInstanceUID", "SeriesInstanceUID", "FrameOfReferenceUID"]
    table = read_lake(str(lake)).instances(columns=[*columns, "PatientID"])
    return {c: {v for v in table.column(c).to_pylist() if v} for c in [*columns, "PatientID"]}


def test_another_key_gives_disjoint_pseudonyms(deid_run: Run, api_run: ApiRun) -> None:
    ours, theirs = _uids(deid_run.lake), _uids(api_run.lake)
    all_ours = set().union(*ours.values())
    all_theirs = set().union(*theirs.values())
    for column in ours:
        assert ours[column] and theirs[column], column
        assert len(ours[column]) == len(theirs[column]), column
    assert not all_ours & all_theirs


# --------------------------------------------------------------------------- D: configuration


@pytest.mark.parametrize(
    ("case", "message"),
    [
        ("no-key", "needs a key"),
        ("short-key", "too short"),
        ("unset-key-env", "is not set"),
        ("file-and-env", "not both"),
        ("both-longitudinal", "exclude each other"),
        ("dicom-without-anonymize", "needs --anonymize"),
        ("anonymize-without-key", "needs a key"),
    ],
)
def test_configuration_errors_exit_2_before_writing(
    case: str, message: str, planted: Planted, keys: dict[str, Path], tmp_path: Path
) -> None:
    lake = tmp_path / "lake"
    short = tmp_path / "short.key"
    short.write_text("0123456789abcdef")  # 16 bytes
    base = ["ingest", str(planted.root), "--out", str(lake), "--workers", "1"]
    env: dict[str, str] = {"DICOMFLOW_TEST_KEY": KEY_A.decode()}
    args = {
        "no-key": [*base, "--anonymize"],
        "short-key": [*base, "--anonymize", "--key-file", str(short)],
        "unset-key-env": [*base, "--anonymize", "--key-env", "DICOMFLOW_TEST_NO_SUCH_KEY"],
        "file-and-env": [
            *base,
            "--anonymize",
            "--key-file",
            str(keys["a"]),
            "--key-env",
            "DICOMFLOW_TEST_KEY",
        ],
        "both-longitudinal": [
            *base,
            "--anonymize",
            "--key-file",
            str(keys["a"]),
            "--option",
            "retain-longitudinal-full",
            "--option",
            "retain-longitudinal-modified",
        ],
        "dicom-without-anonymize": [*base, "--dicom"],
        "anonymize-without-key": ["anonymize", str(planted.root), "--out", str(lake)],
    }[case]
    result = run_cli(*args, env=env)
    stderr = result.stderr.decode()
    assert result.returncode == 2, _logs(result)
    assert "error:" in stderr and message in stderr, stderr
    assert "Traceback" not in stderr
    assert b"0123456789abcdef" not in result.stdout + result.stderr
    assert KEY_A not in result.stdout + result.stderr
    assert not lake.exists()


# --------------------------------------------------------------------------- E: burned-in


def test_burned_in_candidates_without_rules_are_quarantined(
    planted: Planted, deid_run: Run
) -> None:
    errors = read_lake(str(deid_run.lake)).errors().to_pylist()
    assert [e["code"] for e in errors].count("burned_in_annotation") == 2
    pseudonyms = Pseudonymizer(SecretKey(KEY_A))
    names = {p.name for p in (deid_run.lake / "dicom").rglob("*.dcm")}
    for role in ("us", "sc"):
        assert f"{pseudonyms.uid(planted.sop_uids[role])}.dcm" not in names
    for path in (deid_run.lake / "dicom").rglob("*.dcm"):
        ds = pydicom.dcmread(path, stop_before_pixels=True)
        assert ds.Modality not in ("US", "OT"), path
        assert ds.SOPClassUID not in (UltrasoundImageStorage, SecondaryCaptureImageStorage)


def test_pixel_rules_black_out_the_region_and_declare_it(
    planted: Planted, keys: dict[str, Path], tmp_path: Path
) -> None:
    src = tmp_path / "in"
    src.mkdir()
    for role in ("us", "sc"):
        (src / f"{role}.dcm").write_bytes(planted.files[role].read_bytes())
    x, y, width, height = US_RULE_REGION
    rules = tmp_path / "rules.json"
    rules.write_text(
        json.dumps(
            [
                {
                    "manufacturer": "ACME",
                    "model": "SONO 1",
                    "rows": 16,
                    "columns": 16,
                    "regions": [[x, y, width, height]],
                }
            ]
        )
    )
    run = ingest_cli(src, tmp_path / "lake", keys["a"], "--pixel-rules", str(rules), workers=1)
    lake = read_lake(str(run.lake))
    errors = lake.errors().to_pylist()
    assert [e["code"] for e in errors] == ["burned_in_annotation"]  # the SC: no rule for it
    (row,) = lake.instances(columns=["source", "Modality", "zarr_path", "frame_index"]).to_pylist()
    assert row["Modality"] == "US"
    original = pydicom.dcmread(planted.files["us"]).pixel_array
    assert (original[y : y + height, x : x + width] == 250).all()  # the text band was there
    written = pydicom.dcmread(row["source"])
    assert written.BurnedInAnnotation == "NO"
    codes = {item.CodeValue for item in written.DeidentificationMethodCodeSequence}
    assert "113101" in codes  # Clean Pixel Data Option
    pixels = written.pixel_array
    assert (pixels[y : y + height, x : x + width] == 0).all()
    outside = np.ones(pixels.shape, bool)
    outside[y : y + height, x : x + width] = False
    assert np.array_equal(pixels[outside], original[outside])
    frames = zarr.open_array(str(run.lake / row["zarr_path"] / "0"), mode="r")[...]
    frame = frames[row["frame_index"] or 0]
    assert (frame[y : y + height, x : x + width] == 0).all()
    assert np.array_equal(frame[outside], original[outside])


def test_an_odd_length_fragment_does_not_corrupt_the_output() -> None:
    """Some encoders write an odd-length last fragment; the input reads fine, so the
    de-identified file must read too (and not only in pydicom)."""
    ds = image(
        Planter(7),
        Patient("ID", "NAME^ODD", "ODD"),
        sop_class=CTImageStorage,
        modality="CT",
        series=("1.2.3", "1.2.3.4", "1.2.3.5"),
        index=0,
        bits=8,
        plant=False,
    )
    ds.PixelData = encapsulate([b"\xff\x4f\xff\xd9"])
    ds.file_meta = FileMetaDataset()
    ds.file_meta.TransferSyntaxUID = JPEG2000Lossless
    buffer = io.BytesIO()
    ds.save_as(buffer, enforce_file_format=True)
    item = b"\xfe\xff\x00\xe0" + (4).to_bytes(4, "little")
    assert buffer.getvalue().count(item + b"\xff\x4f\xff\xd9") == 1
    odd = buffer.getvalue().replace(
        item + b"\xff\x4f\xff\xd9",
        b"\xfe\xff\x00\xe0" + (3).to_bytes(4, "little") + b"\xff\x4f\xff",
    )
    assert read_header(io.BytesIO(odd), size=len(odd)).pixel_data_tag is not None
    out = deidentifier(key=SecretKey(KEY_A)).instance(odd).data
    read_header(io.BytesIO(out), size=len(out))  # raises MalformedDicomError if corrupt
    assert out.endswith(b"\xfe\xff\xdd\xe0\x00\x00\x00\x00")  # the sequence delimiter
