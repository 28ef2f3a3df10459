"""A partition whose task keeps failing is run again input by input.

Only the inputs that fail alone too become ``internal`` error rows; every other
input of the partition gets its row, committed, and is not redone by a rerun.
"""

from __future__ import annotations

import dataclasses
import os
import shutil
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path

import dask
import pytest
from distributed import Client, LocalCluster

from dicomflow.api import read_lake
from dicomflow.connectors.files import FilesConnector
from dicomflow.lake.layout import LakeLayout
from dicomflow.operators.flatten import Flatten
from dicomflow.pipelines.pipeline import Pipeline
from dicomflow.pipelines.plan import PartitionPolicy
from dicomflow.pipelines.sinks import LakeSink
from dicomflow.records import InstanceRecord, SourceRef
from tests.conftest import corpus_manifest

pytestmark = pytest.mark.integration

POISON = "poison.dcm"


@dataclass(frozen=True)
class PoisonedFiles(FilesConnector):
    """Files, except that reading one named ``poison.dcm`` fails its whole task (as a
    reader fault that escapes would)."""

    def fetch(self, refs: Iterable[SourceRef]) -> Iterator[InstanceRecord]:
        for record in super().fetch(refs):
            if Path(record.ref.url).name == POISON:
                raise RuntimeError("a fault no reader caught")
            yield record


@pytest.fixture()
def inputs(tmp_path: Path, corpus: Path) -> list[str]:
    """Seven readable CT and MR files from the corpus, plus the poison, in one folder."""
    folder = tmp_path / "in"
    folder.mkdir()
    chosen = [
        r["relative_path"]
        for r in corpus_manifest()
        if r["relative_path"].startswith("pydicom__pydicom/test_files/")
        and r["modality"] in ("CT", "MR")
        and r["transfer_syntax_uid"] == "1.2.840.10008.1.2.1"
    ][:7]
    assert len(chosen) == 7
    names = []
    for number, name in enumerate(chosen):
        target = folder / f"{number:02d}-{Path(name).name}"
        shutil.copyfile(corpus / name, target)
        names.append(target.name)
    shutil.copyfile(corpus / chosen[0], folder / POISON)
    return names


@pytest.fixture(scope="module")
def threads() -> Iterator[Client]:
    with Client(processes=False, n_workers=1, threads_per_worker=2, dashboard_address=None) as c:
        yield c


def pipeline(folder: Path, out: Path) -> Pipeline:
    return Pipeline(
        source=PoisonedFiles((str(folder),)),
        operators=(Flatten(),),
        sinks=(LakeSink(LakeLayout(str(out)), "poison-test"),),
        policy=PartitionPolicy(min_files=100),  # all eight inputs in one partition
    )


def test_only_the_poisoned_input_becomes_internal(
    inputs: list[str], tmp_path: Path, threads: Client
) -> None:
    out = tmp_path / "lake"
    run = pipeline(tmp_path / "in", out)
    (partition,), _ = run.plan()
    assert len(partition.refs) == 8  # one partition: the poison would take them all

    summary = run.run(threads, progress=False, retries=1)

    lake = read_lake(str(out))
    assert sorted(Path(r["source"]).name for r in lake.instances().to_pylist()) == inputs
    errors = lake.errors().to_pylist()
    assert [(Path(e["source"]).name, e["code"]) for e in errors] == [(POISON, "internal")]
    assert "RuntimeError" in errors[0]["message"]
    assert "a fault" not in errors[0]["message"]  # the exception's text stays out
    assert (summary.rows, summary.errors) == (7, 1)

    again = pipeline(tmp_path / "in", out).run(threads, progress=False, retries=0)
    assert again.skipped == 7  # committed alone, they are done
    assert (again.rows, again.errors) == (0, 1)  # only the poison is tried again
    lake = read_lake(str(out))
    assert lake.instances().num_rows == 7
    assert lake.errors().num_rows == 1


@dataclass(frozen=True)
class CrashingFiles(FilesConnector):
    """Files, except that reading ``poison.dcm`` ends its worker process at once (as
    an abort inside a native codec does)."""

    def fetch(self, refs: Iterable[SourceRef]) -> Iterator[InstanceRecord]:
        for record in super().fetch(refs):
            if Path(record.ref.url).name == POISON:
                os._exit(70)
            yield record


@pytest.mark.slow
def test_a_worker_killed_by_one_input_costs_only_that_input(
    inputs: list[str], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # The nanny that restarts the killed worker leaves Dask's MALLOC_TRIM_THRESHOLD_ in
    # this process's environment; later clusters of the suite would inherit it.
    monkeypatch.setenv("MALLOC_TRIM_THRESHOLD_", "0")
    monkeypatch.delenv("MALLOC_TRIM_THRESHOLD_")
    out = tmp_path / "lake"
    run = dataclasses.replace(
        pipeline(tmp_path / "in", out), source=CrashingFiles((str(tmp_path / "in"),))
    )
    with (
        dask.config.set({"distributed.scheduler.allowed-failures": 1}),
        LocalCluster(n_workers=2, threads_per_worker=2, dashboard_address=None) as cluster,
        Client(cluster) as client,
    ):
        summary = run.run(client, progress=False, retries=0)
    lake = read_lake(str(out))
    assert sorted(Path(r["source"]).name for r in lake.instances().to_pylist()) == inputs
    errors = lake.errors().to_pylist()
    assert [(Path(e["source"]).name, e["code"]) for e in errors] == [(POISON, "internal")]
    assert "KilledWorker" in errors[0]["message"]
    assert (summary.rows, summary.errors) == (7, 1)
