"""The instances table built ahead by reading tasks equals the one built at the commit."""

from __future__ import annotations

import dataclasses
import pickle
from datetime import UTC, datetime

from dicomflow.connectors.files import FilesConnector
from dicomflow.errors import ErrorCode
from dicomflow.operators.flatten import OUTPUT as INSTANCES
from dicomflow.operators.flatten import Flatten
from dicomflow.pipelines.instance_rows import (
    COMMIT_COLUMNS,
    has_row,
    located,
    rows_table,
    slimmed,
)
from dicomflow.pipelines.series_tasks import SeriesRows
from dicomflow.records import Batch, InstanceRecord, RunContext
from tests.conftest import PYDICOM_TEST_FILES

NAMES = ("CT_small.dcm", "MR_small.dcm", "rtplan.dcm", "README.txt", "JPEG2000.dcm")


def _records() -> list[InstanceRecord]:
    source = FilesConnector(tuple(str(PYDICOM_TEST_FILES / n) for n in NAMES))
    refs = source.query().refs + [r for r, _ in source.query().failures]
    batch = Flatten()(Batch(tuple(source.fetch(sorted(refs, key=lambda r: r.url))), _context()))
    return list(batch.records)


def _context() -> RunContext:
    return RunContext("run-1", datetime(2026, 1, 1, tzinfo=UTC))


def _committed(records: list[InstanceRecord]) -> list[InstanceRecord]:
    """What a commit does: place two images, fail one (a broken image)."""
    out = list(records)
    images = [i for i, r in enumerate(out) if has_row(r)]
    for frame, i in enumerate(images[:2]):
        row = {
            **out[i].outputs[INSTANCES],
            "zarr_path": "pixels.zarr/a/b/stack-0",
            "frame_index": frame,
        }
        out[i] = dataclasses.replace(out[i], outputs={**out[i].outputs, INSTANCES: row})
    out[images[2]] = out[images[2]].with_error("write_pixels", ErrorCode.DECODE_FAILED, "broken")
    return out


def test_the_table_built_ahead_equals_the_committed_rows_table() -> None:
    records = _records()
    assert sum(map(has_row, records)) >= 4 and not all(map(has_row, records))
    pieces = [rows_table(records[:2]), rows_table(records[2:])]  # two reading tasks
    had_row = [has_row(r) for r in records]
    committed = _committed(records)
    ahead = located(pieces, had_row, committed)
    assert ahead.equals(rows_table(committed))
    assert ahead.num_rows == sum(map(has_row, records)) - 1
    assert ahead.column("frame_index").to_pylist()[:2] == [0, 1]


def test_slimmed_records_give_the_same_table_once_committed() -> None:
    """The reading tasks keep the table and slim the records: the commit's result is the
    table the full records give, and the records keep what the commit reads."""
    records = _records()
    pieces = [rows_table(records[:2]), rows_table(records[2:])]
    slim = list(slimmed(records))
    assert all(r.header is None for r in slim)
    assert [has_row(r) for r in slim] == [has_row(r) for r in records]
    for full, cut in zip(records, slim, strict=True):
        if has_row(full):
            expected = {k: full.outputs[INSTANCES].get(k) for k in COMMIT_COLUMNS}
            assert cut.outputs[INSTANCES] == expected and expected["SeriesInstanceUID"]
    ahead = located(pieces, [has_row(r) for r in records], _committed(slim))
    assert ahead.equals(rows_table(_committed(records)))


def test_series_rows_pickle_their_table_in_band() -> None:
    """Pickled as it is, a table inside another object becomes one out-of-band buffer per
    column buffer, each a frame of its own when Dask moves it between workers. Packed, it
    travels in band; the only out-of-band buffer is the one of the encoded frames."""
    records = _records()
    rows = SeriesRows(1.0, slimmed(records), table=rows_table(records))
    assert len(_out_of_band(rows.table)) > 10  # what packing avoids
    (frames,) = _out_of_band(rows)
    assert frames.raw().nbytes == 0  # no encoded frames here
    again = pickle.loads(pickle.dumps(rows, protocol=5))
    assert again.table.equals(rows.table) and again.records == rows.records
    assert again.started == rows.started and again.encoded == {}
    assert pickle.loads(pickle.dumps(SeriesRows(2.0, ()))).table is None


def _out_of_band(value: object) -> list[pickle.PickleBuffer]:
    buffers: list[pickle.PickleBuffer] = []
    pickle.dumps(value, protocol=5, buffer_callback=buffers.append)
    return buffers
