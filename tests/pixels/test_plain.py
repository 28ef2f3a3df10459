"""Plain monochrome images (native, RLE) decoded from the header alone equal pydicom's.

The oracle is pydicom's own decoders (its native decoder, and its own RLE decoder,
asked by name so that no plugin of ours takes part) with its ``apply_modality_lut``; the
metadata is compared with the pydicom path of :func:`dicomflow.pixels.decode.decode`.
"""

from __future__ import annotations

import warnings
from collections.abc import Iterator
from io import BytesIO
from pathlib import Path
from typing import Any

import numpy as np
import pydicom
import pytest
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.pixels import apply_modality_lut, get_decoder
from pydicom.uid import (
    ExplicitVRLittleEndian,
    ImplicitVRLittleEndian,
    JPEG2000TransferSyntaxes,
    RLELossless,
    generate_uid,
)

from dicomflow.dicom.header import read_header
from dicomflow.errors import DicomReadError, ErrorCode
from dicomflow.lake.layout import LakeLayout
from dicomflow.pixels.decode import PixelDecodeError, decode
from dicomflow.pixels.plain import PlainImage, decode_with_header
from dicomflow.pixels.series_writer import PixelOptions, decode_instance
from dicomflow.records import Header
from tests.conftest import CORPUS, corpus_files, pydicom_files

FILES = corpus_files() + pydicom_files()


def _header(data: bytes) -> Header | None:
    try:
        return read_header(BytesIO(data), size=len(data))
    except DicomReadError:
        return None


def _pydicom(data: bytes) -> Dataset:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return pydicom.dcmread(BytesIO(data), force=True)


def _reference(ds: Dataset) -> np.ndarray:
    """pydicom's frames, frames first, with its Modality LUT where the file has one."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        syntax = ds.file_meta.TransferSyntaxUID
        if syntax.is_encapsulated:  # pydicom's own RLE decoder; pylibjpeg's OpenJPEG
            plugin = "pylibjpeg" if syntax in JPEG2000TransferSyntaxes else "pydicom"
            frames = get_decoder(syntax).as_array(ds, decoding_plugin=plugin)[0]
        else:
            frames = ds.pixel_array
        if "RescaleSlope" in ds and "RescaleIntercept" in ds:
            frames = apply_modality_lut(frames, ds)
    return frames.reshape(int(ds.get("NumberOfFrames") or 1), ds.Rows, ds.Columns)


def _check_same_as_pydicom(data: bytes) -> bool:
    """Whether the image took the native path; if it did, its pixels are pydicom's."""
    header = _header(data)
    image = PlainImage.of(header)
    if image is None:
        return False
    pixels = image.read(BytesIO(data))
    if pixels is None:  # a JPEG 2000 codestream pydicom reinterprets (or a JP2 file) is its
        assert image.codec == "j2k"
        return False
    ds = _pydicom(data)
    np.testing.assert_array_equal(pixels.array, _reference(ds))
    assert pixels.array.flags.writeable
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        theirs = decode(ds)
    assert pixels.array.dtype == theirs.array.dtype
    assert (pixels.rescale_applied, pixels.units, pixels.photometric_interpretation) == (
        theirs.rescale_applied,
        theirs.units,
        theirs.photometric_interpretation,
    )
    assert (pixels.window_center, pixels.window_width) == (
        theirs.window_center,
        theirs.window_width,
    )
    return True


@pytest.mark.parametrize("path", FILES, ids=[str(p) for p in FILES])
def test_native_decode_equals_pydicom(path: Path) -> None:
    _check_same_as_pydicom(path.read_bytes())


def _corpus_datasets() -> Iterator[tuple[bytes, Dataset, Any]]:
    """Each corpus file's bytes, pydicom's dataset of it and its transfer syntax (None
    without file meta); skips the test without the corpus."""
    if not CORPUS.exists():
        pytest.skip(f"no corpus at {CORPUS}")
    for path in corpus_files():
        data = path.read_bytes()
        ds = _pydicom(data)
        yield data, ds, getattr(getattr(ds, "file_meta", None), "TransferSyntaxUID", None)


