"""The run ledger: reruns skip committed work, orphans are never read, series are rebuilt."""

from __future__ import annotations

import os
import shutil
import sys
from pathlib import Path

import pyarrow.parquet as pq
import pytest
import zarr

from dicomflow.api import ingest, read_lake, run_scan
from dicomflow.lake import ledger as ledger_module
from dicomflow.lake.layout import LakeLayout
from dicomflow.lake.ledger import Ledger, local_temporaries
from tests.conftest import PYDICOM_TEST_FILES, REPO

sys.path.insert(0, str(REPO / "benchmarks"))
from synth import write_ct_series


def _sop_uids(lake: Path) -> list[str]:
    return read_lake(str(lake)).instances(columns=["SOPInstanceUID"]).column(0).to_pylist()


def test_rerun_skips_everything_and_adds_nothing(tmp_path: Path, client: object) -> None:
    src = tmp_path / "src"
    write_ct_series(src, 12, per_series=6, rows=16, cols=16)
    lake = tmp_path / "lake"
    first = ingest([str(src)], out=str(lake), pixels=True, client=client)
    parts_before = sorted(p.name for p in (lake / "instances").iterdir())
    second = ingest([str(src)], out=str(lake), pixels=True, client=client)
    assert (first.rows, first.skipped) == (12, 0)
    assert (second.rows, second.errors, second.skipped) == (0, 0, 12) and second.accounted
    assert sorted(p.name for p in (lake / "instances").iterdir()) == parts_before
    uids = _sop_uids(lake)
    assert len(uids) == len(set(uids)) == 12


def test_new_inputs_only_are_processed_and_a_grown_series_is_rebuilt(
    tmp_path: Path, client: object
) -> None:
    src = tmp_path / "src"
    paths = write_ct_series(src, 8, per_series=8, rows=16, cols=16)
    held_back = tmp_path / "later.dcm"
    shutil.move(paths[-1], held_back)
    lake = tmp_path / "lake"
    ingest([str(src)], out=str(lake), pixels=True, client=client)
    assert read_lake(str(lake)).series().column("frames").to_pylist() == [7]
    shutil.move(held_back, paths[-1])
    again = ingest([str(src)], out=str(lake), pixels=True, client=client)
    assert again.rows == 8 and again.skipped == 0  # the grown series is assembled again
    series = read_lake(str(lake)).series()
    assert series.num_rows == 1 and series.column("frames").to_pylist() == [8]
    uids = _sop_uids(lake)
    assert len(uids) == len(set(uids)) == 8
    group = zarr.open_group(str(lake / series.column("zarr_path")[0].as_py()), mode="r")
    assert group["0"].shape[0] == 8


def test_orphan_parts_are_never_read_and_are_removed_by_the_next_run(
    tmp_path: Path, client: object
) -> None:
    src = tmp_path / "src"
    src.mkdir()
    for name in ("CT_small.dcm", "MR_small.dcm"):
        shutil.copy(PYDICOM_TEST_FILES / name, src / name)
    lake = tmp_path / "lake"
    run_scan([str(src)], out=str(lake), client=client)
    committed = read_lake(str(lake)).instances()
    # What a run killed between writing a part and committing it leaves behind:
    orphan = lake / "instances" / "part-orphan.parquet"
    pq.write_table(committed, orphan)
    assert read_lake(str(lake)).instances().num_rows == committed.num_rows
    (src / "rtplan.dcm").write_bytes((PYDICOM_TEST_FILES / "rtplan.dcm").read_bytes())
    summary = run_scan([str(src)], out=str(lake), client=client)
    assert (summary.rows, summary.skipped) == (1, 2)
    assert not orphan.exists()
    assert read_lake(str(lake)).instances().num_rows == 3


def test_the_ledger_records_identities_not_paths(tmp_path: Path, client: object) -> None:
    src = tmp_path / "patient-SMITH-JOHN"
    src.mkdir()
    shutil.copy(PYDICOM_TEST_FILES / "CT_small.dcm", src / "SMITH.dcm")
    lake = tmp_path / "lake"
    run_scan([str(src)], out=str(lake), client=client)
    entries = Ledger(LakeLayout(str(lake))).entries()
    assert len(entries) == 1 and len(entries[0].inputs) == 1
    assert entries[0].versions["dicomflow"] and entries[0].config
    for path in (lake / "_ledger").rglob("*.json"):
        assert "SMITH" not in path.read_text()
    assert entries[0].parts["instances"].startswith("instances/")


def test_an_anonymized_series_that_grows_is_deidentified_again_whole(
    tmp_path: Path, client: object
) -> None:
    from dicomflow.anonymize.keys import SecretKey
    from dicomflow.api import AnonymizeSettings, deidentifier

    src = tmp_path / "src"
    paths = write_ct_series(src, 6, per_series=6, rows=16, cols=16)
    held_back = tmp_path / "later.dcm"
    shutil.move(paths[-1], held_back)
    settings = AnonymizeSettings(deidentifier(key=SecretKey(b"g" * 40)))
    lake = tmp_path / "lake"
    first = ingest([str(src)], out=str(lake), pixels=True, client=client, anonymize=settings)
    assert (first.rows, first.errors) == (5, 0), first.error_codes
    again = ingest([str(src)], out=str(lake), pixels=True, client=client, anonymize=settings)
    assert (again.rows, again.skipped) == (0, 5)
    shutil.move(held_back, paths[-1])
    grown = ingest([str(src)], out=str(lake), pixels=True, client=client, anonymize=settings)
    assert (grown.rows, grown.skipped) == (6, 0)
    series = read_lake(str(lake)).series()
    assert series.num_rows == 1 and series.column("frames").to_pylist() == [6]
    uids = _sop_uids(lake)
    assert len(uids) == len(set(uids)) == 6 and all(u.startswith("2.25.") for u in uids)


