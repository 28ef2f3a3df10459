"""DICOMweb against a real Orthanc (with its DICOMweb plugin): QIDO-RS, WADO-RS and STOW-RS,
through the connector, the pipeline, a spec and the CLI.

The reference is always the original file read by pydicom: what comes back from the
server must equal it, and a lake ingested from the server must equal the lake
ingested from the same files on disk.
"""

from __future__ import annotations

import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pyarrow as pa
import pydicom
import pytest

import dicomflow
from dicomflow.api import run as run_spec
from dicomflow.connectors.dicomweb import DicomwebAddress, DicomwebError, DicomwebOptions
from dicomflow.connectors.dicomweb.qido import search_instances
from dicomflow.connectors.dicomweb.stow import stow
from dicomflow.connectors.dicomweb.wado import retrieve_series
from dicomflow.errors import ConfigError
from dicomflow.schemas import column_specs
from dicomflow.schemas.spec import (
    AnonymizeOperator,
    DicomwebSink,
    DicomwebSource,
    LakeSink,
    PipelineSpec,
    PixelsOperator,
)
from tests.conftest import PYDICOM_TEST_FILES, require
from tests.helpers import ct_series
from tests.peers.orthanc import Orthanc, free_port, orthanc_binary, running_orthanc

SINGLES = ["MR_small.dcm", "JPEG2000.dcm", "SC_rgb_rle.dcm", "rtplan.dcm"]
SLICES = 12
SECONDARY_CAPTURE = "1.2.840.10008.5.1.4.1.1.7"


@pytest.fixture(scope="module")
def files(tmp_path_factory: pytest.TempPathFactory) -> list[Path]:
    root = tmp_path_factory.mktemp("dicomweb-src")
    paths = ct_series(root / "ct", SLICES)
    for name in SINGLES:
        (root / name).write_bytes((PYDICOM_TEST_FILES / name).read_bytes())
        paths.append(root / name)
    return paths


@pytest.fixture(scope="module")
def orthanc(tmp_path_factory: pytest.TempPathFactory, files: list[Path]) -> Iterator[Orthanc]:
    require(orthanc_binary() is not None, "Orthanc (Debian package orthanc)")
    with running_orthanc(tmp_path_factory.mktemp("orthanc"), dicomweb=True) as server:
        for path in files:
            assert server.upload(path)
        yield server


def _uid(path: Path, keyword: str = "SOPInstanceUID") -> str:
    return str(pydicom.dcmread(path, stop_before_pixels=True).get(keyword))


def _orthanc_sop_uids(server: Orthanc) -> set[str]:
    return {
        server.get(f"/instances/{i}/simplified-tags")["SOPInstanceUID"]  # type: ignore[index]
        for i in server.get("/instances")  # type: ignore[union-attr]
    }


def _studies(files: list[Path]) -> str:
    return "\\".join(sorted({_uid(p, "StudyInstanceUID") for p in files}))


def test_address_parsing_keeps_secrets_out_of_urls() -> None:
    address = DicomwebAddress.parse("dicomweb+https://pacs.example.org:8443/dicom-web/")
    assert address.base_url == "https://pacs.example.org:8443/dicom-web"
    assert str(address) == "dicomweb+https://pacs.example.org:8443/dicom-web"
    with pytest.raises(ConfigError, match="never in the URL"):
        DicomwebAddress.parse("dicomweb+https://user:secret@pacs.example.org/dicom-web")
    with pytest.raises(ConfigError):
        DicomwebAddress.parse("https://pacs.example.org/dicom-web")
    with pytest.raises(ConfigError):
        DicomwebOptions(username="u", password_env="P", token_env="T")


