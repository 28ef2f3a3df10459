"""DIMSE against a real Orthanc: C-ECHO and C-FIND, through the API and the CLI."""

from __future__ import annotations

import json
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pyarrow.parquet as pq
import pytest

from dicomflow.connectors.dimse import DimseAddress, DimseOptions, c_echo, c_find, find_table
from dicomflow.connectors.dimse.association import DimseError
from dicomflow.errors import ConfigError
from tests.conftest import PYDICOM_TEST_FILES, require
from tests.peers.orthanc import Orthanc, free_port, orthanc_binary, running_orthanc

UPLOADED = ["CT_small.dcm", "MR_small.dcm", "rtplan.dcm", "JPEG2000.dcm", "SC_rgb_rle.dcm"]


@pytest.fixture(scope="module")
def orthanc(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Orthanc]:
    require(orthanc_binary() is not None, "Orthanc (Debian package orthanc)")
    with running_orthanc(tmp_path_factory.mktemp("orthanc")) as server:
        for name in UPLOADED:
            assert server.upload(PYDICOM_TEST_FILES / name)
        yield server


def test_address_parsing_and_secrets_stay_out_of_urls() -> None:
    address = DimseAddress.parse("dimse://PACS@10.0.0.1:104")
    assert (address.called_ae, address.host, address.port) == ("PACS", "10.0.0.1", 104)
    with pytest.raises(ConfigError, match="never in the URL"):
        DimseAddress.parse("dimse://PACS:secret@10.0.0.1:104")
    with pytest.raises(ConfigError):
        DimseAddress.parse("http://PACS@10.0.0.1:104")
    with pytest.raises(ConfigError):
        DimseOptions(calling_ae="THIS-AE-TITLE-IS-TOO-LONG")


def test_c_echo_succeeds_and_reports_contexts(orthanc: Orthanc) -> None:
    result = c_echo(DimseAddress.parse(orthanc.url))
    assert result.round_trip_ms > 0
    assert any(c.startswith("1.2.840.10008.1.1 ") for c in result.contexts)


def test_c_echo_to_a_closed_port_is_a_clear_error() -> None:
    address = DimseAddress("NOBODY", "127.0.0.1", free_port())
    with pytest.raises(DimseError, match="could not be reached"):
        c_echo(address, DimseOptions(connect_timeout=2, acse_timeout=2))


def test_wrong_called_ae_is_rejected(orthanc: Orthanc) -> None:
    """Every time: Orthanc closes the connection as it rejects, and pynetdicom then
    reported an abort for about 1 in 75 rejections (the A-ASSOCIATE-RJ it had read
    says otherwise)."""
    address = DimseAddress("NOT-ORTHANC", "127.0.0.1", orthanc.dicom_port)
    for _ in range(300):
        with pytest.raises(DimseError, match="rejected the association"):
            c_echo(address)


def test_study_level_find_matches_orthancs_own_index(orthanc: Orthanc) -> None:
    table = find_table(DimseAddress.parse(orthanc.url), "study", {})
    studies = orthanc.get("/studies")
    assert table.num_rows == len(studies)  # type: ignore[arg-type]
    ours = set(table.column("StudyInstanceUID").to_pylist())
    theirs = {
        orthanc.get(f"/studies/{s}")["MainDicomTags"]["StudyInstanceUID"]  # type: ignore[index]
        for s in studies
    }  # type: ignore[union-attr]
    assert ours == theirs
    assert table.schema.field("StudyDate").type.equals(__import__("pyarrow").date32())


def test_wildcards_and_date_ranges(orthanc: Orthanc) -> None:
    address = DimseAddress.parse(orthanc.url)
    ct = find_table(address, "series", {"Modality": "CT"})
    assert set(ct.column("Modality").to_pylist()) == {"CT"}
    dated = find_table(address, "study", {"StudyDate": "19000101-20991231"})
    undated = find_table(address, "study", {"StudyDate": "-18991231"})
    assert dated.num_rows >= 1 and undated.num_rows == 0
    images = find_table(address, "image", {})
    assert images.num_rows == len(UPLOADED)
    uids = sorted(images.column("SOPInstanceUID").to_pylist())[:2]
    listed = find_table(address, "image", {"SOPInstanceUID": "\\".join(uids)})
    assert sorted(listed.column("SOPInstanceUID").to_pylist()) == uids


def test_limit_cancels_after_n_matches(orthanc: Orthanc) -> None:
    matches = list(c_find(DimseAddress.parse(orthanc.url), "image", {}, limit=2))
    assert len(matches) == 2


def _cli(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "dicomflow", *args], capture_output=True, text=True, timeout=120
    )


