"""The public interface: settings, thumbnails, encoding, errors (nothing but RenderError
escapes, and messages carry no values), and the time a CT thumbnail takes."""

from __future__ import annotations

import io
import time
import warnings
import zlib
from dataclasses import replace

import numpy as np
import pydicom
import pytest
from PIL import Image, ImageCms
from pydicom.dataelem import RawDataElement
from pydicom.dataset import Dataset
from pydicom.tag import Tag

from dicomflow.errors import DicomReadError, ErrorCode
from dicomflow.pixels.decode import DecodedPixels, decode
from dicomflow.render import (
    RenderedFrame,
    RenderError,
    RenderSettings,
    encode_image,
    render_instance,
    thumbnail_shape,
)
from tests.conftest import CORPUS, PYDICOM_TEST_FILES, require
from tests.render import cases, oracle

CT_SMALL = PYDICOM_TEST_FILES / "CT_small.dcm"
PALETTE = "pydicom__pydicom/test_files/examples_palette.dcm"
WSI = "ImagingDataCommons__highdicom/sm_image.dcm"  # ICC profile in the Optical Path Sequence


def _ct() -> tuple[Dataset, DecodedPixels]:
    ds = pydicom.dcmread(CT_SMALL)
    return ds, decode(ds)


def _gray(array: np.ndarray, photometric: str = "MONOCHROME2") -> DecodedPixels:
    return DecodedPixels(array, False, None, photometric, None, None)


def test_render_error_is_a_read_error_with_a_code() -> None:
    error = RenderError("x")
    assert isinstance(error, DicomReadError) and isinstance(error, ValueError)
    assert error.code in (ErrorCode.DECODE_FAILED, ErrorCode.MALFORMED)


@pytest.mark.parametrize(
    ("rows", "cols", "size", "expected"),
    [
        (512, 512, 256, (256, 256)),
        (512, 256, 128, (128, 64)),
        (100, 300, 64, (21, 64)),
        (50, 40, 256, (50, 40)),  # never upscaled
        (3000, 1, 100, (100, 1)),  # at least one pixel
        (20, 30, None, (20, 30)),
    ],
)
def test_thumbnail_shape(rows: int, cols: int, size: int | None, expected: tuple) -> None:
    assert thumbnail_shape(rows, cols, size) == expected


def test_thumbnails_keep_the_aspect_and_the_depth() -> None:
    ds, pixels = _ct()
    (frame,) = render_instance(ds, pixels, RenderSettings(size=64))
    assert frame.image.shape == (64, 64) and frame.image.dtype == np.uint8
    (deep,) = render_instance(ds, pixels, RenderSettings(size=50, bits=16))
    assert deep.image.shape == (50, 50) and deep.image.dtype == np.uint16
    (full,) = render_instance(ds, pixels, RenderSettings())
    small = np.asarray(Image.fromarray(full.image).resize((64, 64), Image.Resampling.BOX))
    assert np.abs(small.astype(int) - frame.image).max() <= 1


@pytest.mark.parametrize("bits", [8, 16])
@pytest.mark.parametrize("colour", [False, True])
def test_png_round_trips(bits: int, colour: bool) -> None:
    dtype = np.uint8 if bits == 8 else np.uint16
    top = np.iinfo(dtype).max
    shape = (7, 5, 3) if colour else (7, 5)
    image = np.random.default_rng(1).integers(0, top, size=shape, endpoint=True).astype(dtype)
    data = encode_image(RenderedFrame(0, image, None))
    if bits == 16 and colour:  # 48-bit PNG: Pillow cannot read it back; zlib can
        assert _png_rgb16_pixels(data).tolist() == image.tolist()
        return
    with Image.open(io.BytesIO(data)) as decoded:
        assert np.array_equal(np.asarray(decoded), image)
    assert encode_image(RenderedFrame(0, image, None)) == data  # deterministic


