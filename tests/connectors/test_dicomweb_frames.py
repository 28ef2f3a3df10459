"""WADO-RS frames against a real Orthanc: the frames ``dicomflow.read_frames`` fetches
equal pydicom's decode of the same frames of the file, for uncompressed, RLE, JPEG-LS,
JPEG lossy, grayscale and colour multi-frame corpus images, at a small part of the bytes
of the whole instance."""

from __future__ import annotations

import warnings
from collections.abc import Iterator
from typing import Any

import numpy as np
import pydicom
import pytest

import dicomflow
from dicomflow.connectors.dicomweb.address import DicomwebError
from dicomflow.errors import ConfigError
from tests.conftest import CORPUS, require
from tests.helpers import bytes_received
from tests.peers.orthanc import Orthanc, orthanc_binary, running_orthanc

# Multi-frame corpus images with distinct SOP Instance UIDs (Orthanc keeps one of each).
LOSSLESS = (
    "ImagingDataCommons__highdicom/sm_image.dcm",  # RGB, 25 frames
    "ImagingDataCommons__highdicom/sm_image_grayscale.dcm",  # 16-bit, 25 frames
    "ImagingDataCommons__highdicom/sm_image_jpegls.dcm",  # RGB JPEG-LS lossless
    "ImagingDataCommons__highdicom/seg_image_ct_binary_fractional.dcm",  # 8-bit SEG
    "QIICR__dcmqi/segmentations/23x38x3/multiframe/mf.dcm",  # Legacy Converted CT
    "cornerstonejs__dicomParser/encapsulated/multi-frame/CT0012.not_fragmented_bot_rle.dcm",
    "cornerstonejs__dicomParser/encapsulated/multi-frame/CT0012.fragmented_no_bot_jpeg_ls.81.dcm",
    "cornerstonejs__dicomParser/encapsulated/multi-frame/IM00001.implicit_little_endian.dcm",
    "pydicom__pydicom/test_files/SC_rgb_rle_16bit_2frame.dcm",
    "icometrix__dicom2nifti/philips_enhanced/fmri/001/IM-0001-9600-0001.dcm",  # 32 frames
)
# Lossy JPEG: the server's decoder (DCMTK's libijg) and pydicom's may round differently.
LOSSY = (
    "cornerstonejs__dicomParser/encapsulated/multi-frame/"
    "CT0012.fragmented_no_bot_jpeg_baseline.51.dcm",
)
ONE_BIT = "ImagingDataCommons__highdicom/seg_image_ct_binary.dcm"


@pytest.fixture(scope="module")
def orthanc(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Orthanc]:
    require(orthanc_binary() is not None, "Orthanc (Debian package orthanc)")
    require((CORPUS / LOSSLESS[0]).exists(), "the shared corpus")
    with running_orthanc(tmp_path_factory.mktemp("orthanc"), dicomweb=True) as server:
        for name in (*LOSSLESS, *LOSSY, ONE_BIT):
            assert server.upload(CORPUS / name), name
        yield server


def _url(orthanc: Orthanc, dataset: Any) -> str:
    return (
        f"{orthanc.dicomweb}/studies/{dataset.StudyInstanceUID}/series/"
        f"{dataset.SeriesInstanceUID}/instances/{dataset.SOPInstanceUID}"
    )


def _frames_of_the_file(name: str) -> tuple[Any, list[int], np.ndarray]:
    """The first, middle and last frame numbers, and pydicom's decode of them."""
    with warnings.catch_warnings():  # the corpus's own quirks (a misspelt charset)
        warnings.simplefilter("ignore")
        dataset = pydicom.dcmread(CORPUS / name)
        decoded = dataset.pixel_array
    count = int(dataset.get("NumberOfFrames") or 1)
    numbers = sorted({1, (count + 1) // 2, count})
    return dataset, numbers, decoded[[n - 1 for n in numbers]]


@pytest.mark.parametrize("name", LOSSLESS)
def test_frames_equal_pydicoms_decode(orthanc: Orthanc, name: str) -> None:
    dataset, numbers, expected = _frames_of_the_file(name)
    frames = dicomflow.read_frames(_url(orthanc, dataset), numbers)
    assert frames.dtype == expected.dtype and frames.shape == expected.shape
    assert np.array_equal(frames, expected)


@pytest.mark.parametrize("name", LOSSY)
def test_lossy_frames_are_within_one_step_of_pydicoms_decode(orthanc: Orthanc, name: str) -> None:
    dataset, numbers, expected = _frames_of_the_file(name)
    frames = dicomflow.read_frames(_url(orthanc, dataset), numbers)
    difference = np.abs(frames.astype(np.int64) - expected.astype(np.int64))
    assert frames.shape == expected.shape and difference.max() <= 1
    assert difference.mean() < 0.1


def test_one_frame_costs_a_small_part_of_the_instance(orthanc: Orthanc) -> None:
    """Frame 16 of a 32-frame fMRI instance against the whole instance, in bytes received."""
    name = LOSSLESS[-1]
    dataset = pydicom.dcmread(CORPUS / name, stop_before_pixels=True)
    received = bytes_received(lambda: dicomflow.read_frames(_url(orthanc, dataset), [16]))
    whole = (CORPUS / name).stat().st_size
    frame = int(dataset.Rows) * int(dataset.Columns) * 2
    assert frame <= received < frame + 4096 and received < whole / 20


def test_bad_requests_are_clear_errors(orthanc: Orthanc) -> None:
    dataset, _, _ = _frames_of_the_file(LOSSLESS[4])
    url = _url(orthanc, dataset)
    with pytest.raises(ConfigError, match="has 3 frame"):
        dicomflow.read_frames(url, [4])
    with pytest.raises(ConfigError, match="numbered from 1"):
        dicomflow.read_frames(url, [0])
    with pytest.raises(ConfigError, match="instances/I"):
        dicomflow.read_frames(orthanc.dicomweb + "/studies/1.2.3", [1])
    one_bit = pydicom.dcmread(CORPUS / ONE_BIT, stop_before_pixels=True)
    with pytest.raises(DicomwebError, match="pixel description is not supported"):
        dicomflow.read_frames(_url(orthanc, one_bit), [1])
    missing = url.rsplit("/", 1)[0] + "/1.2.3.4.5"
    with pytest.raises(DicomwebError, match="HTTP 404"):
        dicomflow.read_frames(missing, [1])


def test_a_peers_credentials_never_go_to_another_server(orthanc: Orthanc) -> None:
    from dicomflow.api import DicomwebPeerConfig

    dataset, _, _ = _frames_of_the_file(LOSSLESS[4])
    elsewhere = DicomwebPeerConfig(url="dicomweb+https://pacs.example/dicom-web", token_env="T")
    with pytest.raises(ConfigError, match="another server"):
        dicomflow.read_frames(_url(orthanc, dataset), [1], peer=elsewhere)
