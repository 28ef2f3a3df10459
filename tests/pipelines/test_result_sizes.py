"""Dask knows what the pipelines' task results weigh (``pipelines.result_sizes``).

Sized as ``sys.getsizeof`` of the object alone, a held reading result counted as
56 bytes whatever it held: workers never spilled such results and the scheduler
never saw them.
"""

from __future__ import annotations

import pickle
import shutil
import sys
from datetime import UTC, datetime
from pathlib import Path

import dask
from dask.sizeof import sizeof
from distributed import Client, LocalCluster, wait

from dicomflow.connectors.files import STAGE as READ_STAGE
from dicomflow.connectors.files import FilesConnector
from dicomflow.dicom.elements import Elements
from dicomflow.errors import ErrorCode
from dicomflow.lake.layout import LakeLayout
from dicomflow.operators.flatten import Flatten
from dicomflow.pipelines.instance_rows import INSTANCES
from dicomflow.pipelines.pipeline import PartitionResult
from dicomflow.pipelines.plan import Partition
from dicomflow.pipelines.read_once import ReadPart, read_part
from dicomflow.pipelines.result_sizes import record_bytes, records_bytes
from dicomflow.pipelines.series_tasks import SeriesRows, read_rows
from dicomflow.pixels.series_writer import PixelOptions
from dicomflow.records import RunContext, SourceRef
from tests.conftest import PYDICOM_TEST_FILES, REPO

sys.path.insert(0, str(REPO / "benchmarks"))
from synth import write_ct_series

SLICES = 40


def _source(tmp_path: Path) -> tuple[FilesConnector, list[SourceRef]]:
    write_ct_series(tmp_path / "src", SLICES, per_series=SLICES, rows=16, cols=16)
    source = FilesConnector((str(tmp_path / "src"),))
    return source, sorted(source.query().refs, key=lambda r: r.url)


def _context(run: str = "a") -> RunContext:
    return RunContext(f"20261129T000000Z-{run}", datetime.now(UTC))


def _read_part(source: FilesConnector, refs: list[SourceRef], lake: Path) -> ReadPart:
    options = PixelOptions(LakeLayout(str(lake)))
    partition = Partition(0, "p0", tuple(refs))
    return read_part(source, partition, _context(), (Flatten(),), options)


def test_a_reading_result_weighs_at_least_its_table_and_its_pickle(tmp_path: Path) -> None:
    source, refs = _source(tmp_path)
    part = _read_part(source, refs, tmp_path / "lake")
    (rows,) = part.rows.values()
    assert rows.table is not None and rows.table.num_rows == SLICES
    size = sizeof(part)
    assert size >= rows.table.nbytes + sizeof(rows.records) > 100_000
    assert size >= len(pickle.dumps(part, protocol=5))
    assert sizeof(part) == size  # the same every time (no random sample)


def test_reading_tasks_count_their_encoded_frames(tmp_path: Path) -> None:
    """A series' reading task holds its frames, encoded, until the stacks are written:
    Dask must count every byte of them (its dict size samples ten values)."""
    source, refs = _source(tmp_path)
    options = PixelOptions(LakeLayout(str(tmp_path / "lake")))
    rows = read_rows(source, refs, _context(), (Flatten(),), options)
    assert rows.table is not None and len(rows.encoded) == SLICES
    frames = sum(len(c) for e in rows.encoded.values() for c in e.chunks if c)  # type: ignore[union-attr]
    assert frames > SLICES * 100
    assert sizeof(rows) >= frames + rows.table.nbytes
    assert sizeof(rows) >= len(pickle.dumps(rows, protocol=5))


def test_records_with_headers_and_errors_count_them(tmp_path: Path) -> None:
    source, refs = _source(tmp_path)
    (record,) = source.fetch(refs[:1])
    assert record.header is not None
    values = sum(len(e.value) for e in record.header.elements if isinstance(e.value, bytes))
    assert record_bytes(record) >= values
    failed = record.with_error(READ_STAGE, ErrorCode.UNREADABLE, "x" * 10_000)
    assert record_bytes(failed) >= record_bytes(record) + 10_000
    assert records_bytes([]) == sys.getsizeof([])


