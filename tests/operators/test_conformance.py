"""Every unit that travels to workers pickles by value and is found through its registry."""

from __future__ import annotations

import pickle
from datetime import UTC, datetime
from pathlib import Path

import pytest

from dicomflow import registry
from dicomflow.connectors.files import FilesConnector
from dicomflow.lake.layout import LakeLayout, safe_uid_component
from dicomflow.operators import Flatten, Operator
from dicomflow.operators.base import Outputs, RunSettings
from dicomflow.operators.write_pixels import WritePixels
from dicomflow.pipelines.scan import scan_pipeline
from dicomflow.pipelines.sinks import CollectSink, LakeSink
from dicomflow.pixels.series_writer import PixelOptions
from dicomflow.records import Batch, RunContext, SourceRef
from dicomflow.schemas.spec import FilesSource, OperatorConfig
from tests.conftest import PYDICOM_TEST_FILES

UNITS = [
    WritePixels(PixelOptions(LakeLayout("/tmp/lake"))),
    Flatten(),
    Flatten(inline_binary_limit=64),
    FilesConnector(("/data",), {"anon": True}),
    LakeSink(LakeLayout("/tmp/lake")),
    CollectSink(),
    scan_pipeline(["/data"], out="/tmp/lake"),
]


@pytest.mark.parametrize("unit", UNITS, ids=lambda u: type(u).__name__)
def test_units_pickle_round_trip(unit: object) -> None:
    assert pickle.loads(pickle.dumps(unit)) == unit


def test_operators_follow_the_contract_and_are_registered() -> None:
    assert isinstance(Flatten(), Operator)
    assert registry.operators.get("flatten") is Flatten
    files = registry.sources.get("files")
    assert files.Config is FilesSource
    assert files.build(
        FilesSource(urls=["/data"]), RunSettings(LakeLayout("/l"))
    ) == FilesConnector(("/data",))
    empty = Batch((), RunContext("r", datetime.now(UTC)))
    assert Flatten()(empty).records == ()


def test_write_pixels_runs_without_a_cluster(tmp_path: Path) -> None:
    series = PYDICOM_TEST_FILES / "dicomdirtests" / "77654033" / "CT2"
    refs = [SourceRef(str(p), p.stat().st_size) for p in sorted(series.iterdir())]
    batch = Batch(
        tuple(FilesConnector((str(series),)).fetch(refs)), RunContext("r", datetime.now(UTC))
    )
    layout = LakeLayout(str(tmp_path))
    out = WritePixels(PixelOptions(layout))(Flatten()(batch))
    rows = out.tables["series"]
    assert sum(row["frames"] for row in rows) == len(refs)
    paths = {row["zarr_path"] for row in rows}
    assert {r.outputs["instances"]["zarr_path"] for r in out.records} == paths
    assert all((tmp_path / path / "zarr.json").exists() for path in paths)
    assert registry.operators.get("pixels") is WritePixels


@pytest.mark.parametrize("name", registry.operators.names())
def test_registered_operators_declare_what_they_make(name: str) -> None:
    """Built-ins declare the same things a plugin must: kind, config model, outputs, build."""
    unit = registry.operators.get(name)
    assert isinstance(unit, type) and unit.name == name
    assert unit.kind in ("instance", "series", "lake")
    if unit.kind == "lake":  # runs once over the lake after the run, not on batches
        assert callable(unit.on_lake)
    assert issubclass(unit.Config, OperatorConfig)
    assert unit.Config.model_fields["name"].default == name
    assert isinstance(unit.outputs, Outputs) and isinstance(unit.needs_pixels, bool)
    for table in unit.outputs.tables:
        assert table.schema.names and table.version


@pytest.mark.parametrize(
    ("group", "field"),
    [(registry.sources, "kind"), (registry.sinks, "kind")],
    ids=["sources", "sinks"],
)
def test_registered_sources_and_sinks_declare_their_config(
    group: registry.Registry, field: str
) -> None:
    for name in group.names():
        unit = group.get(name)
        assert unit.Config.model_fields[field].default == name, name
        assert callable(unit.build)


def test_an_operator_installed_after_the_registry_was_read_is_found(
    plugin_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The entry points are read once per process, and again when a name is missing."""
    assert "sequence_stats" not in registry.operators.names()
    monkeypatch.syspath_prepend(str(plugin_path))  # the plugin "installed" now
    try:
        unit = registry.operators.get("sequence_stats")
        assert unit.name == "sequence_stats"
        assert "sequence_stats" in registry.operators.names()
    finally:
        monkeypatch.undo()
        registry._listed.cache_clear()  # forget the plugin again for the other tests


def test_unknown_registry_names_are_config_errors() -> None:
    with pytest.raises(ValueError, match=r"unknown dicomflow\.operators entry"):
        registry.operators.get("no-such-operator")


@pytest.mark.parametrize(
    ("value", "safe"),
    [
        ("1.2.840.10008.5.1.4.1.1.2", True),
        ("../../etc/passwd", False),
        ("a/b", False),
        ("..", False),
        ("1" * 65, False),
        ("", False),
    ],
)
def test_path_components_from_dicom_values_are_validated(value: str, safe: bool) -> None:
    component = safe_uid_component(value)
    assert (component == value) is safe
    assert "/" not in component and component not in ("", ".", "..")
