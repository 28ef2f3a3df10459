"""Every image the header reader can read is decoded, equal frame for frame to an
independent reference, or fails with a named error code.

The reference is pydicom's own decode, computed in a process that never imports
dicomflow (:mod:`tests.pixels.pydicom_oracle`): dicomflow adds its imagecodecs
plugin to pydicom's decoders, and in this process pydicom could fall back on it.
Where pydicom's backends decode nothing, the reference is named per file:

- 12-bit JPEG Extended streams whose scan header pylibjpeg-libjpeg refuses:
  DCMTK's ``dcmdjpeg`` (one of them, RG3, holds values above its Bits Stored of 10:
  DCMTK masks them to Bits Stored, as pydicom masks any JPEG's, and so does dicomflow);
- a data set stored without file meta: pydicom, given the native syntax of the
  encoding it read the file in;
- RLE and deflated image frames of Bits Allocated 1: pydicom's decode of the same
  pixels stored natively (pydicom-data's ``liver*.dcm`` twins);
- JPEG XL: nothing decodes it here but libjxl, so the corpus file is checked
  against libjxl's decode of each fragment, and synthetic files against the arrays
  they were encoded from.
"""

from __future__ import annotations

import shutil
import warnings
from collections.abc import Iterator
from pathlib import Path

import imagecodecs
import numpy as np
import pydicom
import pytest
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.encaps import encapsulate, generate_frames
from pydicom.pixels import apply_modality_lut, pixel_array
from pydicom.uid import (
    CTImageStorage,
    ExplicitVRBigEndian,
    HTJ2KLossless,
    ImplicitVRLittleEndian,
    JPEGBaseline8Bit,
    SecondaryCaptureImageStorage,
    generate_uid,
)

from dicomflow.dicom.header import read_header
from dicomflow.errors import DicomReadError, ErrorCode
from dicomflow.pixels import imagecodecs_plugin
from dicomflow.pixels.decode import DecodedPixels, PixelDecodeError, decode, read_dataset
from dicomflow.pixels.header_dataset import dataset_from_header
from tests.conftest import CORPUS, PYDICOM_TEST_FILES, corpus_files, pydicom_files, require
from tests.pixels.references import CODEC_ONLY, ORACLE, REFERENCES, key, reference_frames

FILES = corpus_files() + pydicom_files()


# Images neither pydicom nor dicomflow decodes, and the code of their error rows.
UNDECODABLE: dict[str, ErrorCode] = {
    "pydicom__pydicom/test_files/JPEG2000-embedded-sequence-delimiter.dcm": (
        ErrorCode.DECODE_FAILED  # a sequence delimiter inside the codestream
    ),
    "pydicom/JPEG2000-embedded-sequence-delimiter.dcm": ErrorCode.DECODE_FAILED,
    "pydicom__pydicom/test_files/badVR.dcm": ErrorCode.DECODE_FAILED,  # Number of Frames "1A"
    "pydicom/badVR.dcm": ErrorCode.DECODE_FAILED,
    # Pixel Data without an Image Pixel module (no Rows, Columns, Bits Allocated ...)
    "pydicom__pydicom/test_files/meta_missing_tsyntax.dcm": ErrorCode.UNSUPPORTED_PIXELS,
    "pydicom/meta_missing_tsyntax.dcm": ErrorCode.UNSUPPORTED_PIXELS,
    "pydicom__pydicom/test_files/nested_priv_SQ.dcm": ErrorCode.UNSUPPORTED_PIXELS,
    "pydicom/nested_priv_SQ.dcm": ErrorCode.UNSUPPORTED_PIXELS,
    "themorlan__openREM/NM-NmIm-Siemens-s1-1.dcm": ErrorCode.DECODE_FAILED,  # empty Pixel Data
}


def _image_header(path: Path) -> object | None:
    """The header, when the header reader reads it and it has Pixel Data."""
    try:
        with path.open("rb") as fp:
            header = read_header(fp, size=path.stat().st_size)
    except DicomReadError:
        return None
    return header if header.pixel_data_tag is not None else None


