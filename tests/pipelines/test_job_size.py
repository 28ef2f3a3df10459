"""A job's decoding cost is judged from its first input's header: compressed series that
take seconds to decode are not run on one thread because their files are small."""

from __future__ import annotations

import sys
from pathlib import Path

import pydicom
import pytest
from pydicom.uid import JPEG2000Lossless

from dicomflow.connectors.files import FilesConnector
from dicomflow.pipelines import cluster
from dicomflow.pipelines.cluster import grows, runs_in_process
from dicomflow.pipelines.job_size import (
    DECODE_NS_PER_SAMPLE,
    UNCOMPRESSED_NS_PER_SAMPLE,
    extra_decode_seconds,
)
from tests.conftest import REPO

sys.path.insert(0, str(REPO / "benchmarks"))
from synth import write_phantom_series


def _first(folder: Path) -> tuple[FilesConnector, list]:
    source = FilesConnector((str(folder),))
    return source, sorted(source.query().refs, key=lambda r: r.url)


def test_an_uncompressed_series_costs_nothing_more(tmp_path: Path) -> None:
    write_phantom_series(tmp_path / "plain", 2, size=64)
    source, refs = _first(tmp_path / "plain")
    assert extra_decode_seconds(source, refs[0]) == 0.0


def test_a_jpeg_2000_series_costs_its_samples(tmp_path: Path) -> None:
    paths = write_phantom_series(tmp_path / "j2k", 2, size=64, transfer_syntax=JPEG2000Lossless)
    source, refs = _first(tmp_path / "j2k")
    ds = pydicom.dcmread(paths[0], stop_before_pixels=True)
    samples = int(ds.Rows) * int(ds.Columns) * int(ds.get("SamplesPerPixel") or 1)
    per_sample = DECODE_NS_PER_SAMPLE[str(ds.file_meta.TransferSyntaxUID)]
    expected = samples * (per_sample - UNCOMPRESSED_NS_PER_SAMPLE) * 1e-9
    assert extra_decode_seconds(source, refs[0]) == pytest.approx(expected)


def test_an_unreadable_first_input_costs_nothing_more(tmp_path: Path) -> None:
    (tmp_path / "junk").mkdir()
    (tmp_path / "junk" / "a.dcm").write_bytes(b"not dicom at all" * 10)
    source, refs = _first(tmp_path / "junk")
    assert extra_decode_seconds(source, refs[0]) == 0.0


def test_four_hundred_jpeg_2000_slices_do_not_run_on_one_thread(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """400 slices of 512x512: by their bytes (about 0.25 MB each) a job for this process;
    by their decoding (14 ms a slice here), one for a growing cluster."""
    monkeypatch.setattr(cluster, "default_workers", lambda: 2)
    inputs, input_bytes = 400, 400 * 250_000
    assert runs_in_process(inputs, input_bytes, pixels=True)
    extra = 512 * 512 * (DECODE_NS_PER_SAMPLE[JPEG2000Lossless] - UNCOMPRESSED_NS_PER_SAMPLE) * 1e-9
    assert not runs_in_process(inputs, input_bytes, pixels=True, decode_seconds=extra)
    assert grows(inputs, input_bytes, pixels=True, decode_seconds=extra)


def test_a_pixel_run_sizes_its_cluster_by_the_first_inputs_decoding(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import dicomflow
    from dicomflow.pipelines import compiler

    write_phantom_series(tmp_path / "j2k", 3, size=64, transfer_syntax=JPEG2000Lossless)
    asked: list[dict[str, object]] = []
    connect = compiler.connect_client

    def recording(*args: object, **kwargs: object) -> object:
        asked.append(kwargs)
        return connect(*args, **kwargs)  # type: ignore[arg-type]

    monkeypatch.setattr(compiler, "connect_client", recording)
    summary = dicomflow.ingest(
        [str(tmp_path / "j2k")], out=str(tmp_path / "lake"), pixels=True, progress=False
    )
    assert summary.errors == 0 and summary.rows == 3
    source, refs = _first(tmp_path / "j2k")
    (kwargs,) = asked
    assert kwargs["pixels"] is True and kwargs["inputs"] == 3
    assert kwargs["decode_seconds"] == pytest.approx(extra_decode_seconds(source, refs[0]))
    assert kwargs["decode_seconds"] > 0
