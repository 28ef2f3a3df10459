"""The files connector and bucket lakes on Google Cloud Storage and Azure Blob Storage.

Each runs against a real emulator on loopback (gcp-storage-emulator for ``gs://``,
Microsoft's Azurite for ``az://``) through the same fsspec filesystems (gcsfs, adlfs)
a user's cloud would use. The expectations come from the same files scanned or
ingested locally, and from pydicom.
"""

from __future__ import annotations

import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import fsspec
import numpy as np
import pyarrow as pa
import pydicom
import pytest
from distributed import Client
from pydicom.pixels import apply_modality_lut

import dicomflow
from dicomflow.api import ingest, open_series, read_lake, run_scan
from dicomflow.errors import ConfigError
from dicomflow.lake.layout import LakeLayout
from dicomflow.lake.ledger import Ledger
from dicomflow.schemas import column_specs
from tests.conftest import PYDICOM_TEST_FILES, REPO, require
from tests.peers.object_stores import (
    AZURITE_KEY,
    Bucket,
    azurite_binary,
    gcs_emulator_binary,
    running_azurite,
    running_gcs_emulator,
)

FILES = ["CT_small.dcm", "MR_small.dcm", "rtplan.dcm", "JPEG2000.dcm", "README.txt"]
KEYWORDS = [spec.keyword for spec in column_specs()]


@pytest.fixture(scope="module")
def gcs(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Bucket]:
    require(gcs_emulator_binary() is not None, "gcp-storage-emulator (the dev extra)")
    with running_gcs_emulator(tmp_path_factory.mktemp("gcs")) as bucket:
        yield _with_inputs(bucket)


@pytest.fixture(scope="module")
def azure(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Bucket]:
    require(azurite_binary() is not None, "Azurite (npm install --prefix .tools azurite)")
    with running_azurite(tmp_path_factory.mktemp("azure")) as bucket:
        yield _with_inputs(bucket)


@pytest.fixture(params=["gcs", "azure"])
def store(request: pytest.FixtureRequest) -> Bucket:
    return request.getfixturevalue(request.param)


def _with_inputs(bucket: Bucket) -> Bucket:
    """The bucket ``dicoms`` holding the test files under ``data/``."""
    fs = bucket.filesystem()
    fs.mkdir("dicoms")
    for name in FILES:
        fs.put(str(PYDICOM_TEST_FILES / name), f"dicoms/data/{name}")
    return bucket


def _typed(table: pa.Table) -> list[dict]:
    rows = table.select(["source", *KEYWORDS]).to_pylist()
    for row in rows:
        row["source"] = Path(row["source"]).name
    return sorted(rows, key=lambda r: r["source"])


def _by_uid(table: pa.Table) -> list[dict]:
    return sorted(table.select(KEYWORDS).to_pylist(), key=lambda r: r["SOPInstanceUID"])


def _series_with_local_lake(tmp_path: Path, client: Client) -> tuple[Path, Path]:
    """Two synthetic CT series of three slices, and their lake made locally."""
    sys.path.insert(0, str(REPO / "benchmarks"))
    from synth import write_ct_series

    src, local = tmp_path / "src", tmp_path / "local"
    write_ct_series(src, 6, per_series=3, rows=32, cols=32)
    ingest([str(src)], out=str(local), client=client, pixels=True)
    return src, local


def _arrow(relation: object) -> pa.Table:
    """A DuckDB result as a pyarrow Table (``arrow()`` gives a reader in DuckDB 1.4+)."""
    result = relation.arrow()  # type: ignore[attr-defined]
    return result.read_all() if hasattr(result, "read_all") else result


def _chunks(fs: fsspec.AbstractFileSystem, root: str) -> dict[str, bytes]:
    """Every Zarr shard object under ``root`` (key below ``pixels.zarr`` → bytes)."""
    keys = [k for k in fs.find(f"{root}/pixels.zarr") if k.rsplit("/", 1)[-1].startswith("c.")]
    return {k.split("/pixels.zarr/", 1)[1]: fs.cat_file(k) for k in keys}


def test_bucket_scan_equals_local_scan(store: Bucket, client: Client) -> None:
    remote = run_scan(
        [store.url("dicoms/data/")],
        storage_options=store.storage_options,
        client=client,
        progress=False,
    )
    local = run_scan([str(PYDICOM_TEST_FILES / n) for n in FILES], client=client, progress=False)
    assert remote.rows == local.rows == len(FILES) - 1
    assert remote.error_codes == {"not_dicom": 1}
    remote_table = pa.concat_tables(remote.tables["instances"])
    assert _typed(remote_table) == _typed(pa.concat_tables(local.tables["instances"]))
    prefix = store.url("dicoms/data/")
    assert all(s.startswith(prefix) for s in remote_table["source"].to_pylist())


