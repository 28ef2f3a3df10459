"""Read a DICOM header from an open binary file: everything but the Pixel Data value.

Two readers produce the same :class:`~dicomflow.dicom.elements.Element` tree:
the fast reader (:mod:`.fastread`) for ordinary little-endian Part 10 files,
and the pydicom-backed reader here for everything else. Both stop at Pixel
Data, read only its element header (and the item headers of encapsulated
data) to locate it, and parse any elements that follow it. On a remote file
this costs a few small range requests instead of downloading the object.

A file damaged in or after its Pixel Data (a value cut short, encapsulated data
without its sequence delimiter, elements after it cut short) still has an
intact header. Read with ``salvage``, it gives a :class:`DamagedHeader`: every
element before Pixel Data, where Pixel Data starts, and what is wrong with it.
"""

from __future__ import annotations

import struct
import warnings
import zlib
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any, BinaryIO, NamedTuple, cast

import pydicom
from pydicom import config as pydicom_config
from pydicom.dataelem import RawDataElement
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.errors import BytesLengthException, InvalidDicomError
from pydicom.filebase import DicomBytesIO
from pydicom.filereader import _read_file_meta_info, read_dataset, read_preamble
from pydicom.uid import DeflatedExplicitVRLittleEndian

from dicomflow.dicom.clamped import ClampedReads
from dicomflow.dicom.dicomjson import BINARY_VRS
from dicomflow.dicom.elements import UNDEFINED_LENGTH
from dicomflow.dicom.fastread import (
    IMPLICIT_PIXEL_VR,
    PIXEL_DATA_TAGS,
    FastHeader,
    FastPathUnsupported,
    read_fast,
    skip_fragments,
)
from dicomflow.dicom.inflate import InflateLimits, inflate
from dicomflow.dicom.pydicom_tree import resolved_vr, tree_from_dataset
from dicomflow.dicom.sniff import SNIFF_BYTES, has_dicm_prefix, looks_like_raw_dataset
from dicomflow.errors import ErrorCode, MalformedDicomError, NotDicomError
from dicomflow.records import Header

# Values longer than this are skipped while parsing (only their offset is kept).
DEFER_BYTES = 64 * 1024

DEFAULT_INFLATE_LIMITS = InflateLimits()

_PIXEL_VRS = frozenset({b"OB", b"OW", b"OF", b"OD", b"UN"})

# What a salvaged header says about its damage (the ``warnings`` of its row): no values.
PIXEL_DATA_TRUNCATED = "pixel data truncated"
PIXEL_DATA_MALFORMED = "pixel data malformed"
TRAILING_TRUNCATED = "elements after pixel data truncated"


@dataclass(frozen=True, slots=True)
class DamagedHeader(Header):
    """The header of a file damaged in or after its Pixel Data, read with ``salvage``.

    Every element before Pixel Data is there. Pixel Data is located as far as it
    could be (its declared length may run past the end of the file; encapsulated
    data has no known end) and elements stored after it are lost. ``damage`` says
    what is wrong, without values.
    """

    damage: str = PIXEL_DATA_TRUNCATED


@contextmanager
def pydicom_mode(mode: int) -> Iterator[None]:
    """Set pydicom's reading validation mode around a read, and keep its warnings quiet.

    pydicom's module flags are process-wide; they are set only around a read,
    inside the task, and restored afterwards. Its warnings can quote values, so
    they are silenced rather than forwarded.
    """
    settings = pydicom_config.settings
    previous = settings.reading_validation_mode
    settings.reading_validation_mode = mode
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            yield
    finally:
        settings.reading_validation_mode = previous


def read_header(
    fp: BinaryIO,
    *,
    size: int | None,
    salvage: bool = False,
    inflate_limits: InflateLimits = DEFAULT_INFLATE_LIMITS,
) -> Header:
    """Parse the header of the DICOM file open in ``fp``.

    Raises :class:`NotDicomError` for content that is not DICOM and
    :class:`MalformedDicomError` (code ``truncated``, ``too_deep`` or
    ``malformed``) for DICOM that cannot be parsed. Messages carry no values.
    With ``salvage``, damage that starts at Pixel Data does not raise: the
    header comes back as a :class:`DamagedHeader`. A deflated data set that would
    inflate past ``inflate_limits`` raises with code ``too_large``.

    The fast reader handles ordinary little-endian Part 10 files; everything
    else (and anything it is unsure of, damage included) goes to the
    pydicom-backed reader.
    """
    head = fp.read(SNIFF_BYTES)
    if not head:
        raise NotDicomError("empty file", code=ErrorCode.EMPTY_FILE)
    if not has_dicm_prefix(head) and not looks_like_raw_dataset(head, size):
        raise NotDicomError("no DICM prefix and no parseable DICOM header")
    if has_dicm_prefix(head):
        try:
            return _from_fast(read_fast(fp, size))
        except FastPathUnsupported:
            pass
    return read_header_with_pydicom(fp, size=size, salvage=salvage, inflate_limits=inflate_limits)