def test_qido_finds_what_orthanc_holds(orthanc: Orthanc, files: list[Path]) -> None:
    address = DicomwebAddress.parse(orthanc.dicomweb)
    everything = search_instances(address, {}, DicomwebOptions())
    assert {f.sop_uid for f in everything} == _orthanc_sop_uids(orthanc)
    assert {f.sop_uid for f in everything} == {_uid(p) for p in files}
    classes = {f.sop_uid: f.sop_class_uid for f in everything}
    assert all(classes[_uid(p)] == _uid(p, "SOPClassUID") for p in files)
    mr = search_instances(address, {"Modality": "MR"}, DicomwebOptions())
    assert [f.sop_uid for f in mr] == [_uid(PYDICOM_TEST_FILES / "MR_small.dcm")]
    two = "\\".join(_uid(files[i], "StudyInstanceUID") for i in (0, SLICES))  # a UID list
    listed = search_instances(address, {"StudyInstanceUID": two}, DicomwebOptions())
    assert len(listed) == SLICES + 1
    with pytest.raises(ConfigError, match="unknown query keyword"):
        search_instances(address, {"NotAKeyword": "x"}, DicomwebOptions())


def test_wado_returns_each_file_unchanged_in_its_own_syntax(
    orthanc: Orthanc, files: list[Path], tmp_path: Path
) -> None:
    address = DicomwebAddress.parse(orthanc.dicomweb)
    for original in files[SLICES - 1 :]:  # one CT slice and every single file
        ours = pydicom.dcmread(original)
        got = retrieve_series(
            address,
            DicomwebOptions(),
            str(ours.StudyInstanceUID),
            str(ours.SeriesInstanceUID),
            tmp_path / "wado",
            {str(ours.SOPInstanceUID)},
        )
        theirs = pydicom.dcmread(got[str(ours.SOPInstanceUID)])
        assert theirs.file_meta.TransferSyntaxUID == ours.file_meta.TransferSyntaxUID
        assert theirs == ours  # every element, pixel data included
    assert not list((tmp_path / "wado").glob(".*"))  # no temporary left


def _typed(table: pa.Table) -> list[dict]:
    keywords = [spec.keyword for spec in column_specs()]
    return sorted(table.select(keywords).to_pylist(), key=lambda r: r["SOPInstanceUID"])


def test_ingest_from_dicomweb_equals_ingest_from_files(
    orthanc: Orthanc, files: list[Path], tmp_path: Path, client: object
) -> None:
    remote = tmp_path / "remote"
    summary = dicomflow.ingest(
        [orthanc.dicomweb],
        out=str(remote),
        query={"StudyInstanceUID": _studies(files)},
        client=client,
        progress=False,
        pixels=True,
    )
    local = tmp_path / "local"
    dicomflow.ingest(
        [str(p) for p in files], out=str(local), client=client, progress=False, pixels=True
    )
    assert summary.errors == 0 and summary.rows == len(files)
    web, disk = dicomflow.read_lake(str(remote)), dicomflow.read_lake(str(local))
    assert _typed(web.instances()) == _typed(disk.instances())
    series = _uid(files[0], "SeriesInstanceUID")
    volume, affine = dicomflow.open_series(web, series, as_numpy=True)
    expected, expected_affine = dicomflow.open_series(disk, series, as_numpy=True)
    assert volume.shape[0] == SLICES
    np.testing.assert_array_equal(volume, expected)
    np.testing.assert_array_equal(affine, expected_affine)


def test_rerun_fetches_only_what_is_missing(
    orthanc: Orthanc, files: list[Path], tmp_path: Path, client: object
) -> None:
    out = tmp_path / "lake"
    query = {"SeriesInstanceUID": _uid(files[0], "SeriesInstanceUID")}
    first = dicomflow.ingest(
        [orthanc.dicomweb], out=str(out), query=query, client=client, progress=False, pixels=True
    )
    assert (first.rows, first.errors) == (SLICES, 0)
    retrieved = sorted((out / "_retrieved").rglob("*.dcm"))
    assert len(retrieved) == SLICES
    stamps = {p: p.stat().st_mtime_ns for p in retrieved}
    again = dicomflow.ingest(
        [orthanc.dicomweb], out=str(out), query=query, client=client, progress=False, pixels=True
    )
    assert (again.rows, again.skipped) == (0, SLICES) and again.accounted
    assert {p: p.stat().st_mtime_ns for p in retrieved} == stamps
    lost = retrieved[:3]  # as if a run had been killed before these arrived
    for path in lost:
        path.unlink()
    third = dicomflow.ingest(
        [orthanc.dicomweb], out=str(out), query=query, client=client, progress=False, pixels=True
    )
    assert third.errors == 0 and all(p.exists() for p in lost)
    assert all(p.stat().st_mtime_ns == stamps[p] for p in retrieved[3:])  # not fetched again
    uids = dicomflow.read_lake(str(out)).instances(columns=["SOPInstanceUID"]).column(0)
    assert len(uids) == SLICES == len(set(uids.to_pylist()))