def test_a_missing_object_is_a_config_error_without_credentials(store: Bucket) -> None:
    missing = store.url("dicoms/missing.dcm")
    with pytest.raises(ConfigError) as info:
        run_scan(
            [store.url("dicoms/data/"), missing],
            storage_options=store.storage_options,
            progress=False,
        )
    assert missing in str(info.value)
    if store.secret:
        assert store.secret not in str(info.value)


def test_a_bucket_lake_with_pixels_equals_a_local_lake(
    store: Bucket, client: Client, tmp_path: Path
) -> None:
    """``ingest --pixels`` into the bucket: the same tables, the same shards byte for byte
    and the same volume as a local lake of the same series; a rerun skips every input,
    and a grown series is rewritten without stale shards."""
    sys.path.insert(0, str(REPO / "benchmarks"))
    from synth import write_ct_series

    src = tmp_path / "src"
    paths = write_ct_series(src, 6, per_series=6, rows=32, cols=32)
    held_back = tmp_path / "later.dcm"
    paths[-1].rename(held_back)
    local, lake_url = tmp_path / "local", store.url(f"dicoms/lakes/{tmp_path.name}")
    for out, options in ((str(local), {}), (lake_url, store.storage_options)):
        first = ingest([str(src)], out=out, storage_options=options, client=client, pixels=True)
        assert (first.rows, first.errors) == (5, 0)
    remote_lake = read_lake(lake_url, storage_options=store.storage_options)
    local_lake = read_lake(str(local))
    assert _by_uid(remote_lake.instances()) == _by_uid(local_lake.instances())
    series = remote_lake.series().column("SeriesInstanceUID")[0].as_py()
    volume, affine = open_series(remote_lake, series, as_numpy=True)
    expected, expected_affine = open_series(local_lake, series, as_numpy=True)
    np.testing.assert_array_equal(volume, expected)
    np.testing.assert_array_equal(affine, expected_affine)
    # the volume is pydicom's pixels of the five slices after the Modality LUT
    by_uid = {pydicom.dcmread(p).SOPInstanceUID: pydicom.dcmread(p) for p in paths[:-1]}
    order = local_lake.instances(columns=["SOPInstanceUID", "frame_index"]).to_pylist()
    assert sorted(row["frame_index"] for row in order) == list(range(5))
    for row in order:
        ds = by_uid[row["SOPInstanceUID"]]
        np.testing.assert_array_equal(
            volume[row["frame_index"]], apply_modality_lut(ds.pixel_array, ds)
        )
    fs = store.filesystem()
    root = lake_url.split("://", 1)[1]
    assert _chunks(fs, root) == _chunks(fsspec.filesystem("file"), str(local))
    again = ingest([str(src)], out=lake_url, storage_options=store.storage_options, client=client)
    assert (again.rows, again.skipped) == (0, 5)
    held_back.rename(paths[-1])
    grown = ingest(
        [str(src)], out=lake_url, storage_options=store.storage_options, client=client, pixels=True
    )
    assert grown.rows == 6
    fresh = tmp_path / "fresh"
    ingest([str(src)], out=str(fresh), client=client, pixels=True)
    fs.invalidate_cache()
    assert _chunks(fs, root) == _chunks(fsspec.filesystem("file"), str(fresh))
    lake = read_lake(lake_url, storage_options=store.storage_options)
    assert lake.series().column("frames").to_pylist() == [6]
    if store.secret:
        everything = b"".join(fs.cat_file(k) for k in fs.find(root))
        assert store.secret.encode() not in everything


def test_azure_inputs_land_in_a_gcs_lake_each_with_its_own_options(
    azure: Bucket, gcs: Bucket
) -> None:
    """The command line reads ``az://`` with ``--storage-option`` and writes a ``gs://``
    lake with ``--out-storage-option``; the account key reaches no output or message."""
    source = [f"--storage-option={k}={v}" for k, v in azure.storage_options.items()]
    lake = [f"--out-storage-option={k}={v}" for k, v in gcs.storage_options.items()]
    command = ["scan", azure.url("dicoms/data"), "--out", gcs.url("dicoms/cross-cloud")]
    result = subprocess.run(
        [sys.executable, "-m", "dicomflow", *command, *source, *lake],
        capture_output=True,
        text=True,
        timeout=300,
        cwd=REPO,
    )
    assert result.returncode == 0, result.stderr
    assert azure.secret and azure.secret not in result.stdout + result.stderr
    table = dicomflow.read_lake(gcs.url("dicoms/cross-cloud"), storage_options=gcs.storage_options)
    uids = set(table.instances(columns=["SOPInstanceUID"]).column(0).to_pylist())
    expected = {
        str(pydicom.dcmread(PYDICOM_TEST_FILES / n, stop_before_pixels=True).SOPInstanceUID)
        for n in FILES
        if n.endswith(".dcm")
    }
    assert uids == expected
    assert table.errors().column("code").to_pylist() == ["not_dicom"]
    written = gcs.filesystem()
    assert not written.find("dicoms/cross-cloud/_retrieved")  # read in place, not copied
    lake_bytes = b"".join(written.cat_file(k) for k in written.find("dicoms/cross-cloud"))
    assert azure.secret.encode() not in lake_bytes
    assert not azure.filesystem().exists("dicoms/cross-cloud")  # nothing written to the source


