"""Plain native monochrome images decoded from the header alone equal pydicom's decode.

The oracle is pydicom's own native decoder (``Dataset.pixel_array``, which no plugin of
ours takes part in for native data) with its ``apply_modality_lut``; the metadata is
compared with the pydicom path of :func:`dicomflow.pixels.decode.decode`.
"""

from __future__ import annotations

import warnings
from io import BytesIO
from pathlib import Path

import numpy as np
import pydicom
import pytest
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.pixels import apply_modality_lut
from pydicom.uid import ExplicitVRLittleEndian, ImplicitVRLittleEndian, generate_uid

from dicomflow.dicom.header import read_header
from dicomflow.errors import DicomReadError, ErrorCode
from dicomflow.lake.layout import LakeLayout
from dicomflow.pixels.decode import PixelDecodeError, decode
from dicomflow.pixels.native import NativeImage, decode_with_header
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
        frames = ds.pixel_array
        if "RescaleSlope" in ds and "RescaleIntercept" in ds:
            frames = apply_modality_lut(frames, ds)
    return frames.reshape(int(ds.get("NumberOfFrames") or 1), ds.Rows, ds.Columns)


def _check_same_as_pydicom(data: bytes) -> bool:
    """Whether the image took the native path; if it did, its pixels are pydicom's."""
    header = _header(data)
    image = NativeImage.of(header)
    if image is None:
        return False
    pixels = image.read(BytesIO(data))
    assert pixels is not None
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


def test_most_native_monochrome_corpus_images_take_the_native_path() -> None:
    """The shortcut must apply where it should: the corpus's plain native grayscale images
    (as pydicom reads them) nearly all decode without a dataset."""
    if not CORPUS.exists():
        pytest.skip(f"no corpus at {CORPUS}")
    plain, taken = 0, 0
    for path in corpus_files():
        data = path.read_bytes()
        ds = _pydicom(data)
        syntax = getattr(getattr(ds, "file_meta", None), "TransferSyntaxUID", None)
        if (
            syntax in (ExplicitVRLittleEndian, ImplicitVRLittleEndian)
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
    ds.file_meta.MediaStorageSOPClassUID = ds.SOPClassUID
    ds.file_meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID
    ds.file_meta.TransferSyntaxUID = syntax
    out = BytesIO()
    ds.save_as(out, enforce_file_format=True, implicit_vr=syntax == ImplicitVRLittleEndian)
    return out.getvalue()


RNG = np.random.default_rng(7)


@pytest.mark.parametrize(
    ("stored", "bits_stored", "signed", "rescale"),
    [
        # 12 bits stored with junk above High Bit (an overlay in the unused bits)
        (RNG.integers(0, 1 << 16, (32, 24), dtype=np.uint16), 12, False, ("1", "-1024")),
        # signed 12-bit values stored without their sign extended into the top bits
        (RNG.integers(0, 1 << 12, (32, 24), dtype=np.uint16).view(np.int16), 12, True, None),
        (RNG.integers(-2000, 2000, (32, 24), dtype=np.int16), 16, True, ("2", "5")),
        (RNG.integers(0, 255, (16, 16), dtype=np.uint8), 8, False, ("0.5", "-3.25")),
        (RNG.integers(0, 1 << 20, (8, 8), dtype=np.uint32), 20, False, ("1", "0")),
    ],
    ids=["u12-junk-bits", "s12-unextended", "s16-slope2", "u8-fractional", "u20-in-32"],
)
def test_stored_values_and_rescale_as_pydicom(
    stored: np.ndarray, bits_stored: int, signed: bool, rescale: tuple[str, str] | None
) -> None:
    assert _check_same_as_pydicom(
        _slice(stored, bits_stored=bits_stored, signed=signed, rescale=rescale)
    )


def test_implicit_vr_and_several_frames() -> None:
    stored = RNG.integers(0, 1 << 12, (3, 20, 10), dtype=np.uint16)
    data = _slice(stored, bits_stored=12, signed=False, syntax=ImplicitVRLittleEndian, frames=3)
    assert _check_same_as_pydicom(data)
    assert NativeImage.of(_header(data)).frames == 3  # type: ignore[union-attr]


def test_a_short_value_is_left_to_pydicom_and_its_error(tmp_path: Path) -> None:
    data = _slice(RNG.integers(0, 4096, (64, 64), dtype=np.uint16), bits_stored=12, signed=False)
    header = _header(data)
    image = NativeImage.of(header)
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
    assert NativeImage.of(header, memory_budget=64 * 64 * 8 - 1) is None
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
    assert NativeImage.of(_header(out.getvalue())) is None
