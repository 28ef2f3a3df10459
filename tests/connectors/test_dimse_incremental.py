"""Incremental runs from a PACS: a watermark narrows the next run to new studies."""

from __future__ import annotations

from datetime import UTC, datetime
from pathlib import Path

import pydicom
from pydicom.uid import generate_uid

from dicomflow.api import run as run_spec
from dicomflow.lake.layout import LakeLayout
from dicomflow.lake.watermark import Watermark
from dicomflow.schemas.spec import DimseSource, LakeSink, PipelineSpec
from tests.conftest import PYDICOM_TEST_FILES, require
from tests.peers.orthanc import orthanc_binary, running_orthanc


def _new_study_today(tmp_path: Path) -> Path:
    ds = pydicom.dcmread(PYDICOM_TEST_FILES / "CT_small.dcm")
    ds.StudyInstanceUID, ds.SeriesInstanceUID = generate_uid(), generate_uid()
    ds.SOPInstanceUID = ds.file_meta.MediaStorageSOPInstanceUID = generate_uid()
    ds.StudyDate = datetime.now(UTC).strftime("%Y%m%d")
    path = tmp_path / "today.dcm"
    ds.save_as(path)
    return path


def test_incremental_spec_fetches_only_studies_since_the_watermark(
    tmp_path: Path, client: object
) -> None:
    require(orthanc_binary() is not None, "Orthanc (Debian package orthanc)")
    lake = tmp_path / "lake"
    with running_orthanc(tmp_path / "pacs") as server:
        for name in ("CT_small.dcm", "MR_small.dcm"):
            assert server.upload(PYDICOM_TEST_FILES / name)
        spec = PipelineSpec(
            name="nightly-pacs",
            source=DimseSource(url=server.url, query={"PatientID": "*"}),
            sinks=[LakeSink(path=str(lake))],
            incremental=True,
        )
        first = run_spec(spec, progress=False)
        assert first.rows == 2 and first.accounted
        mark = Watermark(LakeLayout(str(lake)), "nightly-pacs").read()
        assert mark is not None and mark < datetime.now(UTC).date()
        assert server.upload(_new_study_today(tmp_path))
        second = run_spec(spec, progress=False)
    # Only the new study matched the narrowed query; the old ones were not even listed.
    assert (second.files, second.rows) == (1, 1)