def _from_fast(fast: FastHeader) -> Header:
    pixel: dict[str, Any] = {}
    if fast.pixel is not None:
        tag, vr, offset, length, end = fast.pixel
        pixel = {
            "pixel_data_tag": tag,
            "pixel_data_vr": vr,
            "pixel_data_offset": offset,
            "pixel_data_length": length,
            "pixel_data_end": end,
        }
    return Header(
        fast.elements,
        fast.file_meta,
        fast.transfer_syntax_uid,
        True,
        fast.implicit,
        deflated=False,
        **pixel,
    )


def read_header_with_pydicom(
    fp: BinaryIO,
    *,
    size: int | None,
    salvage: bool = False,
    inflate_limits: InflateLimits = DEFAULT_INFLATE_LIMITS,
) -> Header:
    """The careful reader: pydicom parses, then its datasets become the element tree.

    The first attempt runs pydicom in strict mode so that a file ending early
    raises instead of being silently cut short. Files that strict mode rejects
    only for an encoding inconsistency (implicit VR where explicit was
    declared, an unknown tag in implicit VR) are re-read in pydicom's default,
    tolerant mode, as ``pydicom.dcmread`` would read them. With ``salvage``,
    damage in or after Pixel Data gives a :class:`DamagedHeader` instead of an error.
    """
    if size is not None:
        fp = ClampedReads(fp, size)  # type: ignore[assignment]  # claims cost what the file holds
    try:
        ds, meta, fields = _read_in_mode(fp, size, pydicom_config.RAISE, salvage, inflate_limits)
    except _Inconsistent:
        ds, meta, fields = _read_in_mode(fp, size, pydicom_config.WARN, salvage, inflate_limits)
    kind = DamagedHeader if "damage" in fields else Header
    with pydicom_mode(pydicom_config.WARN):
        try:
            return kind(tree_from_dataset(ds), tree_from_dataset(meta), **fields)
        except RecursionError as exc:
            raise MalformedDicomError(
                "sequences nested too deeply to parse", code=ErrorCode.TOO_DEEP
            ) from exc
        except (
            ValueError,
            KeyError,
            TypeError,
            IndexError,
            OverflowError,
            EOFError,
            NotImplementedError,
            AttributeError,
            LookupError,
            struct.error,
            OSError,  # pydicom's "No tag to read at file position" inside a sequence's value
            BytesLengthException,
        ) as exc:
            if isinstance(exc, MalformedDicomError):
                raise
            raise MalformedDicomError(f"header cannot be parsed ({type(exc).__name__})") from exc


class _Inconsistent(Exception):
    """Strict mode rejected an encoding inconsistency that tolerant mode handles."""


_Parsed = tuple[Dataset, FileMetaDataset, dict[str, Any]]


def _read_in_mode(
    fp: BinaryIO, size: int | None, mode: int, salvage: bool, limits: InflateLimits
) -> _Parsed:
    fp.seek(0)
    with pydicom_mode(mode):
        try:
            return _parse(fp, size, salvage, limits)
        except MalformedDicomError:
            raise
        except RecursionError as exc:
            raise MalformedDicomError(
                "sequences nested too deeply to parse", code=ErrorCode.TOO_DEEP
            ) from exc
        except (EOFError, struct.error) as exc:
            raise MalformedDicomError(
                f"file ends inside the header ({type(exc).__name__})", code=ErrorCode.TRUNCATED
            ) from exc
        except zlib.error as exc:
            raise MalformedDicomError("deflated data set cannot be inflated") from exc
        except (InvalidDicomError, KeyError) as exc:
            if mode == pydicom_config.RAISE:
                raise _Inconsistent from exc
            raise MalformedDicomError(f"header cannot be parsed ({type(exc).__name__})") from exc
        except (
            ValueError,
            TypeError,
            IndexError,
            OverflowError,
            NotImplementedError,
            AttributeError,
            LookupError,
            OSError,
            BytesLengthException,  # a value whose length is no multiple of its VR's size
        ) as exc:
            raise MalformedDicomError(f"header cannot be parsed ({type(exc).__name__})") from exc


def _text_or_none(value: Any) -> str | None:
    """A UID as text; a value of another VR (bytes, a number) is no UID at all, and
    pydicom then reads the data set by the encoding it finds."""
    return str(value) if isinstance(value, str) else None