def test_the_command_line_writes_pixels_to_the_bucket_and_exits_cleanly(
    store: Bucket, tmp_path: Path
) -> None:
    """``dicomflow ingest BUCKET --out BUCKET --pixels``: the summary names the lake and
    its report in the user's scheme, the report is there, and nothing is printed at exit
    (adlfs's clients once closed on a stopped event loop, with a traceback)."""
    options = [f"--storage-option={k}={v}" for k, v in store.storage_options.items()]
    options += [f"--out-storage-option={k}={v}" for k, v in store.storage_options.items()]
    lake_url = store.url(f"dicoms/cli-{tmp_path.name}")
    result = subprocess.run(
        [
            sys.executable,
            "-m",
            "dicomflow",
            "ingest",
            store.url("dicoms/data"),
            "--out",
            lake_url,
            "--pixels",
            *options,
        ],
        capture_output=True,
        text=True,
        timeout=300,
        cwd=tmp_path,
    )
    assert result.returncode == 0, result.stderr
    assert "Traceback" not in result.stderr and "Error" not in result.stderr, result.stderr
    report = next(line for line in result.stdout.splitlines() if line.startswith("report: "))
    json_url = report.removeprefix("report: ").removesuffix(" (and .html)")
    assert json_url.startswith(f"{lake_url}/_runs/")
    assert store.filesystem().exists(json_url)
    assert not list(tmp_path.iterdir())  # nothing written in the working directory
    lake = read_lake(lake_url, storage_options=store.storage_options)
    images = [pydicom.dcmread(PYDICOM_TEST_FILES / n) for n in FILES if n.endswith(".dcm")]
    expected = {str(ds.SeriesInstanceUID) for ds in images if "PixelData" in ds}
    assert set(lake.series().column("SeriesInstanceUID").to_pylist()) == expected


def test_a_bucket_lake_reads_back_with_duckdb_and_pyarrow(
    store: Bucket, client: Client, tmp_path: Path
) -> None:
    """The bucket lake's tables, read with pyarrow (the lake's committed parts) and with
    DuckDB (over that dataset, and over the raw part files through the registered fsspec
    filesystem), equal the tables of a local lake of the same files."""
    import duckdb
    import pyarrow.parquet as pq

    local, lake_url = tmp_path / "local", store.url(f"dicoms/readback-{tmp_path.name}")
    sources = [str(PYDICOM_TEST_FILES / n) for n in FILES]
    run_scan(sources, out=str(local), client=client, progress=False)
    run_scan(
        sources,
        out=lake_url,
        storage_options=store.storage_options,
        client=client,
        progress=False,
    )
    expected = _by_uid(read_lake(str(local)).instances())
    lake = read_lake(lake_url, storage_options=store.storage_options)
    instances = lake.dataset("instances")
    from_dataset = _arrow(duckdb.sql("SELECT * FROM instances"))
    assert _by_uid(from_dataset) == _by_uid(instances.to_table()) == expected
    connection = duckdb.connect()
    connection.register_filesystem(store.filesystem())
    root = lake_url.split("://", 1)[1]
    glob = store.url(f"{root}/instances/*.parquet")
    from_files = _arrow(connection.sql(f"SELECT * FROM read_parquet('{glob}')"))
    assert _by_uid(from_files) == expected
    errors_glob = store.url(f"{root}/errors/*.parquet")
    ((errors,),) = connection.sql(f"SELECT count(*) FROM read_parquet('{errors_glob}')").fetchall()
    assert errors == 1
    fs = store.filesystem()
    for key in fs.find(f"{root}/instances"):
        assert pq.ParquetFile(fs.open(key)).metadata.num_rows >= 0  # each part whole