@pytest.fixture(scope="module")
def references(tmp_path_factory: pytest.TempPathFactory) -> dict[str, np.ndarray | str]:
    if any(kind == "dcmdjpeg" for kind, _ in REFERENCES.values()) and CORPUS.exists():
        require(shutil.which("dcmdjpeg") is not None, "DCMTK's dcmdjpeg")
    images = [p for p in FILES if _image_header(p) is not None]
    folder = tmp_path_factory.mktemp("references")
    return dict(zip(map(key, images), reference_frames(images, folder), strict=True))


def _ours(path: Path) -> Iterator[tuple[str, DecodedPixels | ErrorCode]]:
    """dicomflow's decode, from the dataset built on the scan's header (when it can be
    built) and from pydicom's own reading of the file, as the pixel path opens them."""
    with path.open("rb") as fp:
        header = read_header(fp, size=path.stat().st_size)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            built = dataset_from_header(header, fp)
            fp.seek(0)
            read = read_dataset(fp)
    for way, ds in (("header", built), ("dcmread", read)):
        if ds is None:
            continue
        try:
            yield way, decode(ds)
        except PixelDecodeError as exc:
            yield way, exc.code


@pytest.mark.slow
@pytest.mark.parametrize("path", FILES, ids=[key(p) for p in FILES])
def test_each_image_decodes_as_its_reference_or_names_its_error(
    path: Path, references: dict[str, np.ndarray | str]
) -> None:
    name = key(path)
    if name not in references:
        return  # not an image the header reader can read
    expected = references[name]
    for way, ours in _ours(path):
        if name in UNDECODABLE:
            assert isinstance(expected, str), "pydicom decodes it: not undecodable"
            assert ours == UNDECODABLE[name], way
            continue
        assert isinstance(ours, DecodedPixels), f"{way}: {ours} where the reference decodes"
        if name in CODEC_ONLY:
            continue
        assert not isinstance(expected, str), f"no reference: {expected}"
        assert ours.array.shape == expected.shape, way
        np.testing.assert_array_equal(
            ours.array.astype(np.float64), expected.astype(np.float64), err_msg=way
        )


def test_the_gap_lists_name_corpus_files() -> None:
    require(CORPUS.exists(), f"the shared corpus at {CORPUS}")
    for name in (*REFERENCES, *CODEC_ONLY, *UNDECODABLE):
        root, relative = (
            (PYDICOM_TEST_FILES, name[8:]) if name.startswith("pydicom/") else (CORPUS, name)
        )
        assert (root / relative).is_file(), name


def test_the_oracle_imports_nothing_from_dicomflow() -> None:
    source = ORACLE.read_text()
    assert "dicomflow" not in source.split('"""', 2)[2]
    assert "from tests" not in source and "import tests" not in source


# --- JPEG XL: no file pydicom decodes, so synthetic ones against their source arrays ---


def _wrapped(
    frames: list[bytes],
    syntax: str,
    *,
    rows: int,
    cols: int,
    samples: int = 1,
    bits: tuple[int, int] = (8, 8),
    photometric: str = "MONOCHROME2",
) -> Dataset:
    """A valid Secondary Capture instance holding ``frames`` encapsulated under ``syntax``."""
    ds = Dataset()
    ds.file_meta = FileMetaDataset()
    ds.file_meta.TransferSyntaxUID = syntax
    ds.file_meta.MediaStorageSOPClassUID = SecondaryCaptureImageStorage
    ds.SOPClassUID = SecondaryCaptureImageStorage
    ds.SOPInstanceUID = generate_uid()
    ds.file_meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID
    ds.Rows, ds.Columns, ds.SamplesPerPixel = rows, cols, samples
    ds.PhotometricInterpretation = photometric
    if samples > 1:
        ds.PlanarConfiguration = 0
    ds.BitsAllocated, ds.BitsStored = bits
    ds.HighBit, ds.PixelRepresentation = bits[1] - 1, 0
    if len(frames) > 1:
        ds.NumberOfFrames = len(frames)
    ds.PixelData = encapsulate(frames)
    ds["PixelData"].VR = "OB"
    return ds


def _padded(syntax: str) -> bytes:
    return (syntax + "\0" * (len(syntax) % 2)).encode()


