"""Incremental runs from a PACS: a watermark narrows the next run to new studies."""

from __future__ import annotations

from datetime import UTC, date, datetime
from pathlib import Path

import pydicom
from pydicom.uid import generate_uid

from dicomflow.api import read_lake
from dicomflow.api import run as run_spec
from dicomflow.lake.layout import LakeLayout
from dicomflow.lake.watermark import Watermark
from dicomflow.schemas.spec import DimseSource, LakeSink, PipelineSpec
from tests.conftest import PYDICOM_TEST_FILES, require
from tests.peers.orthanc import Orthanc, orthanc_binary, running_orthanc


def _new_study_today(tmp_path: Path) -> Path:
    ds = pydicom.dcmread(PYDICOM_TEST_FILES / "CT_small.dcm")
    ds.StudyInstanceUID, ds.SeriesInstanceUID = generate_uid(), generate_uid()
    ds.SOPInstanceUID = ds.file_meta.MediaStorageSOPInstanceUID = generate_uid()
    ds.StudyDate = datetime.now(UTC).strftime("%Y%m%d")
    path = tmp_path / "today.dcm"
    ds.save_as(path)
    return path


def _nightly(url: str, lake: Path, **settings: object) -> PipelineSpec:
    """An incremental spec over every patient of the PACS at ``url``."""
    return PipelineSpec(
        name="nightly-pacs",
        source=DimseSource(url=url, query={"PatientID": "*"}),
        sinks=[LakeSink(path=str(lake))],
        incremental=True,
        **settings,
    )


def _first_run(server: Orthanc, lake: Path) -> PipelineSpec:
    """CT_small and MR_small in the PACS, and a first incremental run into ``lake``."""
    for name in ("CT_small.dcm", "MR_small.dcm"):
        assert server.upload(PYDICOM_TEST_FILES / name)
    spec = _nightly(server.url, lake)
    first = run_spec(spec, progress=False)
    assert first.rows == 2 and first.accounted
    return spec


def test_incremental_spec_fetches_only_studies_since_the_watermark(
    tmp_path: Path, client: object
) -> None:
    require(orthanc_binary() is not None, "Orthanc (Debian package orthanc)")
    lake = tmp_path / "lake"
    with running_orthanc(tmp_path / "pacs") as server:
        spec = _first_run(server, lake)
        mark = Watermark(LakeLayout(str(lake)), "nightly-pacs").read()
        assert mark is not None and mark < datetime.now(UTC).date()
        assert server.upload(_new_study_today(tmp_path))
        second = run_spec(spec, progress=False)
    # Only the new study matched the narrowed query; the old ones were not even listed.
    assert (second.files, second.rows) == (1, 1)


def _late_arrivals(tmp_path: Path, study_uid: str) -> dict[str, Path]:
    """A new study dated 1999, and a new instance in the study ``study_uid`` (2004)."""
    old_dated = pydicom.dcmread(PYDICOM_TEST_FILES / "MR_small.dcm")
    old_dated.StudyInstanceUID, old_dated.SeriesInstanceUID = generate_uid(), generate_uid()
    old_dated.StudyDate = "19990101"
    added = pydicom.dcmread(PYDICOM_TEST_FILES / "CT_small.dcm")
    added.StudyInstanceUID = study_uid
    files = {}
    for name, ds in (("old-dated", old_dated), ("added", added)):
        ds.SOPInstanceUID = ds.file_meta.MediaStorageSOPInstanceUID = generate_uid()
        files[str(ds.SOPInstanceUID)] = tmp_path / f"{name}.dcm"
        ds.save_as(files[str(ds.SOPInstanceUID)])
    return files


def test_late_arrivals_are_fetched_by_comparing_study_counts(
    tmp_path: Path, client: object
) -> None:
    """Between two incremental runs the archive gains an old-dated study and a new
    instance in a study the lake holds. The StudyDate watermark alone fetches neither;
    with late_arrivals the next run fetches exactly those two instances, and a run
    after that fetches nothing."""
    require(orthanc_binary() is not None, "Orthanc (Debian package orthanc)")
    lake = tmp_path / "lake"
    with running_orthanc(tmp_path / "pacs") as server:
        spec = _first_run(server, lake)
        study = str(pydicom.dcmread(PYDICOM_TEST_FILES / "CT_small.dcm").StudyInstanceUID)
        late = _late_arrivals(tmp_path, study)
        for path in late.values():
            assert server.upload(path)
        watermark_only = run_spec(spec, progress=False)
        assert watermark_only.files == 0  # the defect: both arrivals are older than the mark
        catching = spec.model_copy(update={"late_arrivals": True})
        second = run_spec(catching, progress=False)
        third = run_spec(catching, progress=False)
    # the CT study is planned again whole: its first instance is there, and skipped
    assert (second.rows, second.skipped, second.errors) == (2, 1, 0)
    assert _sop_uids_of_run(lake, second.run_id) == set(late)
    assert third.rows == 0
    rows = read_lake(str(lake)).instances(columns=["SOPInstanceUID"]).column(0).to_pylist()
    assert len(rows) == len(set(rows)) == 4


def _sop_uids_of_run(lake: Path, run_id: str) -> set[str]:
    table = read_lake(str(lake)).instances(columns=["SOPInstanceUID", "run_id"])
    return {r["SOPInstanceUID"] for r in table.to_pylist() if r["run_id"] == run_id}


def test_late_arrivals_look_back_skips_older_studies(tmp_path: Path, client: object) -> None:
    """With a look-back reaching back to 2000, the study dated 1999 is not compared (so
    not fetched), while the instance added to the study dated 2004 is."""
    require(orthanc_binary() is not None, "Orthanc (Debian package orthanc)")
    with running_orthanc(tmp_path / "pacs") as server:
        assert server.upload(PYDICOM_TEST_FILES / "CT_small.dcm")
        today = datetime.now(UTC).date()
        spec = _nightly(
            server.url,
            tmp_path / "lake",
            late_arrivals=True,
            look_back_days=(today - date(2000, 1, 1)).days,
        )
        assert run_spec(spec, progress=False).rows == 1
        study = str(pydicom.dcmread(PYDICOM_TEST_FILES / "CT_small.dcm").StudyInstanceUID)
        late = _late_arrivals(tmp_path, study)
        for path in late.values():
            assert server.upload(path)
        second = run_spec(spec, progress=False)
    added = next(uid for uid, path in late.items() if path.name == "added.dcm")
    assert _sop_uids_of_run(tmp_path / "lake", second.run_id) == {added}


def test_late_arrivals_needs_an_incremental_run_that_keeps_retrieved_files() -> None:
    import pytest
    from pydantic import ValidationError

    from dicomflow.schemas.spec import AnonymizeOperator, FlattenOperator

    source = DimseSource(url="dimse://PACS@127.0.0.1:104", query={"PatientID": "*"})
    sinks = [LakeSink(path="lake")]
    with pytest.raises(ValidationError, match="belongs to incremental runs"):
        PipelineSpec(name="n", source=source, sinks=sinks, late_arrivals=True)
    with pytest.raises(ValidationError, match="de-identified lake does not keep"):
        PipelineSpec(
            name="n",
            source=source,
            sinks=sinks,
            operators=[AnonymizeOperator(key_env="K"), FlattenOperator()],
            incremental=True,
            late_arrivals=True,
        )