def test_connection_resets_during_uploads_end_in_retries_with_nothing_half_written(
    store: Bucket, client: Client, tmp_path: Path
) -> None:
    """Uploads to the bucket lake go through a proxy that resets the connection in the
    middle of every other upload, six times: the run retries them and ends with no
    error, every object in the bucket is whole, and the lake equals a local lake shard
    for shard."""
    import json

    import pyarrow.parquet as pq

    from tests.peers.resetting_proxy import ResettingProxy

    src, local = _series_with_local_lake(tmp_path, client)
    root = f"dicoms/resets-{tmp_path.name}"
    with ResettingProxy(store.port, resets=6, every=2) as proxy:
        flaky = store.through(proxy.port)
        summary = ingest(
            [str(src)],
            out=flaky.url(root),
            storage_options=flaky.storage_options,
            client=client,
            pixels=True,
        )
    assert proxy.resets_done == 6  # the faults really happened
    assert (summary.rows, summary.errors) == (6, 0)
    fs = store.filesystem()
    for key in fs.find(root):  # every object whole: each parses as what it claims to be
        if key.endswith(".parquet"):
            pq.ParquetFile(fs.open(key)).read()
        elif key.endswith(".json"):
            json.loads(fs.cat_file(key))
    assert _chunks(fs, root) == _chunks(fsspec.filesystem("file"), str(local))
    lake = read_lake(store.url(root), storage_options=store.storage_options)
    assert _by_uid(lake.instances()) == _by_uid(read_lake(str(local)).instances())
    assert lake.errors().num_rows == 0


def test_a_lake_refusing_the_credentials_is_a_clear_error_before_any_work(
    azure: Bucket, tmp_path: Path
) -> None:
    """A wrong account key: reading from the container gives an error row saying
    permission denied; writing a lake there is exit 2 before any work; neither prints the
    key or a traceback."""
    wrong_key = "V3JvbmdLZXk" * 8
    wrong = azure.storage_options["connection_string"].replace(AZURITE_KEY, wrong_key)
    option, lake = f"connection_string={wrong}", tmp_path / "lake"
    command = [sys.executable, "-m", "dicomflow", "scan"]
    reading = subprocess.run(
        [*command, azure.url("dicoms/data"), "--out", str(lake), f"--storage-option={option}"],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert reading.returncode == 0, reading.stderr
    assert "Traceback" not in reading.stderr
    errors = read_lake(str(lake)).errors().to_pylist()
    assert [(e["code"], e["message"].split(" (")[0]) for e in errors] == [
        ("unreadable", "permission denied")
    ]
    assert errors[0]["source"] == azure.url("dicoms/data")
    writing = subprocess.run(
        [
            *command,
            str(PYDICOM_TEST_FILES / "CT_small.dcm"),
            "--out",
            azure.url("dicoms/refused"),
            f"--out-storage-option={option}",
        ],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert writing.returncode == 2, writing.stderr
    assert "the lake at az://dicoms/refused refuses access: permission denied" in writing.stderr
    assert "Traceback" not in writing.stderr
    for result in (reading, writing):
        assert wrong_key not in result.stdout + result.stderr
        assert AZURITE_KEY not in result.stdout + result.stderr
    assert not azure.filesystem().exists("dicoms/refused")


def test_a_lake_that_stops_taking_writes_ends_the_run_and_a_rerun_completes_it(
    gcs: Bucket, client: Client, tmp_path: Path
) -> None:
    """After its first uploads, every upload to the lake is reset: the run ends with a
    SinkError naming the lake (not after isolating every input, which would fail the
    same way, each after the store client's own retries), and a rerun against the
    healthy store completes the lake, equal to a local one with nothing stale."""
    from dicomflow.api import SinkError
    from tests.peers.resetting_proxy import ResettingProxy

    src, local = _series_with_local_lake(tmp_path, client)
    root = f"dicoms/stops-{tmp_path.name}"
    with ResettingProxy(gcs.port, resets=10_000, after=3) as proxy:
        flaky = gcs.through(proxy.port)
        with pytest.raises(SinkError, match=f"the lake at gs://{root} cannot be written"):
            ingest(
                [str(src)],
                out=flaky.url(root),
                storage_options=flaky.storage_options,
                client=client,
                pixels=True,
                retries=0,  # gcsfs retries each upload for about 30 s already
            )
    assert proxy.resets_done > 0
    again = ingest(
        [str(src)],
        out=gcs.url(root),
        storage_options=gcs.storage_options,
        client=client,
        pixels=True,
    )
    assert again.errors == 0 and again.rows + again.skipped == 6
    fs = gcs.filesystem()
    assert _chunks(fs, root) == _chunks(fsspec.filesystem("file"), str(local))
    lake = read_lake(gcs.url(root), storage_options=gcs.storage_options)
    assert _by_uid(lake.instances()) == _by_uid(read_lake(str(local)).instances())
    live = {
        f"{root}/{p}" for p in Ledger(LakeLayout(gcs.url(root), gcs.storage_options)).live_parts()
    }
    assert {k for k in fs.find(root) if k.endswith(".parquet")} == live  # no stale part