def _save(ds: Dataset, path: Path) -> None:
    """Write ``ds`` as a Part 10 file. pydicom refuses to write a transfer syntax it
    does not know (JPEG XL, deflated image frames): such a file is written under a
    known encapsulated syntax of the same length, whose UID is then swapped."""
    syntax = str(ds.file_meta.TransferSyntaxUID)
    if pydicom.uid.UID(syntax).name != syntax:
        ds.save_as(path, enforce_file_format=True)
        return
    stand_in = next(
        s for s in (JPEGBaseline8Bit, HTJ2KLossless) if len(_padded(s)) == len(_padded(syntax))
    )
    ds.file_meta.TransferSyntaxUID = stand_in
    ds.save_as(path, enforce_file_format=True)
    ds.file_meta.TransferSyntaxUID = syntax
    data = path.read_bytes()
    assert data.count(_padded(stand_in)) == 1
    path.write_bytes(data.replace(_padded(stand_in), _padded(syntax)))


def _round_trip(ds: Dataset, tmp_path: Path) -> Dataset:
    """``ds`` as written to a file and read back, by pydicom and by the pixel path."""
    path = tmp_path / f"{ds.SOPInstanceUID}.dcm"
    _save(ds, path)
    with path.open("rb") as fp:
        built = dataset_from_header(read_header(fp, size=path.stat().st_size), fp)
    assert built is not None
    return built


def _jxl(array: np.ndarray, **options: object) -> bytes:
    return bytes(imagecodecs.jpegxl_encode(array, lossless=True, **options))


def _pydicom_cannot(ds: Dataset) -> None:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        with pytest.raises(NotImplementedError):
            pixel_array(ds)


@pytest.mark.parametrize("syntax", imagecodecs_plugin.JPEGXL_SYNTAXES, ids=str)
def test_jpeg_xl_grayscale_frames_equal_their_source(syntax: str, tmp_path: Path) -> None:
    rng = np.random.default_rng(7)
    source = rng.integers(0, 4096, size=(3, 40, 56), dtype=np.uint16)  # 12 of 16 bits
    frames = [_jxl(f, bitspersample=12) for f in source]
    ds = _wrapped(frames, syntax, rows=40, cols=56, bits=(16, 12))
    ds.Modality, ds.SOPClassUID = "CT", CTImageStorage
    ds.RescaleSlope, ds.RescaleIntercept = 1, -1024
    _pydicom_cannot(ds)
    ours = decode(_round_trip(ds, tmp_path))
    np.testing.assert_array_equal(ours.array, source.astype(np.int32) - 1024)
    assert ours.rescale_applied and ours.units == "HU"


def test_jpeg_xl_colour_frame_equals_its_source(tmp_path: Path) -> None:
    source = np.random.default_rng(8).integers(0, 256, size=(24, 33, 3), dtype=np.uint8)
    ds = _wrapped(
        [_jxl(source)],
        imagecodecs_plugin.JPEGXLLossless,
        rows=24,
        cols=33,
        samples=3,
        photometric="RGB",
    )
    ours = decode(_round_trip(ds, tmp_path))
    assert ours.photometric_interpretation == "RGB"
    np.testing.assert_array_equal(ours.array, source[np.newaxis])


def test_jpeg_xl_8_bit_stream_in_a_16_bit_container(tmp_path: Path) -> None:
    source = np.arange(16 * 16, dtype=np.uint8).reshape(16, 16)
    ds = _wrapped([_jxl(source)], imagecodecs_plugin.JPEGXLLossless, rows=16, cols=16, bits=(16, 8))
    ours = decode(_round_trip(ds, tmp_path))
    assert ours.array.dtype == np.uint16
    np.testing.assert_array_equal(ours.array, source[np.newaxis])


def test_jpeg_xl_signed_pixels_are_a_named_error(tmp_path: Path) -> None:
    source = np.zeros((8, 8), dtype=np.uint16)
    ds = _wrapped([_jxl(source)], imagecodecs_plugin.JPEGXLLossless, rows=8, cols=8, bits=(16, 12))
    ds.PixelRepresentation = 1
    with pytest.raises(PixelDecodeError) as caught:
        decode(_round_trip(ds, tmp_path))
    assert caught.value.code == ErrorCode.DECODE_FAILED