def _png_rgb16_pixels(data: bytes) -> np.ndarray:
    """Pixels of a 48-bit PNG written without filters (our writer's), read with zlib."""
    assert data.startswith(b"\x89PNG\r\n\x1a\n")
    offset, idat, width, height = 8, b"", 0, 0
    while offset < len(data):
        length = int.from_bytes(data[offset : offset + 4], "big")
        kind, body = data[offset + 4 : offset + 8], data[offset + 8 : offset + 8 + length]
        if kind == b"IHDR":
            width, height = int.from_bytes(body[:4], "big"), int.from_bytes(body[4:8], "big")
            assert body[8:10] == b"\x10\x02"  # 16 bits, RGB
        elif kind == b"IDAT":
            idat += body
        offset += 12 + length
    rows = np.frombuffer(zlib.decompress(idat), dtype=np.uint8).reshape(height, 1 + width * 6)
    assert (rows[:, 0] == 0).all()
    return rows[:, 1:].copy().view(">u2").reshape(height, width, 3)


def test_jpeg_is_eight_bit_only() -> None:
    image = np.zeros((8, 8), dtype=np.uint8)
    assert encode_image(RenderedFrame(0, image, None), "jpeg").startswith(b"\xff\xd8")
    with pytest.raises(RenderError):
        encode_image(RenderedFrame(0, image.astype(np.uint16), None), "jpeg")
    with pytest.raises(RenderError):
        encode_image(RenderedFrame(0, image, None), "gif")


@pytest.mark.integration
@pytest.mark.parametrize("fmt", ["png", "jpeg"])
def test_the_icc_profile_is_embedded(fmt: str) -> None:
    require(CORPUS.exists(), f"the shared corpus at {CORPUS}")
    ds = oracle.read(cases.path(WSI))
    (frame, *_) = render_instance(ds, decode(ds), RenderSettings(frames=0))
    assert frame.icc_profile == bytes(ds.OpticalPathSequence[0].ICCProfile)
    with Image.open(io.BytesIO(encode_image(frame, fmt))) as decoded:
        assert decoded.info.get("icc_profile") == frame.icc_profile


def test_a_profile_pillow_rejects_is_a_render_error() -> None:
    rgb = np.zeros((1, 4, 4, 3), dtype=np.uint8)
    ds = Dataset()
    ds.ICCProfile = b"not a profile" * 10
    pixels = DecodedPixels(rgb, False, None, "RGB", None, None)
    with pytest.raises(RenderError):
        render_instance(ds, pixels, RenderSettings())
    with pytest.raises(RenderError):
        encode_image(RenderedFrame(0, rgb[0], ds.ICCProfile))
    srgb = ImageCms.ImageCmsProfile(ImageCms.createProfile("sRGB")).tobytes()
    assert encode_image(RenderedFrame(0, rgb[0], srgb))


@pytest.mark.parametrize("window", [(40, 0), (40, -5), (40, 0.5)])
def test_a_window_too_narrow_is_a_render_error(window: tuple[float, float]) -> None:
    ds, pixels = _ct()
    with pytest.raises(RenderError):
        render_instance(ds, pixels, RenderSettings(window=window))


def test_a_file_window_of_width_zero_is_a_render_error() -> None:
    ds, pixels = _ct()
    pixels = replace(pixels, window_center=[40.0], window_width=[0.0])
    with pytest.raises(RenderError, match="window") as caught:
        render_instance(ds, pixels, RenderSettings())
    assert "40" not in str(caught.value)  # no values in messages


def test_a_missing_window_or_frame_is_a_render_error() -> None:
    ds, pixels = _ct()
    with pytest.raises(RenderError):
        render_instance(ds, pixels, RenderSettings(window=3))
    with pytest.raises(RenderError):
        render_instance(ds, pixels, RenderSettings(frames=1))


@pytest.mark.parametrize(
    "array",
    [np.zeros((0, 4, 4)), np.zeros((1, 0, 4)), np.zeros((4, 4)), np.zeros((1, 4, 4, 2))],
    ids=["no-frames", "no-rows", "no-frame-axis", "two-samples"],
)
def test_an_empty_or_misshapen_image_is_a_render_error(array: np.ndarray) -> None:
    with pytest.raises(RenderError):
        render_instance(Dataset(), _gray(array), RenderSettings())


