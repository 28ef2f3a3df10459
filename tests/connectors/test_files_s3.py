"""The files connector against a real S3 API (moto's server on loopback).

Scanning ``s3://`` gives the same typed rows as scanning the same files locally,
credentials from ``storage_options`` never reach rows or messages, and reading a
header fetches only a small part of a large object.
"""

from __future__ import annotations

import io
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pyarrow as pa
import pydicom
import pytest
import s3fs
from distributed import Client

import dicomflow
from dicomflow.api import run_scan, scan_errors
from dicomflow.connectors.files import REMOTE_BLOCK_SIZE
from dicomflow.dicom.header import read_header
from dicomflow.errors import ConfigError
from dicomflow.schemas import column_specs
from tests.conftest import PYDICOM_TEST_FILES, REPO, require
from tests.peers.orthanc import free_port

SECRET = "s3cr3t-never-in-output"
FILES = ["CT_small.dcm", "MR_small.dcm", "rtplan.dcm", "JPEG2000.dcm", "README.txt"]


@pytest.fixture(scope="module")
def s3_options() -> Iterator[dict]:
    server_module = pytest.importorskip("moto.server")
    port = free_port()
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
        ["s3://dicoms/data/"], storage_options=s3_options, client=client, progress=False
    )
    instances = pa.concat_tables(summary.tables["instances"])
    dumped = str(instances.to_pylist()) + str(scan_errors(summary).to_pylist())
    assert SECRET not in dumped
    assert summary.error_codes == {"not_dicom": 1}


def test_a_missing_object_is_a_config_error_without_credentials(
    s3_options: dict, client: Client
) -> None:
    with pytest.raises(ConfigError) as info:
        run_scan(
            ["s3://dicoms/data/", "s3://dicoms/missing.dcm"],
            storage_options=s3_options,
            client=client,
            progress=False,
        )
    assert "s3://dicoms/missing.dcm" in str(info.value)
    assert SECRET not in str(info.value)


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


def _chunks(fs: object, root: str) -> dict[str, bytes]:
    """Every Zarr chunk or shard object under ``root`` (relative key → bytes)."""
    keys = [k for k in fs.find(f"{root}/pixels.zarr") if k.rsplit("/", 1)[-1].startswith("c.")]  # type: ignore[attr-defined]
    return {k.split("/pixels.zarr/", 1)[1]: fs.cat_file(k) for k in keys}  # type: ignore[attr-defined]


def test_a_bucket_lake_with_pixels_equals_a_local_lake(
    s3_options: dict, client: Client, tmp_path: Path
) -> None:
    """``ingest --pixels`` into ``s3://``: the same tables, the same Zarr chunks (byte for
    byte) and the same volume as a local lake; a rerun skips, a grown series is rewritten
    without stale shards; no credential reaches the lake."""
    import fsspec
    import numpy as np

    from dicomflow.api import ingest, open_series, read_lake

    sys.path.insert(0, str(REPO / "benchmarks"))
    from synth import write_ct_series

    src = tmp_path / "src"
    paths = write_ct_series(src, 9, per_series=9, rows=32, cols=32)
    held_back = tmp_path / "later.dcm"
    paths[-1].rename(held_back)
    local = tmp_path / "local"
    bucket = "s3://dicoms/lakes/pixels"
    for out, options in ((str(local), {}), (bucket, s3_options)):
        first = ingest(
            [str(src)], out=out, storage_options=options, client=client, progress=False, pixels=True
        )
        assert (first.rows, first.errors) == (8, 0)
    remote_lake = read_lake(bucket, storage_options=s3_options)
    local_lake = read_lake(str(local))
    keywords = [spec.keyword for spec in column_specs()]
    key = "SOPInstanceUID"
    assert sorted(remote_lake.instances().select(keywords).to_pylist(), key=lambda r: r[key]) == (
        sorted(local_lake.instances().select(keywords).to_pylist(), key=lambda r: r[key])
    )
    series = remote_lake.series().column("SeriesInstanceUID")[0].as_py()
    volume, affine = open_series(remote_lake, series, as_numpy=True)
    expected, expected_affine = open_series(local_lake, series, as_numpy=True)
    np.testing.assert_array_equal(volume, expected)
    np.testing.assert_array_equal(affine, expected_affine)
    fs = s3fs.S3FileSystem(**s3_options)
    assert _chunks(fs, "dicoms/lakes/pixels") == _chunks(fsspec.filesystem("file"), str(local))
    again = ingest([str(src)], out=bucket, storage_options=s3_options, client=client, pixels=True)
    assert (again.rows, again.skipped) == (0, 8)
    held_back.rename(paths[-1])
    grown = ingest([str(src)], out=bucket, storage_options=s3_options, client=client, pixels=True)
    assert grown.rows == 9
    lake = read_lake(bucket, storage_options=s3_options)
    assert lake.series().column("frames").to_pylist() == [9]
    volume, _ = open_series(lake, series, as_numpy=True)
    assert volume.shape[0] == 9
    fresh = tmp_path / "fresh"
    ingest([str(src)], out=str(fresh), client=client, progress=False, pixels=True)
    # the grown stack's shards are those a fresh lake of all nine writes, and nothing stale
    assert _chunks(fs, "dicoms/lakes/pixels") == _chunks(fsspec.filesystem("file"), str(fresh))
    everything = b"".join(fs.cat_file(k) for k in fs.find("dicoms/lakes/pixels"))
    assert SECRET.encode() not in everything