def test_cli_echo_and_query(orthanc: Orthanc, tmp_path: Path) -> None:
    ok = _cli("echo", orthanc.url, "-v")
    assert ok.returncode == 0, ok.stderr
    assert "success in" in ok.stdout and "accepted 1.2.840.10008.1.1" in ok.stdout
    down = _cli("echo", f"dimse://X@127.0.0.1:{free_port()}")
    assert down.returncode == 1 and "C-ECHO failed" in down.stderr
    out = tmp_path / "studies.parquet"
    found = _cli("query", orthanc.url, "--level", "study", "-q", "PatientName=*", "--out", str(out))
    assert found.returncode == 0, found.stderr
    assert pq.read_table(out).num_rows >= 1
    bad = _cli("query", orthanc.url, "-q", "NotAKeyword=1", "--out", str(out))
    assert bad.returncode == 2 and "not a DICOM keyword" in bad.stderr


def test_c_get_stores_every_instance_whole(orthanc: Orthanc, tmp_path: Path) -> None:
    import pydicom

    from dicomflow.connectors.dimse.get import UNCOMPRESSED, c_get

    address = DimseAddress.parse(orthanc.url)
    images = find_table(address, "image", {}, return_keys=["SOPClassUID"])
    expected = dict(
        zip(
            images.column("SOPInstanceUID").to_pylist(),
            images.column("SOPClassUID").to_pylist(),
            strict=True,
        )
    )
    studies = set(images.column("StudyInstanceUID").to_pylist())
    received: dict[str, Path] = {}
    for study in sorted(studies):
        result = c_get(
            address,
            "study",
            {"StudyInstanceUID": study},
            tmp_path / "in",
            sop_classes=list(expected.values()),
        )
        assert result.failed == 0
        received.update(result.received)
    assert set(received) == set(expected)
    originals = {pydicom.dcmread(PYDICOM_TEST_FILES / n).SOPInstanceUID: n for n in UPLOADED}
    for sop_uid, path in received.items():
        ours = pydicom.dcmread(path)
        original = pydicom.dcmread(PYDICOM_TEST_FILES / originals[sop_uid])
        assert ours.SOPInstanceUID == sop_uid
        syntax = original.file_meta.TransferSyntaxUID
        if syntax.is_compressed:  # sent as stored: its own compressed context
            assert ours.file_meta.TransferSyntaxUID == syntax
        else:  # either little-endian uncompressed syntax carries the same values
            assert ours.file_meta.TransferSyntaxUID in UNCOMPRESSED
        if "PixelData" in original:  # the instance as the PACS holds it, not transcoded
            assert ours.PixelData == original.PixelData
    assert not [p for p in (tmp_path / "in").iterdir() if p.name.startswith(".")]


def test_c_get_without_expected_classes_is_a_config_error(orthanc: Orthanc, tmp_path: Path) -> None:
    from dicomflow.connectors.dimse.get import c_get

    with pytest.raises(ConfigError):
        c_get(DimseAddress.parse(orthanc.url), "study", {}, tmp_path, sop_classes=[])


def test_ingest_from_the_pacs_writes_the_lake_and_reruns_fetch_nothing(
    orthanc: Orthanc, tmp_path: Path, client: object
) -> None:
    import pydicom

    import dicomflow

    study = pydicom.dcmread(PYDICOM_TEST_FILES / "CT_small.dcm").StudyInstanceUID
    out = tmp_path / "lake"
    summary = dicomflow.ingest(
        [orthanc.url],
        out=str(out),
        query={"StudyInstanceUID": study},
        client=client,
        progress=False,
        pixels=True,
    )
    assert summary.errors == 0 and summary.rows >= 1
    lake = dicomflow.read_lake(str(out))
    assert set(lake.instances(columns=["StudyInstanceUID"]).column(0).to_pylist()) == {study}
    assert lake.series().num_rows >= 1  # pixels written from what the PACS sent
    retrieved = sorted((out / "_retrieved").rglob("*.dcm"))
    stamps = [p.stat().st_mtime_ns for p in retrieved]
    again = dicomflow.ingest(
        [orthanc.url],
        out=str(out),
        query={"StudyInstanceUID": study},
        client=client,
        progress=False,
        pixels=True,
    )
    # Nothing fetched again, nothing re-ingested (the ledger holds it), nothing duplicated.
    assert (again.rows, again.skipped) == (0, summary.rows) and again.accounted
    assert [p.stat().st_mtime_ns for p in sorted((out / "_retrieved").rglob("*.dcm"))] == stamps
    uids = dicomflow.read_lake(str(out)).instances(columns=["SOPInstanceUID"]).column(0)
    assert len(uids) == summary.rows == len(set(uids.to_pylist()))


