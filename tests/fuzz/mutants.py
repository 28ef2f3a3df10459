"""A seeded, deterministic mutator: hostile DICOM files derived from the corpus.

``write_mutants(corpus_files, out, count, seed)`` writes ``count`` mutants under
``out`` and returns a manifest (file name → mutation). The same seed gives the same
bytes. Mutations:

- ``bitflip``: 1 to 64 bits flipped anywhere;
- ``byte_run``: a run of 0x00, 0xFF or random bytes written over the file;
- ``truncate``: the file cut at an element boundary (or inside the value after it);
- ``length``: an element's length set to a huge value or to undefined (0xFFFFFFFF);
- ``wrong_vr``: an explicit VR element given another VR;
- ``deep_nesting``: sequences nested 1,000 to 50,000 deep (built, not derived);
- ``deflate_bomb``: a deflated data set of up to 10 MB of zeros in a few KB;
- ``absurd_dimensions``: Rows, Columns, frames and bit depths no image has;
- ``hostile_uid``: study, series or instance UIDs holding ``../``, ``/`` or NUL;
- ``odd_name``: a valid file under a name with bytes that are not UTF-8, spaces,
  newlines, a leading dash or 200 characters.

Element boundaries come from pydicom's raw reading of the seed file (its top-level
elements' value offsets and lengths), so they are the standard's, not dicomflow's.
"""

from __future__ import annotations

import io
import os
import random
import struct
import warnings
import zlib
from collections.abc import Callable, Sequence
from pathlib import Path

import pydicom
from pydicom.dataelem import RawDataElement
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.uid import DeflatedExplicitVRLittleEndian, ExplicitVRLittleEndian

VRS = [
    b"AE",
    b"CS",
    b"DS",
    b"FD",
    b"IS",
    b"LO",
    b"OB",
    b"OW",
    b"SQ",
    b"SS",
    b"UI",
    b"UL",
    b"UN",
    b"US",
    b"UT",
    b"XX",
]
LONG_VRS = {
    b"OB",
    b"OD",
    b"OF",
    b"OL",
    b"OV",
    b"OW",
    b"SQ",
    b"SV",
    b"UC",
    b"UN",
    b"UR",
    b"UT",
    b"UV",
}


def element_offsets(data: bytes) -> list[tuple[int, int, int]]:
    """(element start, value start, value length) of each top-level element pydicom
    reads raw from ``data`` (defined lengths only); empty when pydicom cannot read it."""
    try:
        ds = pydicom.dcmread(io.BytesIO(data), force=True, defer_size=0)
        raws = [ds.get_item(tag) for tag in ds.keys()]  # noqa: SIM118 (iterating converts)
    except Exception:  # a seed pydicom cannot read has no boundaries
        return []
    offsets = []
    for raw in raws:
        if not isinstance(raw, RawDataElement) or raw.value_tell is None:
            continue
        if raw.length == 0xFFFFFFFF:
            continue
        header = 12 if (not raw.is_implicit_VR and raw.VR and raw.VR.encode() in LONG_VRS) else 8
        offsets.append((raw.value_tell - header, raw.value_tell, raw.length))
    return offsets


def bitflip(data: bytes, rng: random.Random) -> bytes:
    out = bytearray(data)
    for _ in range(rng.randint(1, 64)):
        position = rng.randrange(len(out))
        out[position] ^= 1 << rng.randrange(8)
    return bytes(out)


def byte_run(data: bytes, rng: random.Random) -> bytes:
    out = bytearray(data)
    start = rng.randrange(len(out))
    size = min(len(out) - start, rng.randint(1, 512))
    fill = rng.choice([b"\x00", b"\xff", None])
    out[start : start + size] = fill * size if fill else rng.randbytes(size)
    return bytes(out)