@pytest.mark.integration
@pytest.mark.parametrize(
    "descriptor", [[256, 0], [256, 0, 12], ["x", 0, 8]], ids=["two-values", "12-bit", "text"]
)
def test_a_wrong_palette_descriptor_is_a_render_error(descriptor: list) -> None:
    require(CORPUS.exists(), f"the shared corpus at {CORPUS}")
    ds = oracle.read(cases.path(PALETTE))
    pixels = decode(ds)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # pydicom warns about the text value
        ds["RedPaletteColorLookupTableDescriptor"].value = descriptor
    with pytest.raises(RenderError) as caught:
        render_instance(ds, pixels, RenderSettings())
    assert caught.value.code == ErrorCode.MALFORMED


def test_bad_settings_are_render_errors() -> None:
    for bad in (
        {"bits": 12},
        {"size": 0},
        {"frames": "first"},
        {"frames": -1},
        {"window": "bone"},
        {"percentile": 60.0},
    ):
        with pytest.raises(RenderError):
            RenderSettings(**bad)


def test_unexpected_faults_become_render_errors() -> None:
    ds = Dataset()  # invalid DS values, as read from a file, converted on access
    ds[0x00281050] = RawDataElement(Tag(0x00281050), "DS", 4, b"abc ", 0, True, True)
    ds[0x00281051] = RawDataElement(Tag(0x00281051), "DS", 4, b"def ", 0, True, True)
    with pytest.raises(RenderError):
        render_instance(ds, _gray(np.zeros((1, 4, 4), dtype=np.int16)), RenderSettings())
    with pytest.raises(RenderError):  # an array of objects cannot be windowed
        render_instance(Dataset(), _gray(np.full((1, 2, 2), None)), RenderSettings())


def test_constant_and_float_images_render() -> None:
    (flat,) = render_instance(Dataset(), _gray(np.full((1, 3, 3), 7)), RenderSettings())
    assert (flat.image == 0).all()
    values = np.array([[[0.0, np.nan], [1.0, 2.0]]])
    (floats,) = render_instance(Dataset(), _gray(values), RenderSettings())
    assert floats.image.tolist() == [[0, 0], [128, 255]]
    (inverted,) = render_instance(Dataset(), _gray(values, "MONOCHROME1"), RenderSettings())
    assert inverted.image[1].tolist() == [128, 0]  # 1 - 0.5 rounds up


def test_a_ct_thumbnail_renders_and_encodes_in_a_few_milliseconds() -> None:
    require(CORPUS.exists(), f"the shared corpus at {CORPUS}")
    ds = oracle.read(cases.path("cornerstonejs__dicomParser/CT1_UNC.explicit_little_endian.dcm"))
    pixels = decode(ds)
    assert pixels.array.shape == (1, 512, 512)
    settings = RenderSettings(size=256)
    encode_image(render_instance(ds, pixels, settings)[0])
    timings = []
    for _ in range(20):
        start = time.perf_counter()
        encode_image(render_instance(ds, pixels, settings)[0])
        timings.append(time.perf_counter() - start)
    assert sorted(timings)[len(timings) // 2] < 0.025  # ~4 ms here; slack for busy machines


@pytest.mark.parametrize("factor", [2, 4, 8])
@pytest.mark.parametrize("colour", [False, True])
def test_an_exact_reduction_is_each_blocks_rounded_mean(factor: int, colour: bool) -> None:
    """Shrinking by 2, 4 or 8 gives each block's mean, rounded half up (numpy's sums)."""
    from dicomflow.render.geometry import resize

    shape = (16 * factor, 12 * factor, 3) if colour else (16 * factor, 12 * factor)
    image = np.random.default_rng(factor).integers(0, 256, shape, dtype=np.uint8)
    blocks = image.reshape(16, factor, 12, factor, *shape[2:]).astype(np.int64).sum(axis=(1, 3))
    expected = (blocks + factor * factor // 2) // (factor * factor)
    np.testing.assert_array_equal(resize(image, 16), expected)
