"""The ``sr`` operator in whole runs: the CLI's ``--sr``, a YAML spec, and bad input.

Bad documents are made from a corpus SR with pydicom: a by-reference item pointing
nowhere, a TEXT item without its concept name, and a by-reference item naming its own
ancestor. Each gives one error row of stage ``sr`` and keeps its ``instances`` row
and the rows of its valid items, flagged.
"""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import pyarrow.compute as pc
import pytest

import dicomflow
from dicomflow.sr import extract
from tests.conftest import CORPUS, PYDICOM_TEST_FILES, require
from tests.sr import oracle

BASE = "pydicom__pydicom/test_files/test-SR.dcm"  # DCMTK's example: by-reference items


def _cli(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "dicomflow", *args], capture_output=True, text=True, timeout=300
    )


@pytest.fixture(scope="module")
def sr_folder(tmp_path_factory: pytest.TempPathFactory) -> Path:
    require(CORPUS.exists() and bool(oracle.sr_files()), f"the shared corpus at {CORPUS}")
    folder = tmp_path_factory.mktemp("sr")
    for relative in oracle.sr_files():
        shutil.copy(CORPUS / relative, folder / relative.replace("/", "__"))
    shutil.copy(PYDICOM_TEST_FILES / "CT_small.dcm", folder / "ct.dcm")  # not an SR
    return folder


def _expected(folder: Path) -> tuple[int, int]:
    content = measurements = 0
    for path in folder.iterdir():
        if path.name != "ct.dcm":
            extraction = extract(oracle.read_path(path))
            content += len(extraction.content)
            measurements += len(extraction.measurements)
    return content, measurements


def _check_lake(lake: Path, folder: Path) -> None:
    read = dicomflow.read_lake(str(lake))
    content, measurements = _expected(folder)
    assert read.table("sr_content").num_rows == content
    assert read.table("measurements").num_rows == measurements
    assert read.instances().num_rows == len(list(folder.iterdir()))
    assert read.errors().num_rows == 0
    ct_uid = str(oracle.read_path(folder / "ct.dcm").SOPInstanceUID)
    assert ct_uid not in set(read.table("sr_content").column("SOPInstanceUID").to_pylist())


def test_ingest_sr_from_the_cli(sr_folder: Path, tmp_path: Path) -> None:
    lake = tmp_path / "lake"
    done = _cli("ingest", str(sr_folder), "--out", str(lake), "--sr", "--no-progress")
    assert done.returncode == 0, done.stderr
    _check_lake(lake, sr_folder)
    dose = dicomflow.read_lake(str(lake)).table("measurements")
    events = dose.filter(pc.equal(dose.column("kind"), "dose_event"))
    assert events.num_rows > 0 and pc.max(events.column("ctdivol")).as_py() > 0


def test_sr_from_a_yaml_spec(sr_folder: Path, tmp_path: Path) -> None:
    lake = tmp_path / "lake"
    spec = tmp_path / "spec.yaml"
    spec.write_text(
        f"name: reports\n"
        f"source: {{kind: files, urls: ['{sr_folder}']}}\n"
        f"operators: [{{name: flatten}}, {{name: sr}}]\n"
        f"sinks: [{{kind: lake, path: '{lake}'}}]\n"
        f"cluster: {{workers: 1}}\n"
    )
    done = _cli("run", str(spec), "--no-progress")
    assert done.returncode == 0, done.stderr
    _check_lake(lake, sr_folder)


def _broken(folder: Path) -> dict[str, str]:
    """Three broken documents, each with a fresh SOP Instance UID; name -> UID."""
    made = {}
    for number, name in enumerate(("broken_reference", "missing_concept_name", "cyclic"), 1):
        ds = oracle.read(BASE)
        if name == "broken_reference":  # 1.3.3.1 names 1.3.2: make it name 1.3.99
            ds.ContentSequence[2].ContentSequence[2].ContentSequence[
                0
            ].ReferencedContentItemIdentifier = [1, 3, 99]
        elif name == "missing_concept_name":  # 1.2.1, a TEXT item
            del ds.ContentSequence[1].ContentSequence[0].ConceptNameCodeSequence
        else:  # 1.5.1.1.1 names 1.2.2.1: make it name its own ancestor 1.5
            ds.ContentSequence[4].ContentSequence[0].ContentSequence[0].ContentSequence[
                0
            ].ReferencedContentItemIdentifier = [1, 5]
        ds.SOPInstanceUID = f"1.2.826.0.1.3680043.8.498.{number}"
        ds.save_as(folder / f"{name}.dcm")
        made[name] = ds.SOPInstanceUID
    return made


def test_bad_documents_keep_their_valid_rows_flagged_and_get_one_error_row(
    tmp_path: Path,
) -> None:
    require(CORPUS.exists(), f"the shared corpus at {CORPUS}")
    folder = tmp_path / "src"
    folder.mkdir()
    made = _broken(folder)
    shutil.copy(CORPUS / BASE, folder / "whole.dcm")
    lake = tmp_path / "lake"
    done = _cli("ingest", str(folder), "--out", str(lake), "--sr", "--no-progress")
    assert done.returncode == 0, done.stderr
    read = dicomflow.read_lake(str(lake))

    errors = read.errors().to_pylist()
    assert sorted(Path(e["source"]).stem for e in errors) == sorted(made)
    assert {(e["stage"], e["code"]) for e in errors} == {("sr", "malformed")}
    for error in errors:  # the message names the fault, never a value
        assert Path(error["source"]).stem.split("_")[0] in error["message"]
    instances = {r["SOPInstanceUID"]: r for r in read.instances().to_pylist()}
    whole = str(oracle.read(BASE).SOPInstanceUID)
    assert set(made.values()) | {whole} == set(instances)
    for uid in made.values():
        assert "sr: malformed" in instances[uid]["warnings"]

    rows = read.table("sr_content").to_pylist()
    expected = len(oracle.walk(oracle.read(BASE)))
    for name, uid in made.items():
        mine = {r["path"]: r for r in rows if r["SOPInstanceUID"] == uid}
        assert len(mine) == expected and all(r["flagged"] for r in mine.values())
        problems = {path: r["problem"] for path, r in mine.items() if r["problem"]}
        wanted = {
            "broken_reference": {"1.3.3.1": "broken_reference"},
            "missing_concept_name": {"1.2.1": "missing_concept_name"},
            "cyclic": {"1.5.1.1.1": "cyclic_reference"},
        }[name]
        assert problems == wanted
    assert not any(r["flagged"] for r in rows if r["SOPInstanceUID"] == whole)
