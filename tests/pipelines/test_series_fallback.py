"""A series whose task keeps failing costs only its own stacks.

Small series share one commit; when that task fails after its retries, each series
runs alone, and a series that fails alone too keeps its instances' rows, each image
with an error row of the pixel stage. The failure is injected on the workers (a
worker plugin that makes writing one chosen series raise, every time).
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

import pydicom
from distributed import Client
from distributed.diagnostics.plugin import WorkerPlugin

import dicomflow

REPO = Path(__file__).resolve().parents[2]


class PoisonSeries(WorkerPlugin):
    """Writing the series ``uid`` raises, on every attempt."""

    name = "poison-series"

    def __init__(self, uid: str) -> None:
        self.uid = uid

    def setup(self, worker: Any) -> None:
        from dicomflow.pipelines import series_tasks

        original = series_tasks.write_one
        if getattr(original, "poisoned", False):
            return
        uid = self.uid

        def write_one(parts: Any, context: Any, options: Any) -> Any:
            for part in parts:
                for record in part.records:
                    row = record.outputs.get("instances") or {}
                    if row.get("SeriesInstanceUID") == uid:
                        raise RuntimeError("injected: this series cannot be written")
            return original(parts, context, options)

        write_one.poisoned = True  # type: ignore[attr-defined]
        write_one.original = original  # type: ignore[attr-defined]
        series_tasks.write_one = write_one  # type: ignore[assignment]

    def teardown(self, worker: Any) -> None:
        from dicomflow.pipelines import series_tasks

        series_tasks.write_one = getattr(series_tasks.write_one, "original", series_tasks.write_one)


def test_a_failing_series_costs_only_its_own_stacks(client: Client, tmp_path: Path) -> None:
    sys.path.insert(0, str(REPO / "benchmarks"))
    from synth import write_ct_series

    paths = write_ct_series(tmp_path / "src", 18, per_series=3, rows=16, cols=16)
    by_series: dict[str, list[str]] = {}
    for path in paths:
        ds = pydicom.dcmread(path, stop_before_pixels=True)
        by_series.setdefault(str(ds.SeriesInstanceUID), []).append(str(ds.SOPInstanceUID))
    poisoned = sorted(by_series)[2]
    client.register_plugin(PoisonSeries(poisoned))
    try:
        summary = dicomflow.ingest(
            str(tmp_path / "src"),
            out=str(tmp_path / "lake"),
            client=client,
            progress=False,
            pixels=True,
        )
    finally:
        client.unregister_worker_plugin(PoisonSeries.name)
    assert summary.accounted
    lake = dicomflow.read_lake(str(tmp_path / "lake"))
    rows = {r["SOPInstanceUID"]: r for r in lake.instances().to_pylist()}
    assert len(rows) == 18  # every instance keeps its row
    written = set(lake.series().column("SeriesInstanceUID").to_pylist())
    assert written == set(by_series) - {poisoned}  # the other five series have their stacks
    for uid in by_series[poisoned]:
        assert rows[uid]["zarr_path"] is None
    errors = lake.errors().to_pylist()
    assert len(errors) == 3
    assert {(e["stage"], e["code"]) for e in errors} == {("write_pixels", "internal")}
    volume, _ = dicomflow.open_series(lake, sorted(written)[0], as_numpy=True)
    assert volume.shape == (3, 16, 16)
