"""``dicomflow demo``: ingest pydicom's bundled test files (metadata and pixels) and say what
to open."""

from __future__ import annotations

from pathlib import Path

import click
import pydicom.data

from dicomflow.api import ingest
from dicomflow.lake.reader import read_lake


def sample_data_dir() -> Path:
    """pydicom's bundled test files (installed with pydicom, no download)."""
    return Path(pydicom.data.__file__).parent / "test_files"


def run_demo(out: Path, *, workers: int | None = None) -> int:
    """Run the demo job into ``out``; return the process exit code."""
    out = out.resolve()
    samples = sample_data_dir()
    click.echo(f"ingesting {samples} → {out}")
    summary = ingest([str(samples)], out=str(out), pixels=True, workers=workers)
    lake = read_lake(str(out))
    stacks = lake.series()
    instances = lake.instances(columns=["Modality"])
    modalities = sorted({m for m in instances.column("Modality").to_pylist() if m})
    click.echo(
        f"files: {summary.files}  rows: {summary.rows}  errors: {summary.errors}  "
        f"seconds: {summary.seconds:.1f}"
    )
    click.echo(f"modalities: {', '.join(modalities)}")
    click.echo(f"pixel stacks: {stacks.num_rows}")
    click.echo("outputs:")
    click.echo(f"  instances table  {out}/instances/*.parquet")
    click.echo(f"  series table     {out}/series/*.parquet")
    click.echo(f"  errors table     {out}/errors/*.parquet")
    click.echo(f"  pixels (Zarr)    {out}/pixels.zarr/<study>/<series>/<stack>")
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
    return 0 if summary.accounted else 1
