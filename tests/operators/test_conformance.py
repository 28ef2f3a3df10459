"""Every unit that travels to workers pickles by value and is found through its registry."""

from __future__ import annotations

import pickle
from datetime import UTC, datetime

import pytest

from dicomflow import registry
from dicomflow.connectors.files import FilesConnector
from dicomflow.lake.layout import LakeLayout, safe_uid_component
from dicomflow.operators import Flatten, Operator
from dicomflow.pipelines.scan import scan_pipeline
from dicomflow.pipelines.sinks import CollectSink, LakeSink
from dicomflow.records import Batch, RunContext

UNITS = [
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
    assert registry.connectors.get("file") is FilesConnector
    empty = Batch((), RunContext("r", datetime.now(UTC)))
    assert Flatten()(empty).records == ()


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