def test_jpeg_2000_images_whose_codestream_matches_their_header_take_the_plain_path() -> None:
    """Where OpenJPEG's own reading of the codestream (pylibjpeg-openjpeg's parameters)
    gives one component of the image's Bits Stored and Pixel Representation, the plain
    path decodes it (and equals pydicom: ``test_native_decode_equals_pydicom``)."""
    import openjpeg
    from pydicom.encaps import generate_frames

    matching, taken = 0, 0
    for data, ds, syntax in _corpus_datasets():
        if syntax not in JPEG2000TransferSyntaxes:
            continue
        try:
            frames = int(ds.get("NumberOfFrames") or 1)
            first = next(generate_frames(ds.PixelData, number_of_frames=frames))
            found = openjpeg.get_parameters(first, j2k_format=0)
        except Exception:  # not a raw codestream, or no readable Pixel Data
            continue
        if (found["samples_per_pixel"], found["is_signed"], found["precision"]) != (
            1,
            bool(ds.get("PixelRepresentation")),
            ds.get("BitsStored"),
        ) or ds.get("PhotometricInterpretation") not in ("MONOCHROME1", "MONOCHROME2"):
            continue
        if ds.get("BitsAllocated") == 1:  # bit-packed images are pydicom's (module docstring)
            continue
        matching += 1
        taken += _check_same_as_pydicom(data)
    assert matching >= 10 and taken == matching, (taken, matching)


def test_most_plain_monochrome_corpus_images_take_the_plain_path() -> None:
    """The shortcut must apply where it should: the corpus's native and RLE grayscale
    images (as pydicom reads them) nearly all decode without a dataset."""
    plain, taken = 0, 0
    for data, ds, syntax in _corpus_datasets():
        if (
            syntax in (ExplicitVRLittleEndian, ImplicitVRLittleEndian, RLELossless)
            and "PixelData" in ds
            and ds.get("SamplesPerPixel") == 1
            and ds.get("BitsAllocated") in (8, 16, 32)
            and str(ds.get("PhotometricInterpretation", "")).startswith("MONOCHROME")
            and "ModalityLUTSequence" not in ds
            and "SharedFunctionalGroupsSequence" not in ds
        ):
            plain += 1
            taken += _check_same_as_pydicom(data)
    assert plain >= 20
    assert taken >= 0.9 * plain


def _slice(
    stored: np.ndarray,
    *,
    bits_stored: int,
    signed: bool,
    rescale: tuple[str, str] | None = ("1", "-1024"),
    syntax: str = ExplicitVRLittleEndian,
    frames: int | None = None,
    rle: bool = False,
) -> bytes:
    ds = Dataset()
    ds.SOPClassUID = "1.2.840.10008.5.1.4.1.1.2"
    ds.SOPInstanceUID = generate_uid()
    ds.Modality = "CT"
    ds.SamplesPerPixel = 1
    ds.PhotometricInterpretation = "MONOCHROME2"
    ds.Rows, ds.Columns = stored.shape[-2:]
    if frames is not None:
        ds.NumberOfFrames = frames
    ds.BitsAllocated = stored.dtype.itemsize * 8
    ds.BitsStored, ds.HighBit = bits_stored, bits_stored - 1
    ds.PixelRepresentation = int(signed)
    ds.WindowCenter, ds.WindowWidth = ["40", "-600"], ["400", "1500"]
    if rescale is not None:
        ds.RescaleSlope, ds.RescaleIntercept = rescale
    ds.PixelData = stored.tobytes()
    ds.file_meta = FileMetaDataset()
    ds.file_meta.TransferSyntaxUID = syntax
    if rle:
        ds.compress(RLELossless, encoding_plugin="pydicom")
        syntax = RLELossless
    ds.file_meta.MediaStorageSOPClassUID = ds.SOPClassUID
    ds.file_meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID
    ds.file_meta.TransferSyntaxUID = syntax
    out = BytesIO()
    ds.save_as(out, enforce_file_format=True, implicit_vr=syntax == ImplicitVRLittleEndian)
    return out.getvalue()


RNG = np.random.default_rng(7)


CASES = {
    # 12 bits stored with junk above High Bit (an overlay in the unused bits)
    "u12-junk-bits": (
        RNG.integers(0, 1 << 16, (32, 24), dtype=np.uint16),
        12,
        False,
        ("1", "-1024"),
    ),
    # signed 12-bit values stored without their sign extended into the top bits
    "s12-unextended": (
        RNG.integers(0, 1 << 12, (32, 24), dtype=np.uint16).view(np.int16),
        12,
        True,
        None,
    ),
    "s16-slope2": (RNG.integers(-2000, 2000, (32, 24), dtype=np.int16), 16, True, ("2", "5")),
    "u8-fractional": (RNG.integers(0, 255, (16, 16), dtype=np.uint8), 8, False, ("0.5", "-3.25")),
}
NATIVE_ONLY = {  # pydicom's RLE encoder refuses 32-bit containers
    "u32": (RNG.integers(0, 1 << 32, (8, 8), dtype=np.uint32), 32, False, ("1", "0")),
    "u20-in-32": (RNG.integers(0, 1 << 20, (8, 8), dtype=np.uint32), 20, False, ("1", "0")),
}
ENCODINGS = [(name, False) for name in {**CASES, **NATIVE_ONLY}] + [(name, True) for name in CASES]


