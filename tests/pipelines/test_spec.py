"""Pipeline specs: validation, round trips, the committed JSON Schema, and ``run``."""

from __future__ import annotations

import json
import subprocess
import sys
from importlib import resources
from pathlib import Path

import pyarrow.parquet as pq
import pytest

from dicomflow.errors import ConfigError
from dicomflow.pipelines.spec_files import apply_set, load_spec
from dicomflow.schemas.spec import (
    AnonymizeOperator,
    Cluster,
    DicomSink,
    FilesSource,
    FlattenOperator,
    LakeSink,
    Limits,
    PipelineSpec,
    PixelsOperator,
    spec_json_schema,
)
from tests.conftest import PYDICOM_TEST_FILES

STOCK = sorted(p.name for p in resources.files("dicomflow.pipelines").joinpath("specs").iterdir())


def _stock(name: str) -> str:
    return resources.files("dicomflow.pipelines").joinpath("specs", name).read_text()


@pytest.mark.parametrize("name", STOCK)
def test_stock_specs_validate_and_round_trip(name: str) -> None:
    spec = PipelineSpec.from_yaml(_stock(name))
    again = PipelineSpec.from_yaml(spec.to_yaml())
    assert again == spec
    assert again.to_yaml() == spec.to_yaml()


def test_three_stock_specs_cover_the_jobs() -> None:
    kinds = {PipelineSpec.from_yaml(_stock(n)).source.kind for n in STOCK}
    assert len(STOCK) >= 3 and {"files", "dimse"} <= kinds


def test_python_api_builds_the_same_spec_as_yaml() -> None:
    built = PipelineSpec(
        name="ml",
        source=FilesSource(urls=["/data"]),
        operators=[FlattenOperator(), PixelsOperator(frames_per_chunk=2)],
        sinks=[LakeSink(path="/lake")],
        cluster=Cluster(workers=2),
        limits=Limits(max_error_rate=0.1),
    )
    text = """
name: ml
source: {kind: files, urls: [/data]}
operators: [{name: flatten}, {name: pixels, frames_per_chunk: 2}]
sinks: [{kind: lake, path: /lake}]
cluster: {workers: 2}
limits: {max_error_rate: 0.1}
"""
    assert PipelineSpec.from_yaml(text) == built


def test_committed_json_schema_is_current() -> None:
    committed = json.loads(
        resources.files("dicomflow.schemas").joinpath("pipeline-spec.schema.json").read_text()
    )
    assert committed == spec_json_schema(builtin_only=True), (
        "regenerate: python -m dicomflow.schemas.spec"
    )


@pytest.mark.parametrize(
    ("raw", "field"),
    [
        ({"name": "x", "source": {"kind": "files", "urls": ["/a"]}, "sinks": []}, "sinks"),
        (
            {
                "name": "x",
                "source": {"kind": "ftp", "urls": ["/a"]},
                "sinks": [{"kind": "lake", "path": "/l"}],
            },
            "source",
        ),
        (
            {
                "name": "x",
                "source": {"kind": "files", "urls": ["/a"]},
                "sinks": [{"kind": "lake", "path": "/l"}],
                "limits": {"max_error_rate": 2},
            },
            "limits.max_error_rate",
        ),
    ],
)
def test_invalid_specs_name_the_field(tmp_path: Path, raw: dict, field: str) -> None:
    path = tmp_path / "spec.yaml"
    path.write_text(json.dumps(raw))
    with pytest.raises(ConfigError, match=field.replace(".", r"\.")):
        load_spec(str(path))


def test_dicom_sink_needs_anonymize_and_the_key_never_inline() -> None:
    with pytest.raises(ValueError, match="needs anonymize"):
        PipelineSpec(
            name="x", source=FilesSource(urls=["/a"]), sinks=[LakeSink(path="/l"), DicomSink()]
        )
    with pytest.raises(ValueError, match="key_file or key_env"):
        AnonymizeOperator()
    assert "key" not in AnonymizeOperator.model_fields  # no field can hold the key itself


def test_set_overrides_nested_fields_and_list_items() -> None:
    raw = {"sinks": [{"kind": "lake", "path": "/a"}], "limits": {}}
    apply_set(raw, "sinks.0.path=/b")
    apply_set(raw, "limits.max_error_rate=0.25")
    apply_set(raw, "cluster.workers=3")
    assert raw == {
        "sinks": [{"kind": "lake", "path": "/b"}],
        "limits": {"max_error_rate": 0.25},
        "cluster": {"workers": 3},
    }
    with pytest.raises(ConfigError):
        apply_set(raw, "sinks.5.path=/c")


def _cli(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "dicomflow", *args], capture_output=True, text=True, timeout=300
    )


def test_run_exit_codes_follow_the_error_rate(tmp_path: Path) -> None:
    src = tmp_path / "src"
    src.mkdir()
    for name in ("CT_small.dcm", "MR_small.dcm", "README.txt"):
        (src / name).write_bytes((PYDICOM_TEST_FILES / name).read_bytes())
    spec = PipelineSpec(
        name="tiny",
        source=FilesSource(urls=[str(src)]),
        sinks=[LakeSink(path=str(tmp_path / "lake"))],
        cluster=Cluster(workers=1),
        limits=Limits(max_error_rate=0.5),
    )
    path = tmp_path / "spec.yaml"
    path.write_text(spec.to_yaml())
    ok = _cli("run", str(path))
    assert ok.returncode == 0, ok.stderr
    assert "Running in this process (3 inputs" in ok.stderr  # a small job starts no cluster
    assert pq.read_table(tmp_path / "lake" / "instances").num_rows == 2
    rerun = _cli("run", str(path))  # everything is committed already: nothing to redo
    assert rerun.returncode == 0 and "skipped (already committed): 3" in rerun.stdout
    strict = _cli(
        "run",
        str(path),
        "--set",
        "limits.max_error_rate=0.1",
        "--set",
        f"sinks.0.path={tmp_path / 'lake2'}",
    )
    assert strict.returncode == 3 and "above the limit" in strict.stderr
    bad = _cli("run", str(path), "--set", "cluster.workers=0")
    assert bad.returncode == 2 and "cluster.workers" in bad.stderr
    valid = _cli("validate", str(path))
    assert valid.returncode == 0 and PipelineSpec.from_yaml(valid.stdout) == spec
