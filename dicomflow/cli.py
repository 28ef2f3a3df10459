"""The ``dicomflow`` command line.

Exit codes: 0 every input accounted for (as a row or an error row); 2 a
configuration error; 3 error rows with ``--fail-on-error``; 1 a crash or a
systemic failure (inputs unaccounted for).
"""

from __future__ import annotations

import logging
import sys
from collections.abc import Callable
from pathlib import Path
from typing import TypeVar

import click

from dicomflow._version import __version__
from dicomflow.api import run_scan
from dicomflow.errors import ConfigError
from dicomflow.pipelines.pipeline import RunSummary

EXIT_OK, EXIT_CRASH, EXIT_CONFIG, EXIT_INPUT_ERRORS = 0, 1, 2, 3
T = TypeVar("T")


def _configure_logging(verbose: int) -> None:
    level = logging.WARNING - 10 * min(verbose, 2)
    logging.basicConfig(level=level, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    # pynetdicom and pydicom can log identifiers; keep them at WARNING whatever -v says.
    for noisy in ("pydicom", "pynetdicom", "distributed", "fsspec"):
        logging.getLogger(noisy).setLevel(max(level, logging.WARNING))


def _print_summary(summary: RunSummary, out: str | None) -> None:
    click.echo(
        f"files: {summary.files}  rows: {summary.rows}  errors: {summary.errors}  "
        f"seconds: {summary.seconds:.1f}  files/s: {summary.files_per_second:.0f}"
    )
    if summary.error_codes:
        codes = ", ".join(f"{code}={n}" for code, n in sorted(summary.error_codes.items()))
        click.echo(f"errors by code: {codes}")
    if out:
        click.echo(f"lake: {out}")


@click.group()
@click.version_option(__version__, prog_name="dicomflow")
@click.option("-v", "--verbose", count=True, help="More logging (-v info, -vv debug).")
def cli(verbose: int) -> None:
    """Turn DICOM sources into analysis-ready data at cohort scale."""
    _configure_logging(verbose)


def _run_options(command: Callable[..., None]) -> Callable[..., None]:
    """The options every job command shares: where to run, and how to report."""
    options = [
        click.option(
            "--scheduler",
            default=None,
            help="Dask scheduler address (else DASK_SCHEDULER_ADDRESS, else a local cluster).",
        ),
        click.option(
            "--workers",
            type=int,
            default=None,
            help="Local worker processes (default: one per core).",
        ),
        click.option(
            "--fail-on-error", is_flag=True, help="Exit 3 if any input became an error row."
        ),
        click.option(
            "--progress/--no-progress", default=None, help="Force the progress bar on or off."
        ),
    ]
    for option in reversed(options):
        command = option(command)
    return command


@cli.command()
@click.argument("src", nargs=-1, required=True)
@click.option("--out", required=True, help="Lake directory or fsspec URL to write.")
@_run_options
def scan(
    src: tuple[str, ...],
    out: str,
    scheduler: str | None,
    workers: int | None,
    fail_on_error: bool,
    progress: bool | None,
) -> None:
    """Scan DICOM headers from SRC (paths, directories, globs, URLs) into a Parquet lake."""
    summary = _run(
        lambda: run_scan(
            list(src), out=out, scheduler=scheduler, workers=workers, progress=progress
        )
    )
    _print_summary(summary, out)
    _exit_for(summary, fail_on_error)


@cli.command()
@click.argument("src", nargs=-1, required=True)
@click.option("--out", required=True, help="Lake directory to write.")
@click.option("--pixels/--no-pixels", default=False, help="Also write image stacks to Zarr.")
@_run_options
def ingest(
    src: tuple[str, ...],
    out: str,
    pixels: bool,
    scheduler: str | None,
    workers: int | None,
    fail_on_error: bool,
    progress: bool | None,
) -> None:
    """Scan SRC into a lake plus the chosen outputs (--pixels: OME-Zarr stacks), in one run."""
    from dicomflow.api import ingest as run_ingest

    summary = _run(
        lambda: run_ingest(
            list(src),
            out=out,
            pixels=pixels,
            scheduler=scheduler,
            workers=workers,
            progress=progress,
        )
    )
    _print_summary(summary, out)
    _exit_for(summary, fail_on_error)


@cli.command()
@click.option("--out", default="demo-out", show_default=True, help="Where to write the demo lake.")
@click.option("--workers", type=int, default=None, help="Local worker processes.")
def demo(out: str, workers: int | None) -> None:
    """Run the main job end to end on bundled sample data (pydicom's test files)."""
    from dicomflow.demo import run_demo

    sys.exit(_run(lambda: run_demo(Path(out), workers=workers)))


def _run(job: Callable[[], T]) -> T:
    """Run ``job``, turning configuration errors into exit code 2 with a clear message."""
    try:
        return job()
    except ConfigError as exc:
        click.echo(f"error: {exc}", err=True)
        sys.exit(EXIT_CONFIG)


def _exit_for(summary: RunSummary, fail_on_error: bool) -> None:
    if not summary.accounted:
        click.echo("error: some inputs were neither written nor reported as errors", err=True)
        sys.exit(EXIT_CRASH)
    if fail_on_error and summary.errors:
        sys.exit(EXIT_INPUT_ERRORS)
    sys.exit(EXIT_OK)


def main() -> None:
    """Console-script entry point."""
    cli(prog_name="dicomflow")