def _parse(fp: BinaryIO, size: int | None, salvage: bool, limits: InflateLimits) -> _Parsed:
    deflated = _deflated_start(fp)
    if deflated is not None:  # pydicom would inflate it whole, however large
        return _parse_deflated(fp, *deflated, size, limits)
    fp.seek(0)
    meta_probe = pydicom.dcmread(fp, force=True, stop_before_pixels=True, defer_size=DEFER_BYTES)
    file_meta: FileMetaDataset = meta_probe.file_meta
    ts = _text_or_none(file_meta.get("TransferSyntaxUID"))
    little = bool(meta_probe.is_little_endian)
    implicit = bool(meta_probe.is_implicit_VR)
    fields: dict[str, Any] = {
        "transfer_syntax_uid": ts,
        "is_little_endian": little,
        "is_implicit_vr": implicit,
        "deflated": False,
    }
    _reject_empty(meta_probe, file_meta)

    ds = Dataset(meta_probe)  # a plain Dataset: no file handle travels with it
    _check_complete(ds, size)
    _check_complete(file_meta, size)
    _load_deferred_structure(ds, fp)
    try:
        pixel = _locate_pixel_data(fp, size, little=little)
    except MalformedDicomError:
        if not salvage:
            raise
        fields.update(damage=PIXEL_DATA_TRUNCATED, trailing_parsed=False)  # its header is cut
        return ds, file_meta, fields
    if pixel is None:
        return ds, file_meta, fields
    fields.update(
        pixel_data_tag=pixel.tag,
        pixel_data_vr=pixel.vr,
        pixel_data_offset=pixel.offset,
        pixel_data_length=pixel.length,
    )
    if pixel.error is not None:
        if not salvage:
            raise pixel.error
        truncated = pixel.error.code == ErrorCode.TRUNCATED
        damage = PIXEL_DATA_TRUNCATED if truncated else PIXEL_DATA_MALFORMED
        fields.update(damage=damage, trailing_parsed=False)
        return ds, file_meta, fields
    if size is not None and pixel.end < size:
        try:
            fields["trailing_parsed"] = _merge_trailing_elements(
                fp, ds, pixel.end, size, little=little, implicit=implicit
            )
        except MalformedDicomError:
            if not salvage:
                raise
            fields.update(damage=TRAILING_TRUNCATED, trailing_parsed=False)
    return ds, file_meta, fields


def _check_complete(ds: Dataset, size: int | None) -> None:
    """pydicom returns a short value when a file ends inside it; treat that as truncation."""
    for tag in ds.keys():  # noqa: SIM118 (iterating a Dataset yields elements)
        raw = ds.get_item(tag, keep_deferred=True)
        if not isinstance(raw, RawDataElement) or raw.length == UNDEFINED_LENGTH:
            continue
        if raw.value is None:
            short = size is not None and raw.value_tell + raw.length > size
        else:
            short = len(raw.value) < raw.length
        if short:
            raise MalformedDicomError("file ends inside an element value", code=ErrorCode.TRUNCATED)


def _load_deferred_structure(ds: Dataset, fp: BinaryIO) -> None:
    """Read the values pydicom deferred unless they are plain binary.

    Large sequences and text must be parsed later, after the file is closed, so
    their bytes are loaded now; large OB/OW/UN values stay deferred and become
    bulk data references.
    """
    for tag in ds.keys():  # noqa: SIM118 (iterating a Dataset yields elements)
        elem = ds.get_item(tag, keep_deferred=True)
        if isinstance(elem, RawDataElement):
            if elem.value is None and elem.length and resolved_vr(elem, ds) not in BINARY_VRS:
                fp.seek(elem.value_tell)
                ds[tag] = elem._replace(value=fp.read(elem.length))
        elif elem is not None and elem.VR == "SQ":
            for item in elem.value:
                _load_deferred_structure(item, fp)


def _merge_trailing_elements(
    fp: BinaryIO, ds: Dataset, offset: int, size: int, *, little: bool, implicit: bool
) -> bool:
    """Parse elements stored after Pixel Data (padding, signatures) into ``ds``.

    A file that ends inside them is truncated. Bytes that are not a data set at
    all return False: the header itself is still good, so the caller records a
    warning rather than failing.
    """
    fp.seek(offset)
    try:
        trailing = read_dataset(fp, implicit, little, defer_size=DEFER_BYTES)
    except (EOFError, struct.error) as exc:
        raise MalformedDicomError(
            "file ends inside the elements after Pixel Data", code=ErrorCode.TRUNCATED
        ) from exc
    except (ValueError, KeyError, NotImplementedError):
        return False
    _check_complete(trailing, size)
    for tag in trailing.keys():  # noqa: SIM118 (iterating a Dataset yields elements)
        ds[tag] = trailing.get_item(
            tag, keep_deferred=True
        )  # keep the raw element; converted lazily
    return True