@pytest.mark.parametrize(
    ("instances", "associations", "sizes"),
    [
        (999, 2, [999]),
        (1000, 2, [500, 500]),
        (1000, 1, [1000]),
        (1601, 4, [534, 534, 533]),
        (2001, 4, [501, 500, 500, 500]),
    ],
)
def test_a_large_series_is_cut_into_parts_of_its_own_instances(
    instances: int, associations: int, sizes: list[int]
) -> None:
    from dicomflow.connectors.peers import SeriesRequest
    from dicomflow.pipelines.retrieve import series_parts

    request = SeriesRequest(
        "1.2", "1.2.3", {f"1.2.3.{i}": "1.2.840.10008.5.1.4.1.1.2" for i in range(instances)}
    )
    parts = series_parts(request, associations)
    assert [len(p.instances) for p in parts] == sizes
    assert {(p.study_uid, p.series_uid) for p in parts} == {("1.2", "1.2.3")}
    joined = [uid for p in parts for uid in p.instances]
    assert sorted(joined) == sorted(request.instances) and len(set(joined)) == instances


def test_a_part_is_fetched_by_its_instances_never_as_the_whole_series(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import contextlib

    from dicomflow.connectors.peers import SeriesRequest
    from dicomflow.lake.layout import LakeLayout
    from dicomflow.pipelines import retrieve
    from dicomflow.pipelines.retrieve import retrieve_series

    # outside a cluster: no cluster-wide semaphore to hold
    monkeypatch.setattr(retrieve, "associations_limit", lambda *_: contextlib.nullcontext)

    asked: list[object] = []

    class Recording:  # a peer that writes what it is asked for, and notes how it was asked
        def __str__(self) -> str:
            return "dimse://RECORDING@127.0.0.1:104"

        def plan(self, query: object) -> list[SeriesRequest]:
            return []

        def fetch_series(self, request: SeriesRequest, folder: Path) -> dict[str, Path]:
            asked.append("series")
            return self.fetch_instances(request, folder, list(request.instances))

        def fetch_instances(
            self, request: SeriesRequest, folder: Path, uids: list[str]
        ) -> dict[str, Path]:
            asked.append(sorted(uids))
            folder.mkdir(parents=True, exist_ok=True)
            for uid in uids:
                (folder / f"{uid}.dcm").write_bytes(b"x")
            return {uid: folder / f"{uid}.dcm" for uid in uids}

    series = SeriesRequest("1.2", "1.2.3", {"1.2.3.1": "c", "1.2.3.2": "c", "1.2.3.3": "c"})
    part = SeriesRequest("1.2", "1.2.3", {"1.2.3.1": "c", "1.2.3.2": "c"})
    layout = LakeLayout(str(tmp_path / "lake"))
    got = retrieve_series(Recording(), part, layout, 2, whole=False)  # type: ignore[arg-type]
    assert asked == [["1.2.3.1", "1.2.3.2"]] and set(got) == set(part.instances)
    got = retrieve_series(Recording(), series, layout, 2)  # type: ignore[arg-type]
    assert asked[1:] == [["1.2.3.3"]]  # the rest of the series, by instance: none twice


def test_a_series_fetched_in_parts_arrives_whole(
    tmp_path: Path, client: object, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Two parts by SOP Instance UID, side by side, bring every instance of the series,
    byte for byte as the PACS holds it, and the lake's rows are the files'."""
    import pydicom
    from distributed import get_task_stream

    import dicomflow
    from dicomflow.pipelines import retrieve
    from tests.helpers import ct_series

    require(orthanc_binary() is not None, "Orthanc (Debian package orthanc)")
    monkeypatch.setattr(retrieve, "PART_INSTANCES", 3)
    files = ct_series(tmp_path / "series", 7)
    originals = {str(pydicom.dcmread(f).SOPInstanceUID): f for f in files}
    with running_orthanc(tmp_path / "pacs") as server:
        assert all(server.upload(f) for f in files)
        study = str(pydicom.dcmread(files[0]).StudyInstanceUID)
        with get_task_stream(client) as stream:  # type: ignore[arg-type]
            summary = dicomflow.ingest(
                [server.url],
                out=str(tmp_path / "lake"),
                query={"StudyInstanceUID": study},
                client=client,
                progress=False,
                max_associations=2,
            )
    fetches = {t["key"] for t in stream.data if "retrieve" in str(t["key"])}
    assert len(fetches) == 2  # 7 instances, parts of at least 3, two associations
    assert (summary.rows, summary.errors) == (7, 0)
    retrieved = {p.stem: p for p in (tmp_path / "lake" / "_retrieved").rglob("*.dcm")}
    assert set(retrieved) == set(originals)
    for uid, path in retrieved.items():
        assert pydicom.dcmread(path).PixelData == pydicom.dcmread(originals[uid]).PixelData
    rows = dicomflow.read_lake(str(tmp_path / "lake")).instances(columns=["SOPInstanceUID"])
    assert sorted(rows.column(0).to_pylist()) == sorted(originals)


@pytest.mark.integration
def test_instances_the_pacs_cannot_send_become_not_retrieved(
    tmp_path: Path, client: object
) -> None:
    """Orthanc 1.10 cannot transcode JPEG XL, and we propose no JPEG XL context."""
    import dicomflow
    from tests.conftest import CORPUS

    jxl = CORPUS / "kaitakeradiology__orthanc-jxl" / "test_ct1_jxl.dcm"
    require(jxl.exists() and orthanc_binary() is not None, "the corpus JPEG XL file and Orthanc")
    import pydicom

    with running_orthanc(tmp_path / "pacs") as server:
        assert server.upload(jxl)
        study = pydicom.dcmread(jxl, stop_before_pixels=True).StudyInstanceUID
        summary = dicomflow.ingest(
            [server.url],
            out=str(tmp_path / "lake"),
            pixels=False,
            query={"StudyInstanceUID": study},
            client=client,
            progress=False,
        )
    assert summary.error_codes.get("not_retrieved") == 1
    errors = dicomflow.read_lake(str(tmp_path / "lake")).errors().to_pylist()
    assert [e["code"] for e in errors] == ["not_retrieved"]
    assert errors[0]["source"].startswith(server.url)
    # The run's report counts the row the CLI summary counts (it used to leave it out).
    report = json.loads(Path(str(summary.report)).read_text())
    assert report["counts"]["error_rows"] == summary.errors == 1
    assert {"stage": "retrieve", "code": "not_retrieved", "count": 1} in report[
        "errors_by_stage_and_code"
    ]


def test_dimse_source_needs_a_query(tmp_path: Path) -> None:
    import dicomflow

    with pytest.raises(ConfigError, match="needs a query"):
        dicomflow.ingest(["dimse://PACS@127.0.0.1:104"], out=str(tmp_path), pixels=True)


def test_cohort_csv_runs_one_find_per_row_and_joins(orthanc: Orthanc, tmp_path: Path) -> None:
    import pydicom

    studies = [
        pydicom.dcmread(PYDICOM_TEST_FILES / n, stop_before_pixels=True).StudyInstanceUID
        for n in ("CT_small.dcm", "MR_small.dcm")
    ]
    cohort = tmp_path / "cohort.csv"
    cohort.write_text(
        "StudyInstanceUID,note\n"
        + "".join(f"{s},x\n" for s in studies)
        + "1.2.3.4.5.6.7.8.9.999,not in the PACS\n"
    )
    out = tmp_path / "cohort.parquet"
    result = _cli(
        "query", orthanc.url, "--level", "study", "--cohort", str(cohort), "--out", str(out)
    )
    assert result.returncode == 0, result.stderr
    found = pq.read_table(out).column("StudyInstanceUID").to_pylist()
    assert sorted(found) == sorted(studies)
    bad = tmp_path / "bad.csv"
    bad.write_text("Name\nx\n")
    refused = _cli("query", orthanc.url, "--cohort", str(bad), "--out", str(out))
    assert refused.returncode == 2 and "cohort CSV needs a column" in refused.stderr


def test_sequence_keys_build_nested_items_and_the_pacs_answers(orthanc: Orthanc) -> None:
    from dicomflow.connectors.dimse.find import c_find, query_dataset

    query = {"ProcedureCodeSequence.CodeValue": "T-04000", "PatientID": "*"}
    ds = query_dataset("study", query, return_keys=("ReferencedStudySequence",))
    assert len(ds.ProcedureCodeSequence) == 1
    assert ds.ProcedureCodeSequence[0].CodeValue == "T-04000"
    assert "ReferencedStudySequence" in ds and len(ds.ReferencedStudySequence) == 0
    with pytest.raises(ConfigError, match="not a sequence"):
        query_dataset("study", {"PatientID.CodeValue": "x"})
    # Orthanc does not implement sequence matching: it answers, ignoring the key.
    plain = list(c_find(DimseAddress.parse(orthanc.url), "study", {"PatientID": "*"}))
    nested = list(c_find(DimseAddress.parse(orthanc.url), "study", query))
    assert len(nested) == len(plain) > 0