def test_stow_stores_every_file_unchanged(files: list[Path], tmp_path: Path) -> None:
    require(orthanc_binary() is not None, "Orthanc (Debian package orthanc)")
    with running_orthanc(tmp_path / "target", dicomweb=True) as target:
        outcomes = stow(DicomwebAddress.parse(target.dicomweb), files)
        assert [o.ok for o in outcomes] == [True] * len(files)
        assert {o.sop_instance_uid for o in outcomes} == {_uid(p) for p in files}
        assert _orthanc_sop_uids(target) == {_uid(p) for p in files}
        for instance in target.get("/instances"):  # type: ignore[union-attr]
            stored = target.get_bytes(f"/instances/{instance}/file")
            path = tmp_path / "stored.dcm"
            path.write_bytes(stored)
            theirs = pydicom.dcmread(path)
            ours = pydicom.dcmread(next(p for p in files if _uid(p) == theirs.SOPInstanceUID))
            assert theirs == ours


def test_spec_dicomweb_to_dicomweb_sends_only_deidentified_instances(
    orthanc: Orthanc,
    files: list[Path],
    tmp_path: Path,
    client: object,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("DICOMWEB_TEST_KEY", "k" * 48)
    with running_orthanc(tmp_path / "research", dicomweb=True) as research:
        spec = PipelineSpec(
            name="web-to-web",
            source=DicomwebSource(
                url=orthanc.dicomweb, query={"StudyInstanceUID": _studies(files)}
            ),
            operators=[AnonymizeOperator(key_env="DICOMWEB_TEST_KEY"), PixelsOperator()],
            sinks=[LakeSink(path=str(tmp_path / "lake")), DicomwebSink(url=research.dicomweb)],
        )
        summary = run_spec(PipelineSpec.from_yaml(spec.to_yaml()), progress=False)
        stored = _orthanc_sop_uids(research)
    lake = dicomflow.read_lake(str(tmp_path / "lake"))
    written = set(lake.instances(columns=["SOPInstanceUID"]).column(0).to_pylist())
    secondary_capture = [p for p in files if _uid(p, "SOPClassUID") == SECONDARY_CAPTURE]
    assert secondary_capture  # quarantined by the burned-in policy: never sent
    assert summary.accounted
    assert summary.error_codes == {"burned_in_annotation": len(secondary_capture)}
    assert len(written) == len(files) - len(secondary_capture)
    assert stored == written  # every de-identified instance, and nothing else
    assert not stored & {_uid(p) for p in files}
    assert not list((tmp_path / "lake").rglob("_retrieved/**/*.dcm"))  # originals removed


def test_unreachable_server_is_a_clear_error(tmp_path: Path, client: object) -> None:
    url = f"dicomweb+http://127.0.0.1:{free_port()}/dicom-web"
    with pytest.raises(DicomwebError, match="QIDO-RS search"):
        dicomflow.ingest(
            [url],
            out=str(tmp_path / "lake"),
            query={"Modality": "CT"},
            dicomweb=DicomwebOptions(connect_timeout=2, read_timeout=2, attempts=2),
            client=client,
            progress=False,
            pixels=True,
        )


def test_stow_to_an_unreachable_server_gives_not_stored_rows(
    files: list[Path], tmp_path: Path, client: object
) -> None:
    summary = dicomflow.ingest(
        [str(files[-1])],
        out=str(tmp_path / "lake"),
        pixels=False,
        send_to=f"dicomweb+http://127.0.0.1:{free_port()}/dicom-web",
        send_options=DicomwebOptions(connect_timeout=2, read_timeout=2, attempts=2),
        client=client,
        progress=False,
    )
    assert summary.error_codes.get("not_stored") == 1


def test_cli_ingest_from_dicomweb(orthanc: Orthanc, tmp_path: Path) -> None:
    out = tmp_path / "lake"
    done = subprocess.run(
        [
            *(sys.executable, "-m", "dicomflow", "-vv", "ingest", orthanc.dicomweb, "-q"),
            f"StudyInstanceUID={_uid(PYDICOM_TEST_FILES / 'MR_small.dcm', 'StudyInstanceUID')}",
            *("--out", str(out), "--no-pixels", "--workers", "1"),
            "--no-progress",
        ],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert done.returncode == 0, done.stderr
    assert "DEBUG" in done.stderr  # -vv logs, but never an identifier of the data
    for keyword in ("StudyInstanceUID", "SeriesInstanceUID", "SOPInstanceUID"):
        assert _uid(PYDICOM_TEST_FILES / "MR_small.dcm", keyword) not in done.stderr, keyword
    uids = dicomflow.read_lake(str(out)).instances(columns=["SOPInstanceUID"]).column(0)
    assert uids.to_pylist() == [_uid(PYDICOM_TEST_FILES / "MR_small.dcm")]
    refused = subprocess.run(
        [sys.executable, "-m", "dicomflow", "ingest", orthanc.dicomweb, "--out", str(out)],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert refused.returncode == 2 and "needs a query" in refused.stderr


def _without_file_meta(path: Path) -> None:
    """Rewrite ``path`` as the data set alone: no preamble, no file meta, implicit VR
    little endian (as some archives hold instances and Orthanc serves them)."""
    ds = pydicom.dcmread(path)
    del ds.file_meta
    ds.preamble = None
    ds.save_as(path, implicit_vr=True, little_endian=True, enforce_file_format=False)


def test_an_instance_stored_without_file_meta_lands_as_the_server_sent_it(
    tmp_path: Path, client: object
) -> None:
    """WADO-RS parts land byte for byte: an instance Orthanc holds without preamble or
    file meta is neither reparsed nor reported as not delivered; the reader reads it and
    its pixels equal pydicom's reading of the original file."""
    require(orthanc_binary() is not None, "Orthanc (Debian package orthanc)")
    paths = ct_series(tmp_path / "src", SLICES)[:4]
    originals = [pydicom.dcmread(p) for p in paths]  # the oracle, read before one is stripped
    _without_file_meta(paths[1])
    assert paths[1].read_bytes()[:4] == b"\x08\x00\x05\x00"  # starts with its first element
    with running_orthanc(tmp_path / "orthanc", dicomweb=True) as server:
        for path in paths:
            assert server.upload(path)
        stored = {}
        for instance in server.get("/instances"):  # type: ignore[union-attr]
            tags = server.get(f"/instances/{instance}/simplified-tags")
            stored[tags["SOPInstanceUID"]] = server.get_bytes(f"/instances/{instance}/file")  # type: ignore[index]
        lake = tmp_path / "lake"
        series = _uid(paths[0], "SeriesInstanceUID")
        summary = dicomflow.ingest(
            [server.dicomweb],
            out=str(lake),
            query={"SeriesInstanceUID": series},
            client=client,
            progress=False,
            pixels=True,
        )
    assert (summary.rows, summary.errors) == (4, 0), summary
    landed = {p.stem: p.read_bytes() for p in (lake / "_retrieved").rglob("*.dcm")}
    assert landed == stored  # every part as the server sent it
    volume, _ = dicomflow.open_series(dicomflow.read_lake(str(lake)), series, as_numpy=True)
    order = sorted(originals, key=lambda ds: float(ds.ImagePositionPatient[2]))
    expected = np.stack([pydicom.pixels.apply_modality_lut(ds.pixel_array, ds) for ds in order])
    np.testing.assert_array_equal(volume, expected)
