"""The files connector against a real S3 API (moto's server on loopback).

Scanning ``s3://`` gives the same typed rows as scanning the same files locally,
credentials from ``storage_options`` never reach rows or messages, and reading a
header fetches only a small part of a large object.
"""

from __future__ import annotations

import io
import socket
from collections.abc import Iterator
from pathlib import Path

import pyarrow as pa
import pydicom
import pytest
import s3fs
from distributed import Client

from dicomflow.api import run_scan, scan_errors
from dicomflow.connectors.files import REMOTE_BLOCK_SIZE
from dicomflow.dicom.header import read_header
from dicomflow.schemas import column_specs
from tests.conftest import PYDICOM_TEST_FILES, require

SECRET = "s3cr3t-never-in-output"
FILES = ["CT_small.dcm", "MR_small.dcm", "rtplan.dcm", "JPEG2000.dcm", "README.txt"]


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@pytest.fixture(scope="module")
def s3_options() -> Iterator[dict]:
    server_module = pytest.importorskip("moto.server")
    port = _free_port()
    server = server_module.ThreadedMotoServer(ip_address="127.0.0.1", port=port)
    try:
        server.start()
    except OSError:
        require(False, "moto's S3 server on loopback")
    options = {
        "key": "testing",
        "secret": SECRET,
        "client_kwargs": {"endpoint_url": f"http://127.0.0.1:{port}", "region_name": "eu-west-1"},
    }
    fs = s3fs.S3FileSystem(**options)
    fs.mkdir("dicoms")
    for name in FILES:
        fs.put(str(PYDICOM_TEST_FILES / name), f"dicoms/data/{name}")
    yield options
    server.stop()


def _typed(table: pa.Table) -> list[dict]:
    keywords = [spec.keyword for spec in column_specs()]
    rows = table.select(["source", *keywords]).to_pylist()
    for row in rows:
        row["source"] = Path(row["source"]).name
    return sorted(rows, key=lambda r: r["source"])


def test_s3_scan_equals_local_scan(s3_options: dict, client: Client) -> None:
    remote = run_scan(
        ["s3://dicoms/data/"], storage_options=s3_options, client=client, progress=False
    )
    local = run_scan([str(PYDICOM_TEST_FILES / n) for n in FILES], client=client, progress=False)
    assert remote.rows == local.rows == len(FILES) - 1
    assert remote.error_codes == {"not_dicom": 1}
    remote_table = pa.concat_tables(remote.tables["instances"])
    local_table = pa.concat_tables(local.tables["instances"])
    assert _typed(remote_table) == _typed(local_table)
    assert all(s.startswith("s3://dicoms/data/") for s in remote_table["source"].to_pylist())
    assert "s3://dicoms/data/CT_small.dcm#offset=" in "".join(
        remote_table["dicom_json"].to_pylist()
    )


def test_credentials_never_reach_outputs(s3_options: dict, client: Client) -> None:
    summary = run_scan(
        ["s3://dicoms/data/", "s3://dicoms/missing.dcm"],
        storage_options=s3_options,
        client=client,
        progress=False,
    )
    instances = pa.concat_tables(summary.tables["instances"])
    dumped = str(instances.to_pylist()) + str(scan_errors(summary).to_pylist())
    assert SECRET not in dumped
    assert summary.error_codes.get("unreadable") == 1


def test_header_read_fetches_a_small_part_of_a_large_object(s3_options: dict) -> None:
    ds = pydicom.dcmread(PYDICOM_TEST_FILES / "CT_small.dcm")
    ds.Rows = ds.Columns = 1024
    ds.PixelData = bytes(1024 * 1024 * 2)
    buffer = io.BytesIO()
    ds.save_as(buffer)
    fs = s3fs.S3FileSystem(**s3_options)
    fs.pipe("dicoms/big/ct.dcm", buffer.getvalue())
    size = fs.size("dicoms/big/ct.dcm")
    with fs.open("dicoms/big/ct.dcm", "rb", block_size=REMOTE_BLOCK_SIZE) as fp:
        header = read_header(fp, size=size)
        fetched = fp.cache.total_requested_bytes
    assert header.pixel_data_length == 1024 * 1024 * 2
    assert fetched <= 2 * REMOTE_BLOCK_SIZE < size // 4
