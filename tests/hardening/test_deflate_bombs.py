"""Deflate bombs: a deflated data set is inflated within a size cap and a ratio cap.

Once, a 1 MB file of deflated zeros (1 GiB inflated) held a worker for minutes.
The bombs here are made with zlib from a real deflated file's meta; the oracle for
the files that must still be read is pydicom's own reading of them.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import time
import zlib
from pathlib import Path

import pydicom
import pytest
from pydicom.filereader import _read_file_meta_info, read_preamble

from dicomflow.api import read_lake
from dicomflow.dicom.header import read_header
from dicomflow.dicom.inflate import InflateLimits
from dicomflow.errors import ErrorCode, MalformedDicomError
from tests.conftest import corpus_manifest

pytestmark = pytest.mark.integration

DEFLATED = "1.2.840.10008.1.2.1.99"
META_FROM = "blairconrad__dicognito/test_writes_deflated_file_correctly/CT_small_deflated.dcm"
VALID = "pydicom__pydicom/test_files/CT_small.dcm"
GiB, MiB = 1 << 30, 1 << 20


def file_meta(path: Path) -> bytes:
    """The preamble and file meta of ``path``, as pydicom delimits them."""
    with path.open("rb") as fp:
        read_preamble(fp, True)
        _read_file_meta_info(fp)
        end = fp.tell()
        fp.seek(0)
        return fp.read(end)


def write_bomb(meta: bytes, path: Path, zeros: int) -> None:
    """``meta`` followed by ``zeros`` zero bytes, deflated (raw deflate), streamed."""
    deflater = zlib.compressobj(9, zlib.DEFLATED, -zlib.MAX_WBITS)
    block = bytes(16 * MiB)
    with path.open("wb") as out:
        out.write(meta)
        left = zeros
        while left:
            step = min(left, len(block))
            out.write(deflater.compress(block[:step]))
            left -= step
        out.write(deflater.flush())


@pytest.fixture(scope="module")
def bombs(corpus: Path, tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    folder = tmp_path_factory.mktemp("bombs")
    meta = file_meta(corpus / META_FROM)
    made = {"1GiB": folder / "bomb-1gib.dcm", "10MiB": folder / "bomb-10mib.dcm"}
    write_bomb(meta, made["1GiB"], GiB)
    write_bomb(meta, made["10MiB"], 10 * MiB)
    return made


def deflated_corpus(corpus: Path) -> list[Path]:
    return [
        corpus / r["relative_path"]
        for r in corpus_manifest()
        if r["transfer_syntax_uid"] == DEFLATED
    ]


def read(path: Path, limits: InflateLimits | None = None) -> object:
    with path.open("rb") as fp:
        if limits is None:
            return read_header(fp, size=path.stat().st_size, salvage=True)
        return read_header(fp, size=path.stat().st_size, salvage=True, inflate_limits=limits)


@pytest.mark.parametrize("bomb", ["1GiB", "10MiB"])
def test_a_bomb_is_too_large_within_a_second(bombs: dict[str, Path], bomb: str) -> None:
    assert bombs[bomb].stat().st_size < 1.1 * MiB  # 1 GiB of zeros deflates to about 1 MB
    started = time.perf_counter()
    with pytest.raises(MalformedDicomError) as raised:
        read(bombs[bomb])
    assert time.perf_counter() - started < 1.0
    assert raised.value.code == ErrorCode.TOO_LARGE


def test_a_bomb_is_read_in_bounded_memory(bombs: dict[str, Path]) -> None:
    """The 1 GiB bomb, read in a process of its own: its peak memory stays far below
    the 1 GiB that inflating it whole would take."""
    code = (
        "import resource, sys\n"
        "from dicomflow.dicom.header import read_header\n"
        "from dicomflow.errors import MalformedDicomError\n"
        "before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss\n"
        "try:\n"
        "    read_header(open(sys.argv[1], 'rb'), size=None)\n"
        "except MalformedDicomError as exc:\n"
        "    print(exc.code)\n"
        "print((resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - before) // 1024)\n"
    )
    result = subprocess.run(
        [sys.executable, "-c", code, str(bombs["1GiB"])], capture_output=True, text=True, timeout=60
    )
    code_seen, grown_mib = result.stdout.split()
    assert code_seen == "too_large"  # with no size known, the size cap alone stops it
    assert int(grown_mib) < 600


def test_bombs_are_error_rows_beside_valid_files(
    bombs: dict[str, Path], corpus: Path, tmp_path: Path
) -> None:
    folder = tmp_path / "in"
    folder.mkdir()
    for path in bombs.values():
        os.symlink(path, folder / path.name)
    shutil.copyfile(corpus / VALID, folder / "valid.dcm")
    out = tmp_path / "lake"
    started = time.perf_counter()
    result = subprocess.run(
        [sys.executable, "-m", "dicomflow", "scan", str(folder), "--out", str(out)],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode == 0, result.stderr[-2000:]
    assert time.perf_counter() - started < 60
    lake = read_lake(str(out))
    assert [Path(r["source"]).name for r in lake.instances().to_pylist()] == ["valid.dcm"]
    errors = sorted(
        (Path(e["source"]).name, e["stage"], e["code"]) for e in lake.errors().to_pylist()
    )
    assert errors == sorted((p.name, "read", "too_large") for p in bombs.values())


def test_every_deflated_corpus_file_is_still_read(corpus: Path) -> None:
    files = deflated_corpus(corpus)
    assert len(files) >= 4
    for path in files:
        header = read(path)
        expected = pydicom.dcmread(path, force=True)
        uids = [e.value for e in header.elements if e.tag == 0x00080018]  # SOP Instance UID
        assert [bytes(u).decode().rstrip("\0 ") for u in uids] == [expected.SOPInstanceUID]


@pytest.mark.parametrize(
    ("limits", "what"),
    [
        (InflateLimits(max_bytes=100_000), "size cap"),
        (InflateLimits(max_ratio=10, ratio_floor=0), "ratio cap"),
    ],
    ids=["size", "ratio"],
)
def test_the_caps_apply_to_real_files(corpus: Path, limits: InflateLimits, what: str) -> None:
    """``image_dfl.dcm``: 4.6 KB deflated, 262 KB inflated (a ratio of about 61)."""
    path = corpus / "pydicom__pydicom/test_files/image_dfl.dcm"
    with pytest.raises(MalformedDicomError) as raised:
        read(path, limits)
    assert raised.value.code == ErrorCode.TOO_LARGE, what
    assert read(path, InflateLimits(max_bytes=400_000, max_ratio=70, ratio_floor=0))


def test_a_deflate_stream_cut_short_is_malformed(corpus: Path, tmp_path: Path) -> None:
    source = corpus / META_FROM
    data = source.read_bytes()
    cut = tmp_path / "cut.dcm"
    cut.write_bytes(data[: len(file_meta(source)) + 200])
    with pytest.raises(MalformedDicomError) as raised:
        read(cut)
    assert raised.value.code == ErrorCode.MALFORMED