def test_a_peer_retrieved_into_a_bucket_lake(
    s3_options: dict, client: Client, tmp_path: Path
) -> None:
    """DICOMweb (Orthanc) → ``s3://`` lake: retrieved files land in the bucket (never in a
    local folder named like the bucket), are ingested from there, and a rerun fetches
    nothing again."""
    from dicomflow.api import ingest, read_lake
    from tests.peers.orthanc import orthanc_binary, running_orthanc

    require(orthanc_binary() is not None, "Orthanc (Debian package orthanc)")
    names = ["CT_small.dcm", "MR_small.dcm"]
    bucket = "s3://dicoms/lakes/from-pacs"
    fs = s3fs.S3FileSystem(**s3_options)
    with running_orthanc(tmp_path / "pacs", dicomweb=True) as server:
        for name in names:
            assert server.upload(PYDICOM_TEST_FILES / name)
        run = {"out": bucket, "storage_options": s3_options, "client": client, "progress": False}
        first = ingest([server.dicomweb], query={"PatientID": "*"}, **run, pixels=True)
        assert (first.rows, first.errors) == (2, 0)
        retrieved = fs.find("dicoms/lakes/from-pacs/_retrieved")
        stamps = {k: fs.info(k)["LastModified"] for k in retrieved}
        again = ingest([server.dicomweb], query={"PatientID": "*"}, **run, pixels=True)
    assert len(retrieved) == 2 and not Path("dicoms").exists()
    assert (again.rows, again.skipped) == (0, 2)
    fs.invalidate_cache()
    assert {
        k: fs.info(k)["LastModified"] for k in fs.find("dicoms/lakes/from-pacs/_retrieved")
    } == (stamps)
    lake = read_lake(bucket, storage_options=s3_options)
    assert lake.series().num_rows == 2
    expected = {str(pydicom.dcmread(PYDICOM_TEST_FILES / n).SOPInstanceUID) for n in names}
    assert set(lake.instances(columns=["SOPInstanceUID"]).column(0).to_pylist()) == expected


def _orthanc_sop_uids(server: object) -> set[str]:
    uids = set()
    for instance in server.get("/instances"):  # type: ignore[attr-defined]
        tags = server.get(f"/instances/{instance}/simplified-tags")  # type: ignore[attr-defined]
        uids.add(tags["SOPInstanceUID"])
    return uids


def test_bucket_inputs_are_sent_to_a_pacs(s3_options: dict, client: Client, tmp_path: Path) -> None:
    """``ingest s3://… --send dimse://…``: every DICOM object of the bucket reaches Orthanc
    (fetched to a temporary folder for C-STORE), and no credential reaches an error row."""
    import dicomflow
    from tests.peers.orthanc import orthanc_binary, running_orthanc

    require(orthanc_binary() is not None, "Orthanc (Debian package orthanc)")
    dicoms = [n for n in FILES if n.endswith(".dcm")]
    expected = {
        str(pydicom.dcmread(PYDICOM_TEST_FILES / n, stop_before_pixels=True).SOPInstanceUID)
        for n in dicoms
    }
    with running_orthanc(tmp_path / "pacs") as server:
        summary = dicomflow.ingest(
            ["s3://dicoms/data/"],
            out=str(tmp_path / "lake"),
            pixels=False,
            storage_options=s3_options,
            send_to=server.url,
            client=client,
            progress=False,
        )
        stored = _orthanc_sop_uids(server)
    assert stored == expected
    assert summary.rows == len(dicoms) and summary.error_codes == {"not_dicom": 1}
    errors = dicomflow.read_lake(str(tmp_path / "lake")).errors().to_pylist()
    assert SECRET not in repr(errors)