def truncate(data: bytes, rng: random.Random) -> bytes:
    boundaries = element_offsets(data)
    if not boundaries:
        return data[: rng.randrange(len(data))]
    start, value, length = rng.choice(boundaries)
    return data[: rng.choice([start, value, value + length // 2, start + 1])]


def length(data: bytes, rng: random.Random) -> bytes:
    boundaries = element_offsets(data)
    if not boundaries:
        return bitflip(data, rng)
    start, value, _ = rng.choice(boundaries)
    out = bytearray(data)
    huge = rng.choice([0xFFFFFFFF, 0x7FFFFFF0, 0xFFFFFFFE, len(data) * 16])
    if value - start == 12:
        out[value - 4 : value] = struct.pack("<I", huge)
    elif value - start == 8 and data[start + 4 : start + 6].isalpha():  # explicit, short
        out[value - 2 : value] = struct.pack("<H", huge & 0xFFFF)
    else:
        out[value - 4 : value] = struct.pack("<I", huge)
    return bytes(out)


def wrong_vr(data: bytes, rng: random.Random) -> bytes:
    boundaries = [b for b in element_offsets(data) if data[b[0] + 4 : b[0] + 6].isalpha()]
    if not boundaries:
        return bitflip(data, rng)
    start, _, _ = rng.choice(boundaries)
    out = bytearray(data)
    out[start + 4 : start + 6] = rng.choice(VRS)
    return bytes(out)


def _uid(rng: random.Random) -> str:
    """A UID under 2.25 (a UUID-derived root) drawn from ``rng``: deterministic."""
    return f"2.25.{rng.getrandbits(120)}"


def _file_meta(rng: random.Random, syntax: str = ExplicitVRLittleEndian) -> FileMetaDataset:
    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = "1.2.840.10008.5.1.4.1.1.7"
    meta.MediaStorageSOPInstanceUID = _uid(rng)
    meta.TransferSyntaxUID = syntax
    return meta


def _small_image(rng: random.Random) -> Dataset:
    ds = Dataset()
    ds.file_meta = _file_meta(rng)
    ds.SOPClassUID = ds.file_meta.MediaStorageSOPClassUID
    ds.SOPInstanceUID = ds.file_meta.MediaStorageSOPInstanceUID
    ds.StudyInstanceUID, ds.SeriesInstanceUID = _uid(rng), _uid(rng)
    ds.PatientName, ds.PatientID, ds.Modality = "Fuzz^Mutant", "FUZZ", "OT"
    ds.Rows = ds.Columns = 8
    ds.SamplesPerPixel, ds.PhotometricInterpretation = 1, "MONOCHROME2"
    ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 16, 12, 11, 0
    ds.PixelData = rng.randbytes(8 * 8 * 2)
    return ds


def _encoded(ds: Dataset) -> bytes:
    buffer = io.BytesIO()
    ds.save_as(buffer, enforce_file_format=True)
    return buffer.getvalue()


def deep_nesting(_: bytes, rng: random.Random) -> bytes:
    """Explicit VR little endian: a valid header, then one sequence nested ``depth`` deep
    (undefined lengths), built byte by byte."""
    depth = rng.choice([1_000, 5_000, 50_000])
    head = _encoded(_small_image(rng))
    sequence = struct.pack("<HH2sHI", 0x0040, 0x0260, b"SQ", 0, 0xFFFFFFFF)
    item = struct.pack("<HHI", 0xFFFE, 0xE000, 0xFFFFFFFF)
    item_end = struct.pack("<HHI", 0xFFFE, 0xE00D, 0)
    sequence_end = struct.pack("<HHI", 0xFFFE, 0xE0DD, 0)
    opening = (sequence + item) * depth
    closing = (item_end + sequence_end) * depth
    # inserted before Pixel Data (7FE0,0010), so that the tags stay in order
    pixel = head.rfind(b"\xe0\x7f\x10\x00")
    return head[:pixel] + opening + closing + head[pixel:]


def deflate_bomb(_: bytes, rng: random.Random) -> bytes:
    """A deflated data set whose body inflates to up to 10 MB of zeros (an OB value)."""
    ds = _small_image(rng)
    ds.file_meta = _file_meta(rng, DeflatedExplicitVRLittleEndian)
    del ds.PixelData
    buffer = io.BytesIO()
    ds.save_as(buffer, enforce_file_format=True)
    head = buffer.getvalue()
    meta_end = head.find(b"\x08\x00", 132 + 12)  # the file meta ends where group 8 starts
    size = rng.choice([1, 4, 10]) * 1024 * 1024
    body = struct.pack("<HH2sHI", 0x0009, 0x1010, b"OB", 0, size) + bytes(size)
    compressor = zlib.compressobj(9, zlib.DEFLATED, -zlib.MAX_WBITS)
    deflated = compressor.compress(body) + compressor.flush()
    return head[:meta_end] + deflated


def absurd_dimensions(data: bytes, rng: random.Random) -> bytes:
    ds = _small_image(rng)
    choice = rng.randrange(5)
    if choice == 0:
        ds.Rows = ds.Columns = 65535
    elif choice == 1:
        ds.NumberOfFrames = 2_000_000_000
    elif choice == 2:
        ds.BitsAllocated, ds.BitsStored, ds.HighBit = 64, 64, 63
    elif choice == 3:
        ds.Rows, ds.Columns = 0, 0
    else:
        ds.SamplesPerPixel, ds.PhotometricInterpretation = 4, "RGB"
    return _encoded(ds)


HOSTILE_UIDS = [
    "../../../../tmp/escape",
    "a/b/c",
    "1.2.3\x00.4",
    "..",
    "/etc/passwd",
    "1.2." + "9" * 200,
]


def hostile_uid(data: bytes, rng: random.Random) -> bytes:
    ds = _small_image(rng)
    keyword = rng.choice(["StudyInstanceUID", "SeriesInstanceUID", "SOPInstanceUID"])
    value = rng.choice(HOSTILE_UIDS)
    ds[keyword].value = value  # raw: pydicom's validation would refuse it
    return _encoded(ds)


Mutation = Callable[[bytes, random.Random], bytes]
DERIVED: dict[str, Mutation] = {
    "bitflip": bitflip,
    "byte_run": byte_run,
    "truncate": truncate,
    "length": length,
    "wrong_vr": wrong_vr,
}
BUILT: dict[str, Mutation] = {
    "deep_nesting": deep_nesting,
    "deflate_bomb": deflate_bomb,
    "absurd_dimensions": absurd_dimensions,
    "hostile_uid": hostile_uid,
}
ODD_NAMES = [b"bad\xff\xfe", b"with space", b"new\nline", b"-leading-dash", b"x" * 200, b"\xc3\x28"]


def _name(number: int, mutation: str, rng: random.Random) -> bytes:
    if mutation == "odd_name":
        return b"%05d-" % number + rng.choice(ODD_NAMES) + b".dcm"
    return f"{number:05d}-{mutation}.dcm".encode()


def write_mutants(seeds: Sequence[Path], out: Path, count: int, seed: int = 0) -> dict[str, str]:
    """Write ``count`` mutants of ``seeds`` under ``out``; return name → mutation.
    Deterministic in ``seed`` (and the seeds' bytes). Built mutations are one in ten,
    odd names one in twenty; the rest derive from a seed file."""
    with warnings.catch_warnings():  # pydicom warns about the values we make invalid
        warnings.simplefilter("ignore")
        return _write_mutants(seeds, out, count, seed)


def _write_mutants(seeds: Sequence[Path], out: Path, count: int, seed: int) -> dict[str, str]:
    rng = random.Random(seed)
    out.mkdir(parents=True, exist_ok=True)
    datas = [path.read_bytes() for path in sorted(seeds)]
    manifest: dict[str, str] = {}
    for number in range(count):
        roll = rng.random()
        data = rng.choice(datas)
        if roll < 0.05:
            mutation, mutant = "odd_name", data
        elif roll < 0.15:
            mutation = rng.choice(sorted(BUILT))
            mutant = BUILT[mutation](data, random.Random(rng.random()))
        else:
            mutation = rng.choice(sorted(DERIVED))
            mutant = DERIVED[mutation](data, random.Random(rng.random()))
        name = _name(number, mutation, rng)
        with open(os.path.join(os.fsencode(out), name), "wb") as fh:
            fh.write(mutant)
        manifest[os.fsdecode(name)] = mutation
    return manifest
