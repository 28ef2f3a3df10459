"""The de-identification proof of ``--anonymize`` runs: a clean run says what it
checked; a value that reaches an output by a path the profile does not cover (a
plugin copying it into its table or its log) fails the run with exit 3, and what
holds it is quarantined, never left live. The planted values are read from the
original files with pydicom, not from anything dicomflow made."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
import textwrap
from pathlib import Path
from typing import Any

import pydicom
import pytest

import dicomflow
from tests.conftest import PYDICOM_TEST_FILES, plugin_env

FILES = ("CT_small.dcm", "MR_small.dcm", "rtstruct.dcm")
KEY = "proof-test-key-0123456789abcdef0123456789"


@pytest.fixture
def sources(tmp_path: Path) -> Path:
    folder = tmp_path / "src"
    folder.mkdir()
    for name in FILES:
        shutil.copy(PYDICOM_TEST_FILES / name, folder / name)
    return folder


def _original(name: str, keyword: str) -> str:
    return str(pydicom.dcmread(PYDICOM_TEST_FILES / name)[keyword].value)


def _run(
    plugin_path: Path, tmp_path: Path, sources: Path, probe: str = ""
) -> tuple[subprocess.CompletedProcess[str], Path]:
    lake = tmp_path / "lake"
    spec = tmp_path / "spec.yaml"
    spec.write_text(
        textwrap.dedent(
            f"""
            name: proof
            source: {{kind: files, urls: ["{sources}"]}}
            operators:
              - {{name: anonymize, key_env: PROOF_KEY}}
              - {{name: flatten}}
              - {{name: sequence_stats}}
            {probe}
            sinks: [{{kind: lake, path: "{lake}"}}]
            cluster: {{workers: 1}}
            """
        ).replace("\n\n", "\n")
    )
    env = {**plugin_env(plugin_path), "PROOF_KEY": KEY}
    command = [sys.executable, "-m", "dicomflow", "run", str(spec), "--no-progress"]
    return subprocess.run(command, env=env, capture_output=True, text=True, timeout=300), lake


def _proof(lake: Path, run: subprocess.CompletedProcess[str]) -> dict[str, Any]:
    reports = sorted(lake.rglob("_runs/*.json"))
    assert reports, run.stderr
    return json.loads(reports[-1].read_text())["deidentification_proof"]


def test_a_clean_run_reports_what_its_proof_checked(
    plugin_path: Path, tmp_path: Path, sources: Path
) -> None:
    run, lake = _run(plugin_path, tmp_path, sources)
    assert run.returncode == 0, run.stderr
    proof = _proof(lake, run)
    assert proof["passed"] and proof["hits"] == [] and proof["quarantined"] == []
    assert proof["values_checked"] > 20  # names, IDs, dates and UIDs of three instances
    # instances, errors, series and sequence_stats parts, the report, the log
    assert proof["outputs_scanned"] >= 4 and proof["bytes_scanned"] > 10_000
    assert "de-identification proof:" in run.stdout and "no removed value" in run.stdout
    assert not (lake / "_quarantine").exists()


@pytest.mark.parametrize(("keyword", "kind"), [("PatientName", "name"), ("StudyDate", "date")])
def test_a_value_a_plugin_copies_into_its_table_fails_the_run(
    plugin_path: Path, tmp_path: Path, sources: Path, keyword: str, kind: str
) -> None:
    value = _original("CT_small.dcm", keyword)
    probe = f"  - {{name: leak_probe, value: '{value}'}}"
    run, lake = _run(plugin_path, tmp_path, sources, probe)
    assert run.returncode == 3, run.stdout + run.stderr
    assert "de-identification proof found" in run.stderr and "quarantined" in run.stderr
    assert value.casefold() not in (run.stdout + run.stderr).casefold()
    proof = _proof(lake, run)
    hits = {hit["output"].split("/")[0]: hit for hit in proof["hits"]}
    assert set(hits) == {"leak_probe"}
    assert hits["leak_probe"]["kinds"] == {kind: hits["leak_probe"]["count"]}
    # The part and the ledger entry that committed it are out of the lake ...
    quarantine = lake / "_quarantine"
    held = {p.relative_to(quarantine).parts[1] for p in quarantine.rglob("*.parquet")}
    assert {"leak_probe", "instances"} <= held
    read = dicomflow.read_lake(str(lake))
    live_notes = (
        read.table("leak_probe").column("note").to_pylist() if "leak_probe" in read.tables() else []
    )
    assert not any(value.casefold() in note.casefold() for note in live_notes)
    # ... so a rerun without the careless plugin redoes those inputs, and passes.
    again, _ = _run(plugin_path, tmp_path, sources)
    assert again.returncode == 0, again.stderr
    assert "skipped (already committed)" not in again.stdout
    assert len(dicomflow.read_lake(str(lake)).instances()) == len(FILES)


def test_a_value_a_plugin_logs_fails_the_run(
    plugin_path: Path, tmp_path: Path, sources: Path
) -> None:
    value = _original("CT_small.dcm", "PatientName")
    probe = f"  - {{name: leak_probe, value: '{value}', table: false, log: true}}"
    run, lake = _run(plugin_path, tmp_path, sources, probe)
    assert run.returncode == 3, run.stdout + run.stderr
    proof = _proof(lake, run)
    assert [hit["output"] for hit in proof["hits"]] == ["log"]
    assert proof["hits"][0]["kinds"] == {"name": proof["hits"][0]["count"]}