def test_corpus_jpeg_xl_frames_are_libjxls() -> None:
    """No decoder but libjxl reads the corpus JPEG XL file: each frame equals libjxl's
    decode of its fragments, rescaled as the header says."""
    (name,) = CODEC_ONLY
    path = CORPUS / name
    require(path.exists(), f"the corpus file {name}")
    ds = pydicom.dcmread(path)
    frames = int(ds.get("NumberOfFrames") or 1)
    expected = np.stack(
        [
            imagecodecs.jpegxl_decode(f)
            for f in generate_frames(ds.PixelData, number_of_frames=frames)
        ]
    )
    _pydicom_cannot(ds)
    ours = decode(ds)
    slope, intercept = float(ds.RescaleSlope), float(ds.RescaleIntercept)
    np.testing.assert_array_equal(ours.array, expected * slope + intercept)


# --- the other gaps, on synthetic files where pydicom decodes too ---


def test_baseline_values_above_bits_stored_are_masked_as_pydicom_masks(tmp_path: Path) -> None:
    """An 8-bit baseline stream under Bits Stored 6: pydicom (pylibjpeg) keeps the low
    6 bits of each value, and so does dicomflow (through imagecodecs)."""
    source = (np.arange(48 * 64) % 256).astype(np.uint8).reshape(48, 64)
    stream = bytes(imagecodecs.jpeg8_encode(source, level=95))
    ds = _wrapped([stream], JPEGBaseline8Bit, rows=48, cols=64, bits=(8, 6))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        theirs = pixel_array(ds, decoding_plugin="pylibjpeg")
    assert theirs.max() <= 63 < imagecodecs.jpeg8_decode(stream).max()
    ours = decode(_round_trip(ds, tmp_path))
    np.testing.assert_array_equal(ours.array, theirs[np.newaxis])


@pytest.mark.parametrize(
    ("source", "syntax", "implicit", "little"),
    [
        ("CT_small.dcm", ImplicitVRLittleEndian, True, True),
        ("MR_small_bigendian.dcm", ExplicitVRBigEndian, False, False),
    ],
    ids=["implicit-little", "explicit-big"],
)
def test_a_dataset_without_file_meta_decodes_as_pydicom_given_its_syntax(
    source: str, syntax: str, implicit: bool, little: bool, tmp_path: Path
) -> None:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        ds = pydicom.dcmread(PYDICOM_TEST_FILES / source)
        expected = apply_modality_lut(pixel_array(ds), ds)
        del ds.file_meta
        path = tmp_path / "no-meta.dcm"
        ds.save_as(path, implicit_vr=implicit, little_endian=little)
        read = pydicom.dcmread(path, force=True)
    assert "TransferSyntaxUID" not in read.file_meta
    assert read.original_encoding == (implicit, little)
    np.testing.assert_array_equal(
        apply_modality_lut(pixel_array(path, transfer_syntax_uid=syntax), read), expected
    )
    np.testing.assert_array_equal(decode(read).array, expected[np.newaxis])


def test_encapsulated_pixel_data_without_a_syntax_is_unsupported(tmp_path: Path) -> None:
    stream = bytes(imagecodecs.jpeg8_encode(np.zeros((8, 8), np.uint8)))
    ds = _wrapped([stream], JPEGBaseline8Bit, rows=8, cols=8)
    _save(ds, tmp_path / "jpeg.dcm")
    read = pydicom.dcmread(tmp_path / "jpeg.dcm")
    del read.file_meta.TransferSyntaxUID
    with pytest.raises(PixelDecodeError) as caught:
        decode(read)
    assert caught.value.code == ErrorCode.UNSUPPORTED_TRANSFER_SYNTAX
    assert "encapsulated" in str(caught.value)


def test_a_deflated_frame_that_inflates_past_its_size_is_refused(tmp_path: Path) -> None:
    import zlib

    compressor = zlib.compressobj(9, zlib.DEFLATED, -zlib.MAX_WBITS)
    bomb = compressor.compress(bytes(1 << 24)) + compressor.flush()  # 16 MiB for 64 bytes
    ds = _wrapped([bomb], imagecodecs_plugin.DeflatedImageFrameCompression, rows=8, cols=8)
    with pytest.raises(PixelDecodeError) as caught:
        decode(_round_trip(ds, tmp_path))
    assert caught.value.code == ErrorCode.DECODE_FAILED
