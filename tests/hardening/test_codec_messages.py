"""Codec libraries' own messages go to the log at DEBUG, not raw to stderr.

pydicom logs each decoder plugin that fails on a frame at ERROR with a traceback;
those reached stderr through the progress bar (pydicom resets its logger's level
when first imported, after the command line set it). The broken file here is a
corpus JPEG 2000 file whose SIZ marker claims 1×1 tiles (512×512 tiles in all).
"""

from __future__ import annotations

import logging
import shutil
import struct
import subprocess
import sys
from pathlib import Path

import pytest

from dicomflow.api import read_lake

pytestmark = pytest.mark.integration

J2K = "pydicom__pydicom/test_files/693_J2KI.dcm"
VALID = "pydicom__pydicom/test_files/CT_small.dcm"
SOC_SIZ = b"\xff\x4f\xff\x51"  # start of codestream, then the SIZ marker


def with_tiny_tiles(data: bytes) -> bytes:
    """``data`` with the first codestream's tile size (XTsiz, YTsiz) set to 1×1."""
    at = data.index(SOC_SIZ) + len(SOC_SIZ) + 2 + 2 + 16  # Lsiz, Rsiz, image size/offset
    return data[:at] + struct.pack(">II", 1, 1) + data[at + 8 :]


@pytest.fixture()
def inputs(tmp_path: Path, corpus: Path) -> Path:
    folder = tmp_path / "in"
    folder.mkdir()
    (folder / "tiles.dcm").write_bytes(with_tiny_tiles((corpus / J2K).read_bytes()))
    shutil.copyfile(corpus / VALID, folder / "valid.dcm")
    return folder


def ingest(inputs: Path, out: Path, *verbose: str) -> subprocess.CompletedProcess[str]:
    command = ["ingest", str(inputs), "--out", str(out), "--pixels", "--progress"]
    return subprocess.run(
        [sys.executable, "-m", "dicomflow", *verbose, *command],
        capture_output=True,
        text=True,
        timeout=300,
    )


def test_codec_failures_are_an_error_row_not_a_traceback(inputs: Path, tmp_path: Path) -> None:
    out = tmp_path / "lake"
    result = ingest(inputs, out)
    assert "Traceback" not in result.stderr
    assert "pydicom.pixels" not in result.stderr
    assert "opj_read_header" not in result.stderr
    errors = read_lake(str(out)).errors().to_pylist()
    assert [(Path(e["source"]).name, e["code"]) for e in errors] == [("tiles.dcm", "decode_failed")]


def test_codec_messages_are_kept_at_debug(inputs: Path, tmp_path: Path) -> None:
    result = ingest(inputs, tmp_path / "lake", "-vv")
    lines = [line for line in result.stderr.splitlines() if "dicomflow.libraries.pydicom" in line]
    assert lines
    assert all(" DEBUG " in line for line in lines)
    assert "Traceback" not in result.stderr


# OpenJPEG built into python-gdcm prints "Invalid number of tiles…" to descriptor 2 for
# this corpus file's codestream, past logging and gdcm.Trace.
GDCM_NOISY = "pydicom__pydicom/test_files/JPEG2000-embedded-sequence-delimiter.dcm"
GDCM_MESSAGE = "Invalid number of tiles"


def _gdcm_prints(path: Path) -> bool:
    """Whether GDCM itself, asked directly, writes ``GDCM_MESSAGE`` to stderr for ``path``
    (the condition this test relies on, checked with pydicom alone)."""
    script = (
        "import sys, pydicom\n"
        "ds = pydicom.dcmread(sys.argv[1])\n"
        "ds.pixel_array_options(decoding_plugin='gdcm')\n"
        "try:\n    ds.pixel_array\nexcept Exception:\n    pass\n"
    )
    result = subprocess.run(
        [sys.executable, "-W", "ignore", "-c", script, str(path)],
        capture_output=True,
        text=True,
        timeout=120,
    )
    return GDCM_MESSAGE in result.stderr


def test_gdcm_codec_output_goes_to_the_log_at_debug(tmp_path: Path, corpus: Path) -> None:
    pytest.importorskip("gdcm")
    noisy = corpus / GDCM_NOISY
    assert _gdcm_prints(noisy), "GDCM no longer prints for this file; pick another"
    folder = tmp_path / "in"
    folder.mkdir()
    shutil.copyfile(noisy, folder / "noisy.dcm")
    shutil.copyfile(corpus / VALID, folder / "valid.dcm")

    quiet = ingest(folder, tmp_path / "quiet")
    assert quiet.returncode == 0, quiet.stderr
    assert GDCM_MESSAGE not in quiet.stderr
    errors = read_lake(str(tmp_path / "quiet")).errors().to_pylist()
    assert [(Path(e["source"]).name, e["code"]) for e in errors] == [("noisy.dcm", "decode_failed")]

    verbose = ingest(folder, tmp_path / "verbose", "-vv")
    kept = [line for line in verbose.stderr.splitlines() if GDCM_MESSAGE in line]
    assert kept
    assert all(" DEBUG dicomflow.libraries.gdcm: " in line for line in kept)


def _gdcm_lines(caplog: pytest.LogCaptureFixture) -> list[str]:
    return [r.getMessage() for r in caplog.records if r.name == "dicomflow.libraries.gdcm"]


def test_standard_error_is_restored_after_a_capture(
    capfd: pytest.CaptureFixture[str], caplog: pytest.LogCaptureFixture
) -> None:
    import os

    from dicomflow.pixels.native_messages import standard_error_at_debug

    caplog.set_level(logging.DEBUG, logger="dicomflow.libraries.gdcm")
    with standard_error_at_debug():
        os.write(2, b"from native code\n\nsecond line\n")
    os.write(2, b"after the capture\n")
    assert _gdcm_lines(caplog) == ["from native code", "second line"]
    assert capfd.readouterr().err == "after the capture\n"


def test_a_capture_logs_what_was_written_before_a_failure(
    caplog: pytest.LogCaptureFixture,
) -> None:
    import os

    from dicomflow.pixels.native_messages import standard_error_at_debug

    caplog.set_level(logging.DEBUG, logger="dicomflow.libraries.gdcm")
    with pytest.raises(RuntimeError), standard_error_at_debug():
        os.write(2, b"why it failed\n")
        raise RuntimeError("decode failed")
    assert _gdcm_lines(caplog) == ["why it failed"]