def test_a_changed_input_replaces_its_old_row_without_duplicates(
    tmp_path: Path, client: object
) -> None:
    """A file rewritten in place (new size and time, same name) supersedes its old row, in a
    series and as a loose input, and the other inputs of its old partition stay once."""
    import pydicom

    src = tmp_path / "src"
    paths = write_ct_series(src, 6, per_series=6, rows=16, cols=16)
    for name in ("rtplan.dcm", "MR_small.dcm"):  # loose: no pixels, or a one-slice series
        shutil.copy(PYDICOM_TEST_FILES / name, src / name)
    lake = tmp_path / "lake"
    for pixels in (False, True):
        out = lake / str(pixels)
        first = ingest([str(src)], out=str(out), pixels=pixels, client=client)
        assert first.rows == 8
        for path in (paths[2], src / "rtplan.dcm"):
            ds = pydicom.dcmread(path)
            ds.StudyDescription = f"edited {pixels}"
            ds.save_as(path)
        again = ingest([str(src)], out=str(out), pixels=pixels, client=client)
        assert again.accounted and again.errors == 0
        table = read_lake(str(out)).instances(columns=["SOPInstanceUID", "StudyDescription"])
        uids = table.column(0).to_pylist()
        assert len(uids) == len(set(uids)) == 8, pixels
        edited = {pydicom.dcmread(p).SOPInstanceUID for p in (paths[2], src / "rtplan.dcm")}
        descriptions = dict(zip(uids, table.column(1).to_pylist(), strict=True))
        assert {descriptions[u] for u in edited} == {f"edited {pixels}"}


def test_temporaries_at_any_depth_are_swept_and_ordinary_names_kept(
    tmp_path: Path, client: object
) -> None:
    src = tmp_path / "src"
    src.mkdir()
    shutil.copy(PYDICOM_TEST_FILES / "CT_small.dcm", src / "CT_small.dcm")
    lake = tmp_path / "lake"
    run_scan([str(src)], out=str(lake), client=client)
    deep = lake / "pixels.zarr" / "1.2.3" / "4.5.6"
    deep.mkdir(parents=True)
    left = [
        lake / "instances" / ".part-x.0123.tmp",  # a table part being written
        deep / ".0.abcd.tmp",  # a stack being built (a folder with chunks)
        deep / ".0.abcd.old",  # a stack being replaced
        lake / "pixels.zarr" / ".scratch-part-1-ab.tmp",  # early-decoding scratch
    ]
    for path in left[:1] + left[2:3]:
        path.write_bytes(b"x")
    for path in (left[1], left[3]):
        (path / "c").mkdir(parents=True)
        (path / "c" / "0").write_bytes(b"x")
    kept = [deep / "data.tmp", deep / ".hidden"]  # not temporaries by their names
    for path in kept:
        path.write_bytes(b"x")
    assert Ledger(LakeLayout(str(lake))).remove_orphans() == len(left)
    assert not any(path.exists() for path in left)
    assert all(path.exists() for path in kept)


def test_the_sweep_does_not_walk_into_stacks(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A stack's chunk files (one a frame) are most of a pixel lake, and nothing temporary
    is ever written inside a committed stack: the sweep lists the folders around the
    stacks, never a stack itself."""
    lake = tmp_path / "lake"
    series = lake / "pixels.zarr" / "1.2.3" / "4.5.6"
    stack = series / "0"
    (stack / "0" / "c").mkdir(parents=True)
    for z in range(50):
        (stack / "0" / "c" / str(z)).write_bytes(b"x")
    inside = stack / ".not-ours.tmp"  # never written by dicomflow: left alone
    inside.write_bytes(b"x")
    renders = lake / "renders" / "1.2.3" / "4.5.6"
    renders.mkdir(parents=True)
    beside = [series / ".0.abcd.tmp", renders / ".x.png.ab.tmp", lake / "_runs" / ".r.tmp"]
    for path in beside:
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(b"x")
    listed: list[str] = []
    real_scandir = os.scandir

    def scandir(folder: str) -> object:
        listed.append(os.path.relpath(folder, lake))
        return real_scandir(folder)

    monkeypatch.setattr(ledger_module.os, "scandir", scandir)
    assert sorted(local_temporaries(str(lake))) == sorted(str(p) for p in beside)
    assert "pixels.zarr/1.2.3/4.5.6" in listed and "renders/1.2.3/4.5.6" in listed
    assert not [folder for folder in listed if folder.startswith("pixels.zarr/1.2.3/4.5.6/")]
    assert inside.exists()