def test_bucket_lake_anonymize_send_stores_only_deidentified_instances(
    s3_options: dict, client: Client, tmp_path: Path
) -> None:
    """A bucket lake with ``--anonymize --dicom --send``: the de-identified files live in
    the bucket, and exactly the lake's de-identified instances reach Orthanc."""
    import dicomflow
    from dicomflow.anonymize.keys import SecretKey
    from dicomflow.api import AnonymizeSettings, deidentifier
    from tests.peers.orthanc import orthanc_binary, running_orthanc

    require(orthanc_binary() is not None, "Orthanc (Debian package orthanc)")
    sources = [str(PYDICOM_TEST_FILES / n) for n in ("CT_small.dcm", "MR_small.dcm")]
    originals = {str(pydicom.dcmread(p, stop_before_pixels=True).SOPInstanceUID) for p in sources}
    settings = AnonymizeSettings(deidentifier(key=SecretKey(b"k" * 40)), write_dicom=True)
    lake = "s3://dicoms/deid-lake"
    with running_orthanc(tmp_path / "pacs") as server:
        summary = dicomflow.ingest(
            sources,
            out=lake,
            pixels=False,
            storage_options=s3_options,
            anonymize=settings,
            send_to=server.url,
            client=client,
            progress=False,
        )
        stored = _orthanc_sop_uids(server)
    assert summary.rows == len(sources) and summary.errors == 0
    table = dicomflow.read_lake(lake, storage_options=s3_options).instances()
    lake_uids = set(table.column("SOPInstanceUID").to_pylist())
    assert stored == lake_uids and len(stored) == len(sources)
    assert not stored & originals
    # The proof read the de-identified files and the parts back from the bucket.
    proof = summary.proof
    assert proof is not None and proof.passed and proof.values_checked > 10
    assert proof.outputs_scanned >= len(sources) + 1 and proof.bytes_scanned > 2_000


def test_a_bucket_is_read_into_a_lake_in_another_store_with_its_own_options(
    s3_options: dict, tmp_path: Path
) -> None:
    """``--storage-option`` reaches the sources and ``--out-storage-option`` the lake: the
    inputs on one S3 service land in a lake on another, each with its own credentials."""
    pytest.importorskip("moto.server")
    port = free_port()
    # Its own process: moto servers in one process share their buckets.
    other = subprocess.Popen(
        [sys.executable, "-m", "moto.server", "-H", "127.0.0.1", "-p", str(port)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        lake_endpoint = f"http://127.0.0.1:{port}"
        lake_fs = s3fs.S3FileSystem(
            key="lake-user",
            secret="lake-secret",
            endpoint_url=lake_endpoint,
            skip_instance_cache=True,
        )
        for _ in range(100):
            try:
                lake_fs.mkdir("lake")
                break
            except OSError:
                time.sleep(0.2)
        source_endpoint = s3_options["client_kwargs"]["endpoint_url"]
        result = subprocess.run(
            [
                sys.executable,
                "-m",
                "dicomflow",
                "scan",
                "s3://dicoms/data",
                "--out",
                "s3://lake/cohort",
                "--storage-option",
                f"endpoint_url={source_endpoint}",
                "--storage-option",
                "key=testing",
                "--storage-option",
                f"secret={SECRET}",
                "--out-storage-option",
                f"endpoint_url={lake_endpoint}",
                "--out-storage-option",
                "key=lake-user",
                "--out-storage-option",
                "secret=lake-secret",
            ],
            capture_output=True,
            text=True,
            timeout=300,
            cwd=REPO,
        )
        assert result.returncode == 0, result.stderr
        assert SECRET not in result.stdout + result.stderr
        lake = dicomflow.read_lake(
            "s3://lake/cohort",
            storage_options={
                "key": "lake-user",
                "secret": "lake-secret",
                "endpoint_url": lake_endpoint,
            },
        )
        assert lake.instances().num_rows == len(FILES) - 1  # README.txt is an error row
        assert lake.errors().num_rows == 1
        source_fs = s3fs.S3FileSystem(**s3_options, skip_instance_cache=True)
        assert not source_fs.exists("lake")  # nothing written to the source's service
        assert not lake_fs.exists("dicoms")  # and the sources are not on the lake's
    finally:
        other.terminate()
        other.wait(timeout=30)