def _value_bytes(elements: Elements) -> int:
    total = 0
    for element in elements:
        if element.vr == "SQ" and isinstance(element.value, tuple):
            total += sum(_value_bytes(item) for item in element.value)
        elif isinstance(element.value, bytes):
            total += len(element.value)
    return total


def test_nested_sequences_count_every_item(tmp_path: Path) -> None:
    """An RT Plan's header is mostly sequences within sequences."""
    shutil.copy(PYDICOM_TEST_FILES / "rtplan.dcm", tmp_path / "rtplan.dcm")
    source = FilesConnector((str(tmp_path),))
    (record,) = source.fetch(source.query().refs)
    assert record.header is not None
    elements = record.header.elements
    nested = _value_bytes(tuple(e for e in elements if e.vr == "SQ"))
    assert nested > 500
    assert record_bytes(record) >= _value_bytes(elements) + _value_bytes(record.header.file_meta)


def test_a_partition_result_counts_its_collected_tables(tmp_path: Path) -> None:
    source, refs = _source(tmp_path)
    table = _read_part(source, refs, tmp_path / "lake").rows.popitem()[1].table
    assert table is not None
    result = PartitionResult(0, SLICES, SLICES, 0, {}, tables={INSTANCES: table})
    assert sizeof(result) >= table.nbytes
    assert sizeof(PartitionResult(0, 1, 1, 0, {})) < 1_000


def test_the_scheduler_sees_what_a_held_reading_result_holds(
    client: Client, tmp_path: Path
) -> None:
    source, refs = _source(tmp_path)
    options = PixelOptions(LakeLayout(str(tmp_path / "lake")))
    future = client.submit(
        read_part, source, Partition(0, "p0", tuple(refs)), _context(), (Flatten(),), options
    )
    wait(future)
    part = future.result()
    (rows,) = part.rows.values()
    assert rows.table is not None
    assert client.nbytes(keys=[future.key], summary=False)[future.key] >= rows.table.nbytes


def test_held_reading_results_are_spilled_under_a_memory_limit(tmp_path: Path) -> None:
    """A worker whose held results pass its memory target writes them to disk (Dask's
    spilling) rather than keeping them: with results sized as 56 bytes it never did."""
    source, refs = _source(tmp_path)
    options = PixelOptions(LakeLayout(str(tmp_path / "lake")))
    parts = [refs[k : k + 10] for k in range(0, SLICES, 10)]
    settings = {
        "distributed.worker.memory.target": 0.1,  # spill past a tenth of 2 MB held
        "distributed.worker.memory.spill": False,  # not by the process' memory (Python's own)
        "distributed.worker.memory.pause": False,
        "distributed.worker.memory.terminate": False,
    }
    with (
        dask.config.set(settings),
        LocalCluster(
            n_workers=1,
            threads_per_worker=1,
            memory_limit="2MB",
            processes=False,
            dashboard_address=None,
            local_directory=str(tmp_path / "dask"),
        ) as cluster,
        Client(cluster) as spilling,
    ):
        futures = [
            spilling.submit(
                read_part,
                source,
                Partition(n, f"p{n}", tuple(p)),
                _context(),
                (Flatten(),),
                options,
            )
            for n, p in enumerate(parts)
        ]
        wait(futures)
        (worker,) = cluster.workers.values()
        assert len(worker.data.slow) >= 1  # written to disk
        assert all(isinstance(f.result(), ReadPart) for f in futures)  # and read back whole
        read_back = [f.result() for f in futures]
    assert sum(len(p.series) for p in read_back) == SLICES
    assert all(isinstance(r, SeriesRows) for p in read_back for r in p.rows.values())
