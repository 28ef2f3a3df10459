"""A dataset built from the scan's header equals ``pydicom.dcmread`` of the file, and
decodes to the same pixels, for every file of the corpus and of pydicom's test set."""

from __future__ import annotations

import warnings
from pathlib import Path

import numpy as np
import pydicom
import pytest

from dicomflow.dicom.header import read_header
from dicomflow.errors import DicomReadError
from dicomflow.pixels.decode import DecodedPixels, PixelDecodeError, decode
from dicomflow.pixels.header_dataset import dataset_from_header
from dicomflow.records import Header
from tests.conftest import CORPUS, corpus_files, pydicom_files

FILES = corpus_files() + pydicom_files()


def _header(path: Path) -> Header | None:
    try:
        with path.open("rb") as fp:
            return read_header(fp, size=path.stat().st_size)
    except DicomReadError:
        return None


def _decoded(ds: pydicom.Dataset) -> DecodedPixels | str:
    try:
        return decode(ds)
    except PixelDecodeError as exc:
        return str(exc.code)


@pytest.mark.parametrize("path", FILES, ids=[str(p) for p in FILES])
def test_same_dataset_and_pixels_as_dcmread(path: Path) -> None:
    header = _header(path)
    if header is None or header.pixel_data_tag is None:
        return
    with path.open("rb") as fp:
        built = dataset_from_header(header, fp)
    if built is None:
        assert header.pixel_data_end is None or any(e.value is None for e in header.elements)
        return
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        read = pydicom.dcmread(path, force=True)
        assert built == read
        assert built.file_meta == read.file_meta
        ours, theirs = _decoded(built), _decoded(read)
    if isinstance(theirs, str):
        assert ours == theirs
        return
    assert isinstance(ours, DecodedPixels)
    assert ours.array.dtype == theirs.array.dtype
    np.testing.assert_array_equal(ours.array, theirs.array)
    assert (ours.rescale_applied, ours.units, ours.photometric_interpretation) == (
        theirs.rescale_applied,
        theirs.units,
        theirs.photometric_interpretation,
    )
    assert (ours.window_center, ours.window_width, ours.palette) == (
        theirs.window_center,
        theirs.window_width,
        theirs.palette,
    )


def test_most_corpus_images_skip_the_second_parse() -> None:
    """The shortcut must actually apply: most corpus images are ordinary files."""
    images = [h for h in map(_header, corpus_files()) if h is not None and h.pixel_data_tag]
    if not images:
        pytest.skip(f"no corpus at {CORPUS}")
    built = 0
    for header, path in zip(images, [p for p in corpus_files() if _has_pixels(p)], strict=True):
        with path.open("rb") as fp:
            built += dataset_from_header(header, fp) is not None
    assert built >= 0.8 * len(images)


def test_a_file_that_shrank_is_left_to_pydicom(tmp_path: Path) -> None:
    source = next(p for p in pydicom_files() if p.name == "CT_small.dcm")
    header = _header(source)
    assert header is not None and header.pixel_data_end is not None
    cut = tmp_path / "cut.dcm"
    cut.write_bytes(source.read_bytes()[: header.pixel_data_end - 100])
    with cut.open("rb") as fp:
        assert dataset_from_header(header, fp) is None


def test_values_left_in_the_file_are_left_to_pydicom() -> None:
    source = next(p for p in pydicom_files() if p.name == "CT_small.dcm")
    header = _header(source)
    assert header is not None
    first = header.elements[0]
    deferred = Header(
        (first._replace(value=None), *header.elements[1:]),
        header.file_meta,
        header.transfer_syntax_uid,
        header.is_little_endian,
        header.is_implicit_vr,
        header.deflated,
        header.pixel_data_tag,
        header.pixel_data_vr,
        header.pixel_data_offset,
        header.pixel_data_length,
        header.trailing_parsed,
        header.pixel_data_end,
    )
    with source.open("rb") as fp:
        assert dataset_from_header(deferred, fp) is None


def _has_pixels(path: Path) -> bool:
    header = _header(path)
    return header is not None and bool(header.pixel_data_tag)
