"""An operator's fault costs an instance only that operator's outputs, whatever the fault:
an ``Exception``, or a Rust codec's panic (pyo3's ``PanicException`` derives from
``BaseException``); Ctrl-C is never swallowed."""

from __future__ import annotations

from datetime import UTC, datetime

import pytest

from dicomflow.errors import ErrorCode
from dicomflow.operators.base import map_records
from dicomflow.pipelines.sinks import error_table
from dicomflow.records import Batch, InstanceRecord, RunContext, SourceRef


class PanicException(BaseException):
    """What pyo3 raises when Rust code panics (same name, same base)."""


def _batch() -> Batch:
    with_row = InstanceRecord(SourceRef("file:///a.dcm")).with_output(
        "instances", {"SOPInstanceUID": "1.2.3", "warnings": ["earlier"]}
    )
    without_row = InstanceRecord(SourceRef("file:///b.dcm"))
    return Batch((with_row, without_row), RunContext("run", datetime.now(UTC)))


def _raise(exc: BaseException) -> InstanceRecord:
    raise exc


def test_a_panic_becomes_an_error_row_and_the_row_stays() -> None:
    batch = map_records(_batch(), "render", lambda r: _raise(PanicException("boom")))
    kept, lost = batch.records
    assert not kept.failed and kept.outputs["instances"]["warnings"] == [
        "earlier",
        "render: decoder_crashed",
    ]
    assert lost.failed and "instances" not in lost.outputs
    errors = error_table(batch).to_pylist()
    assert [(e["source"], e["stage"], e["code"]) for e in errors] == [
        ("file:///a.dcm", "render", ErrorCode.DECODER_CRASHED),
        ("file:///b.dcm", "render", ErrorCode.DECODER_CRASHED),
    ]
    assert all("boom" not in e["message"] for e in errors)


def test_later_operators_still_run_on_an_instance_that_kept_its_row() -> None:
    batch = map_records(_batch(), "render", lambda r: _raise(ValueError("bad")))
    batch = map_records(batch, "tag", lambda r: r.with_output("tagged", True))
    kept, lost = batch.records
    assert kept.outputs.get("tagged") is True
    assert "tagged" not in lost.outputs


@pytest.mark.parametrize("interrupt", [KeyboardInterrupt(), SystemExit(1)])
def test_ctrl_c_and_exit_are_not_swallowed(interrupt: BaseException) -> None:
    with pytest.raises(type(interrupt)):
        map_records(_batch(), "render", lambda r: _raise(interrupt))