def _reject_empty(ds: Dataset, file_meta: FileMetaDataset) -> None:
    if len(ds) == 0 and len(file_meta) == 0:
        raise NotDicomError("no DICOM elements could be parsed")


def _deflated_start(fp: BinaryIO) -> tuple[FileMetaDataset, int] | None:
    """The file meta and where the data set starts, when the file meta names the
    deflated transfer syntax (read as ``dcmread`` reads them); else None."""
    fp.seek(0)
    read_preamble(fp, force=True)
    file_meta = _read_file_meta_info(fp)
    if _text_or_none(file_meta.get("TransferSyntaxUID")) != DeflatedExplicitVRLittleEndian:
        return None
    return file_meta, fp.tell()


def _parse_deflated(
    fp: BinaryIO, file_meta: FileMetaDataset, start: int, size: int | None, limits: InflateLimits
) -> _Parsed:
    """Deflated data sets must be inflated whole (within ``limits``); bulk offsets then
    refer to the inflated stream."""
    fp.seek(start)
    inflated = inflate(fp, deflated_size=None if size is None else size - start, limits=limits)
    stream = cast(BinaryIO, DicomBytesIO(inflated))
    ds = Dataset(read_dataset(stream, is_implicit_VR=False, is_little_endian=True))
    _reject_empty(ds, file_meta)
    fields: dict[str, Any] = {
        "transfer_syntax_uid": str(DeflatedExplicitVRLittleEndian),
        "is_little_endian": True,
        "is_implicit_vr": False,
        "deflated": True,
    }
    pixel_tag = next((t for t in sorted(PIXEL_DATA_TAGS) if t in ds), None)
    if pixel_tag is not None:
        raw = ds.get_item(pixel_tag, keep_deferred=True)
        fields.update(
            pixel_data_tag=pixel_tag,
            pixel_data_vr=raw.VR,
            pixel_data_length=getattr(raw, "length", None),
        )
        del ds[pixel_tag]
    return ds, file_meta, fields


class _PixelLocation(NamedTuple):
    """Where Pixel Data sits; ``length`` None means encapsulated (undefined length).

    A value that runs past the end of the file, or encapsulated data whose items
    cannot be walked to their delimiter, has ``error`` set (and no known end).
    """

    tag: int
    vr: str | None
    offset: int
    length: int | None
    end: int
    error: MalformedDicomError | None = None


def _locate_pixel_data(fp: BinaryIO, size: int | None, *, little: bool) -> _PixelLocation | None:
    """Read the Pixel Data element header at the current position, if there is one.

    Raises :class:`MalformedDicomError` only when that element header itself is cut
    short; damage in the value is reported in the location's ``error``.
    """
    start = fp.tell()
    raw = fp.read(12)
    if len(raw) < 8:
        return None
    order = "<" if little else ">"
    group, element = struct.unpack(order + "HH", raw[:4])
    tag = group << 16 | element
    if tag not in PIXEL_DATA_TAGS:
        return None
    # Trust the bytes over the transfer syntax: some files declare explicit VR
    # but are written implicit (pydicom reads them tolerantly, so do we).
    vr: str | None = None
    if raw[4:6] in _PIXEL_VRS:
        if len(raw) < 12:
            raise MalformedDicomError(
                "file ends inside the Pixel Data header", code=ErrorCode.TRUNCATED
            )
        (length,) = struct.unpack(order + "L", raw[8:12])
        value_offset = start + 12
        vr = raw[4:6].decode("ascii")
    else:  # implicit VR: the dictionary's VR for the pixel tag
        (length,) = struct.unpack(order + "L", raw[4:8])
        value_offset = start + 8
        vr = IMPLICIT_PIXEL_VR[tag]
    if length != UNDEFINED_LENGTH:
        end = value_offset + length
        if size is not None and end > size:
            cut = MalformedDicomError(
                "Pixel Data runs past the end of the file", code=ErrorCode.TRUNCATED
            )
            return _PixelLocation(tag, vr, value_offset, length, end, cut)
        return _PixelLocation(tag, vr, value_offset, length, end)
    try:
        end = skip_fragments(fp, value_offset, size, order)
    except MalformedDicomError as exc:
        return _PixelLocation(tag, vr, value_offset, None, value_offset, exc)
    return _PixelLocation(tag, vr, value_offset, None, end)
