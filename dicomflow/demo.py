"""``dicomflow demo``: scan pydicom's bundled test files into a lake and say what to open."""

from __future__ import annotations

from pathlib import Path

import click
import pydicom.data

from dicomflow.api import run_scan
from dicomflow.lake.reader import read_lake


def sample_data_dir() -> Path:
    """pydicom's bundled test files (installed with pydicom, no download)."""
    return Path(pydicom.data.__file__).parent / "test_files"


def run_demo(out: Path, *, workers: int | None = None) -> int:
    """Run the demo job into ``out``; return the process exit code."""
    out = out.resolve()
    samples = sample_data_dir()
    click.echo(f"scanning {samples} → {out}")
    summary = run_scan([str(samples)], out=str(out), workers=workers)
    lake = read_lake(str(out))
    instances = lake.instances(columns=["Modality"])
    modalities = sorted({m for m in instances.column("Modality").to_pylist() if m})
    click.echo(
        f"files: {summary.files}  rows: {summary.rows}  errors: {summary.errors}  "
        f"seconds: {summary.seconds:.1f}"
    )
    click.echo(f"modalities: {', '.join(modalities)}")
    click.echo("outputs:")
    click.echo(f"  instances table  {out}/instances/*.parquet")
    click.echo(f"  errors table     {out}/errors/*.parquet")
    click.echo("try:")
    query = f"SELECT Modality, count(*) FROM read_parquet('{out}/instances/*.parquet') GROUP BY 1"  # noqa: S608 (printed, not run)
    click.echo(f'  .venv/bin/python -c "import duckdb; duckdb.sql(\\"{query}\\").show()"')
    click.echo(
        f"  .venv/bin/python -c \"import dicomflow; print(dicomflow.read_lake('{out}').errors())\""
    )
    return 0 if summary.accounted else 1