@pytest.mark.parametrize(
    ("case", "rle"), ENCODINGS, ids=[f"{c}-{'rle' if r else 'native'}" for c, r in ENCODINGS]
)
def test_stored_values_and_rescale_as_pydicom(case: str, rle: bool) -> None:
    stored, bits_stored, signed, rescale = {**CASES, **NATIVE_ONLY}[case]
    data = _slice(stored, bits_stored=bits_stored, signed=signed, rescale=rescale, rle=rle)
    assert _check_same_as_pydicom(data)


def test_implicit_vr_and_several_frames() -> None:
    stored = RNG.integers(0, 1 << 12, (3, 20, 10), dtype=np.uint16)
    data = _slice(stored, bits_stored=12, signed=False, syntax=ImplicitVRLittleEndian, frames=3)
    assert _check_same_as_pydicom(data)
    assert PlainImage.of(_header(data)).frames == 3  # type: ignore[union-attr]


def test_a_short_value_is_left_to_pydicom_and_its_error(tmp_path: Path) -> None:
    data = _slice(RNG.integers(0, 4096, (64, 64), dtype=np.uint16), bits_stored=12, signed=False)
    header = _header(data)
    image = PlainImage.of(header)
    assert image is not None
    cut = tmp_path / "cut.dcm"
    cut.write_bytes(data[:-1000])  # the file ends inside the value its header declared
    with cut.open("rb") as fp:
        assert image.read(fp) is None
    with pytest.raises(PixelDecodeError) as raised:
        decode_instance(str(cut), PixelOptions(LakeLayout(str(tmp_path / "lake"))), header)
    with pytest.raises(PixelDecodeError) as alone:
        decode(_pydicom(cut.read_bytes()))  # what pydicom's path says of the file by itself
    assert raised.value.code == alone.value.code


def test_over_the_memory_budget_is_left_to_pydicom() -> None:
    data = _slice(RNG.integers(0, 4096, (64, 64), dtype=np.uint16), bits_stored=12, signed=False)
    header = _header(data)
    assert PlainImage.of(header, memory_budget=64 * 64 * 8 - 1) is None
    with pytest.raises(PixelDecodeError) as raised:
        decode_with_header(_pydicom(data), header, memory_budget=64 * 64 * 8 - 1)
    assert raised.value.code == ErrorCode.TOO_LARGE


@pytest.mark.parametrize(
    "change",
    [
        {"PhotometricInterpretation": "RGB", "SamplesPerPixel": 3},
        {"RescaleSlope": ""},
        {"BitsStored": 17},
        {"NumberOfFrames": "0"},
    ],
    ids=["colour", "empty-slope", "bits-stored-above-allocated", "zero-frames"],
)
def test_what_is_not_plain_goes_to_pydicom(change: dict[str, object]) -> None:
    ds = _pydicom(
        _slice(RNG.integers(0, 4096, (8, 8), dtype=np.uint16), bits_stored=12, signed=False)
    )
    for keyword, value in change.items():
        setattr(ds, keyword, value)
    out = BytesIO()
    ds.save_as(out)
    assert PlainImage.of(_header(out.getvalue())) is None


def test_rle_with_several_frames() -> None:
    stored = RNG.integers(0, 1 << 12, (3, 20, 10), dtype=np.uint16)
    data = _slice(stored, bits_stored=12, signed=False, frames=3, rle=True)
    image = PlainImage.of(_header(data))
    assert image is not None and image.codec == "rle" and image.frames == 3
    assert _check_same_as_pydicom(data)


def _outcome(decode_it: Any) -> np.ndarray | str:
    try:
        return decode_it().array
    except PixelDecodeError as exc:
        return str(exc.code)


def test_a_broken_rle_stream_is_left_to_pydicom(tmp_path: Path) -> None:
    """A stream imagecodecs refuses is not the plain path's to judge: the instance
    decodes (or fails) exactly as pydicom's path decodes the file by itself."""
    data = _slice(
        RNG.integers(0, 4096, (64, 64), dtype=np.uint16), bits_stored=12, signed=False, rle=True
    )
    header = _header(data)
    image = PlainImage.of(header)
    assert image is not None
    segments = data.index(b"\x02\x00\x00\x00\x40\x00\x00\x00")  # the RLE header: 2 segments
    broken = tmp_path / "broken.dcm"
    broken.write_bytes(data[:segments] + b"\x07" + data[segments + 1 :])  # 7 segments
    with broken.open("rb") as fp:
        assert image.read(fp) is None
    options = PixelOptions(LakeLayout(str(tmp_path / "lake")))
    ours = _outcome(lambda: decode_instance(str(broken), options, header))
    alone = _outcome(lambda: decode(_pydicom(broken.read_bytes())))
    if isinstance(alone, str):
        assert ours == alone
    else:
        np.testing.assert_array_equal(ours, alone)
