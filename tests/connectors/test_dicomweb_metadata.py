"""Header-only scans of a DICOMweb server (``dicomflow scan dicomweb+http://…``) against
a real Orthanc: the instances table equals a scan of the same files on disk, and the
bytes that cross the network are a small part of a full retrieval."""

from __future__ import annotations

import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pyarrow as pa
import pydicom
import pytest
from distributed import Client
from pydicom.datadict import tag_for_keyword

import dicomflow
from dicomflow.api import ingest_spec
from dicomflow.errors import ConfigError
from tests.conftest import PYDICOM_TEST_FILES, require
from tests.helpers import bytes_received, ct_series
from tests.peers.orthanc import Orthanc, orthanc_binary, running_orthanc

FILES = ("CT_small.dcm", "MR_small.dcm", "JPEG2000.dcm", "rtplan.dcm", "SC_rgb_rle.dcm")
# Columns that say where and when a row was made, not what the instance holds.
PROVENANCE = {
    "source",
    "size_bytes",
    "modified",
    "run_id",
    "scanned_at",
    "dicom_json",
    "file_meta_json",
    "transfer_syntax_uid",
    "warnings",
}


SLICES = 8


@pytest.fixture(scope="module")
def series(tmp_path_factory: pytest.TempPathFactory) -> list[Path]:
    return ct_series(tmp_path_factory.mktemp("ct512"), SLICES, tile=4)


@pytest.fixture(scope="module")
def orthanc(tmp_path_factory: pytest.TempPathFactory, series: list[Path]) -> Iterator[Orthanc]:
    require(orthanc_binary() is not None, "Orthanc (Debian package orthanc)")
    with running_orthanc(tmp_path_factory.mktemp("orthanc"), dicomweb=True) as server:
        for path in [*(PYDICOM_TEST_FILES / name for name in FILES), *series]:
            assert server.upload(path)
        yield server


def _by_sop(table: pa.Table) -> dict[str, dict[str, Any]]:
    return {row["SOPInstanceUID"]: row for row in table.to_pylist()}


def test_a_header_only_scan_equals_a_scan_of_the_files(
    orthanc: Orthanc, series: list[Path], tmp_path: Path
) -> None:
    lake = tmp_path / "remote"
    done = subprocess.run(
        [
            *(sys.executable, "-m", "dicomflow", "scan", orthanc.dicomweb, "-q", "Modality=*"),
            *("--out", str(lake), "--no-progress", "--workers", "1"),
        ],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert done.returncode == 0, done.stderr
    remote = _by_sop(dicomflow.read_lake(str(lake)).instances())
    files = [str(PYDICOM_TEST_FILES / name) for name in FILES] + [str(p) for p in series]
    dicomflow.ingest(files, out=str(tmp_path / "local"), progress=False, workers=1)
    local = _by_sop(dicomflow.read_lake(str(tmp_path / "local")).instances())
    assert remote.keys() == local.keys() and len(remote) == len(files)
    columns = set(next(iter(local.values()))) - PROVENANCE
    # File meta (group 0002) belongs to a file; DICOMweb metadata describes the data set.
    file_meta = {c for c in columns if (tag_for_keyword(c) or 0) >> 16 == 0x0002}
    differ = [
        (column, uid)
        for uid, row in local.items()
        for column in sorted(columns - file_meta)
        if remote[uid][column] != row[column]
    ]
    assert differ == [], [(c, u, remote[u][c], local[u][c]) for c, u in differ]
    for uid, row in local.items():
        assert remote[uid]["source"].startswith(orthanc.dicomweb + "/studies/")
        assert remote[uid]["has_pixel_data"] is row["has_pixel_data"]


def test_a_header_only_scan_moves_a_small_part_of_the_bytes(
    orthanc: Orthanc, series: list[Path], tmp_path: Path
) -> None:
    study = str(pydicom.dcmread(series[0], stop_before_pixels=True).StudyInstanceUID)
    query = {"StudyInstanceUID": study}
    with Client(processes=False, n_workers=1, threads_per_worker=1) as client:
        header_only = bytes_received(
            lambda: dicomflow.run(
                ingest_spec(
                    orthanc.dicomweb, out=str(tmp_path / "a"), query=query, header_only=True
                ),
                client=client,
                progress=False,
            )
        )
        whole = bytes_received(
            lambda: dicomflow.ingest(
                orthanc.dicomweb,
                out=str(tmp_path / "b"),
                query=query,
                client=client,
                progress=False,
            )
        )
    assert whole >= sum(p.stat().st_size for p in series)  # every instance came whole
    assert 0 < header_only < whole / 20, (header_only, whole)  # measured: 166 kB of 4.26 MB


def test_a_header_only_scan_refuses_what_needs_whole_instances(
    orthanc: Orthanc, tmp_path: Path
) -> None:
    spec = ingest_spec(
        orthanc.dicomweb, out=str(tmp_path / "x"), query={"Modality": "*"}, header_only=True,
        pixels=True,
    )  # fmt: skip
    with pytest.raises(ConfigError, match="header-only"):
        dicomflow.run(spec, progress=False)
    with pytest.raises(ConfigError, match="no header-only retrieval"):
        ingest_spec(orthanc.url, out=str(tmp_path / "y"), query={"Modality": "*"},
                              header_only=True)  # fmt: skip
