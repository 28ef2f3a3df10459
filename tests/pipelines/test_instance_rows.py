"""The instances table built ahead by reading tasks equals the one built at the commit."""

from __future__ import annotations

import dataclasses
from datetime import UTC, datetime

from dicomflow.connectors.files import FilesConnector
from dicomflow.errors import ErrorCode
from dicomflow.operators.flatten import OUTPUT as INSTANCES
from dicomflow.operators.flatten import Flatten
from dicomflow.pipelines.instance_rows import has_row, located, rows_table
from dicomflow.records import Batch, InstanceRecord, RunContext
from tests.conftest import PYDICOM_TEST_FILES

NAMES = ("CT_small.dcm", "MR_small.dcm", "rtplan.dcm", "no_such_file.dcm", "JPEG2000.dcm")


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
