"""``make demo``'s job: the sample files become a lake and a de-identified lake."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import pydicom
import zarr

from dicomflow.demo import run_demo, sample_data_dir


def test_demo_writes_both_lakes_and_accounts_for_every_input(
    tmp_path: Path, client: object
) -> None:
    out = tmp_path / "demo"
    assert run_demo(out) == 0
    inputs = sum(1 for p in sample_data_dir().rglob("*") if p.is_file())
    model_seg = str(tmp_path / "demo-model-seg.dcm")
    everything = pq.read_table(out / "instances").column("source").to_pylist()
    rows = [s for s in everything if s != model_seg]
    assert model_seg in everything  # the SEG the demo wrote is a row of the lake
    errors = pq.read_table(out / "errors").to_pylist()
    failed = {e["source"] for e in errors if e["stage"] != "labels"} - set(rows)
    assert len(rows) == len(set(rows)) and len(rows) + len(failed) == inputs
    # Renders: one PNG for each image that has one, where render_path says.
    # Every instances part has the run's columns: a plain read of the folder sees them.
    paths = [p for p in pq.read_table(out / "instances").column("render_path").to_pylist() if p]
    assert paths and all((out / p).is_file() for p in paths)
    # SR content: pydicom's three SR samples, 9 + 9 + 29 items (the two reportsi files
    # share one SOP Instance UID).
    content = pq.read_table(out / "sr_content")
    assert content.num_rows == 47
    assert len(set(content.column("SOPInstanceUID").to_pylist())) == 2

    # Labels: the threshold mask the demo wrote as a SEG lands back on its stack.
    segments = [r for r in pq.read_table(out / "segments").to_pylist() if r["status"] == "placed"]
    (placed,) = [r for r in segments if r["segment_label"].startswith("Brightest tenth")]
    label = np.asarray(zarr.open_group(str(out / placed["label_path"]), mode="r")["0"][:])
    image = np.asarray(zarr.open_group(str(out / placed["zarr_path"]), mode="r")["0"][:])
    assert np.array_equal(label == 1, image > np.percentile(image, 90))

    deid = tmp_path / "demo-deidentified"
    files = sorted((deid / "dicom").rglob("*.dcm"))
    rows = pq.read_table(deid / "instances")
    errors = pq.read_table(deid / "errors")
    row_sources = rows.column("source").to_pylist()
    lost = set(errors.column("source").to_pylist()) - set(row_sources)
    assert files and len(row_sources) + len(lost) == inputs  # a row, else an error row
    # Every written file is accounted for by a row or a (later-stage) error row; two
    # inputs whose de-identified bytes are identical share one file.
    sources = rows.column("source").to_pylist() + errors.column("source").to_pylist()
    written = {s for s in sources if not s.startswith("deid://")}
    assert written == {str(p) for p in files}
    for path in files[:20]:
        ds = pydicom.dcmread(path)
        assert ds.PatientIdentityRemoved == "YES"
        assert ds.SOPInstanceUID.startswith("2.25.")
        assert path.stem.split("-")[0] == ds.SOPInstanceUID
    assert not (deid / "_staging").exists()
