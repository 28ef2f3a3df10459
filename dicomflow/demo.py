"""``dicomflow demo``: ingest pydicom's bundled test files (metadata, pixels, renders and SR
content), write a mask back as a SEG and place it as labels, and say what to open."""

from __future__ import annotations

from pathlib import Path

import click
import numpy as np
import pydicom.data

from dicomflow.anonymize.keys import SecretKey
from dicomflow.api import (
    AnonymizeSettings,
    ConfigError,
    RenderOperator,
    SegmentInfo,
    SrOperator,
    deidentifier,
    ingest,
    open_series,
    read_lake,
    write_seg,
)

# Only for the demo's public sample files: real data needs a secret key (--key-file).
DEMO_KEY = SecretKey(b"dicomflow-demo-key-public-never-use-for-real-data")


def sample_data_dir() -> Path:
    """pydicom's bundled test files (installed with pydicom, no download)."""
    return Path(pydicom.data.__file__).parent / "test_files"


def run_demo(out: Path, *, workers: int | None = None) -> int:
    """Run the demo job into ``out``; return the process exit code."""
    out = out.resolve()
    samples = sample_data_dir()
    click.echo(f"ingesting {samples} → {out}")
    summary = ingest(
        [str(samples)],
        out=str(out),
        pixels=True,
        workers=workers,
        # 256-px PNG thumbnails (each image decoded once); SR documents as rows
        operators=[RenderOperator(), SrOperator()],
    )
    labels = _labels_demo(out, workers)
    deid_out = out.parent / f"{out.name}-deidentified"
    click.echo(f"de-identifying the same files (PS3.15 basic profile, demo key) → {deid_out}")
    settings = AnonymizeSettings(
        deidentifier(key=DEMO_KEY, options=["retain-longitudinal-modified"]), write_dicom=True
    )
    deid = ingest(
        [str(samples)], out=str(deid_out), pixels=True, workers=workers, anonymize=settings
    )
    lake = read_lake(str(out))
    stacks = lake.series()
    instances = lake.instances(columns=["Modality"])
    modalities = sorted({m for m in instances.column("Modality").to_pylist() if m})
    click.echo(
        f"files: {summary.files}  rows: {summary.rows}  errors: {summary.errors}  "
        f"seconds: {summary.seconds:.1f}" + _skipped(summary.skipped)
    )
    click.echo(f"modalities: {', '.join(modalities)}")
    click.echo(f"pixel stacks: {stacks.num_rows}")
    click.echo("outputs:")
    click.echo(f"  instances table  {out}/instances/*.parquet")
    click.echo(f"  series table     {out}/series/*.parquet")
    click.echo(f"  errors table     {out}/errors/*.parquet")
    click.echo(f"  pixels (Zarr)    {out}/pixels.zarr/<study>/<series>/<stack>")
    renders = sum(1 for p in instances_with_renders(lake) if p)
    click.echo(f"  renders (PNG)    {out}/renders/<study>/<series>/<sop>.png  ({renders})")
    items = lake.table("sr_content").num_rows
    click.echo(f"  SR content       {out}/sr_content/*.parquet  ({items} content items)")
    if labels is not None:
        click.echo(
            f"  labels (SEG)     {out}/{labels}  (a threshold mask written as a SEG by "
            "write_seg, then placed back on its stack by --labels)"
        )
    click.echo(
        f"de-identified: files {deid.files}  rows {deid.rows}  errors {deid.errors} "
        "(quarantined burned-in candidates and unreadable inputs are error rows)"
        + _skipped(deid.skipped)
    )
    click.echo(f"  DICOM            {deid_out}/dicom/<study>/<series>/<sop>.dcm")
    if deid.proof is not None:
        verdict = "no removed value in any output" if deid.proof.passed else "FAILED"
        click.echo(
            f"  proof            {deid.proof.values_checked} removed values searched for in "
            f"{deid.proof.outputs_scanned} outputs: {verdict}"
        )
    click.echo(f"  tables and Zarr  {deid_out}/instances, series, errors, pixels.zarr")
    click.echo("try:")
    query = f"SELECT Modality, count(*) FROM read_parquet('{out}/instances/*.parquet') GROUP BY 1"  # noqa: S608 (printed, not run)
    click.echo(f'  .venv/bin/python -c "import duckdb; duckdb.sql(\\"{query}\\").show()"')
    click.echo(
        f"  .venv/bin/python -c \"import dicomflow; print(dicomflow.read_lake('{out}').errors())\""
    )
    if stacks.num_rows:
        uid = stacks.sort_by([("frames", "descending")]).column("SeriesInstanceUID")[0].as_py()
        click.echo(
            f'  .venv/bin/python -c "import dicomflow; '
            f"print(dicomflow.open_series('{out}', '{uid}'))\""
        )
    return 0 if summary.accounted and deid.accounted else 1


def _labels_demo(out: Path, workers: int | None) -> str | None:
    """A stand-in for a model: threshold the largest grayscale stack, write the mask as
    a DICOM SEG beside the lake, ingest that SEG with labels, and return where the
    label image landed (None when no stack fits)."""
    lake = read_lake(str(out))
    stacks = lake.series().sort_by([("frames", "descending")]).to_pylist()
    for stack in stacks:
        uid = stack["SeriesInstanceUID"]
        image, _ = open_series(str(out), uid, as_numpy=True)
        if image.ndim != 3 or image.shape[0] < 2:  # colour, or a single slice
            continue
        seg = out.parent / f"{out.name}-model-seg.dcm"
        if not seg.exists():  # a rerun places the same SEG again (nothing new)
            try:
                write_seg(
                    str(out),
                    uid,
                    image > np.percentile(image, 90),
                    seg,
                    segments={1: SegmentInfo("Brightest tenth (demo threshold)")},
                )
            except ConfigError:  # multi-frame sources, or a mask highdicom refuses
                continue
        click.echo(f"placing a SEG written from a threshold mask → {seg}")
        ingest(  # the same operators as the first run: every part has the same columns
            [str(seg)],
            out=str(out),
            pixels=True,
            labels=True,
            workers=workers,
            operators=[RenderOperator(), SrOperator()],
        )
        placed = read_lake(str(out)).table("segments").to_pylist()
        return next((r["label_path"] for r in placed if r["label_path"]), None)
    return None


def instances_with_renders(lake: object) -> list[str | None]:
    """Each instance's ``render_path`` (None where it has no image)."""
    table = lake.instances(columns=["render_path"])  # type: ignore[attr-defined]
    return list(table.column("render_path").to_pylist())


def _skipped(count: int) -> str:
    """A rerun into the same lake commits nothing new: say so, or "rows: 0" puzzles."""
    return f"  skipped (already committed): {count}" if count else ""
