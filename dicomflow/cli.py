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
from typing import Any, TypeVar, cast

import click
import pyarrow.parquet as pq

from dicomflow import logs
from dicomflow._version import __version__
from dicomflow.api import run_scan
from dicomflow.connectors.dicomweb.address import DicomwebError, DicomwebOptions
from dicomflow.connectors.dimse.address import DimseAddress, DimseOptions, TlsOptions
from dicomflow.connectors.dimse.association import DimseError
from dicomflow.connectors.dimse.echo import c_echo
from dicomflow.connectors.dimse.find import Level, Model, find_cohort, find_table, read_cohort
from dicomflow.errors import ConfigError
from dicomflow.pipelines.pipeline import RunSummary

EXIT_OK, EXIT_CRASH, EXIT_CONFIG, EXIT_INPUT_ERRORS = 0, 1, 2, 3
T = TypeVar("T")


def _configure_logging(verbose: int, json_lines: bool = False) -> None:
    level = logging.WARNING - 10 * min(verbose, 2)
    logs.configure(level, json_lines=json_lines)
    # These can log identifiers (datasets, UIDs in URLs and queries) or credentials
    # locations; keep them at WARNING whatever -v says.
    for noisy in (
        *("pydicom", "pynetdicom", "distributed", "fsspec", "bokeh"),
        *("dicomweb_client", "urllib3", "requests", "s3fs", "botocore", "aiobotocore"),
    ):
        logging.getLogger(noisy).setLevel(max(level, logging.WARNING))
    # Whenever a cluster is started or joined, say where its dashboard is.
    logging.getLogger("dicomflow.pipelines.cluster").setLevel(logging.INFO)


def _print_summary(summary: RunSummary, out: str | None) -> None:
    click.echo(
        f"files: {summary.files}  rows: {summary.rows}  errors: {summary.errors}  "
        f"seconds: {summary.seconds:.1f}  files/s: {summary.files_per_second:.0f}"
        + (f"  skipped (already committed): {summary.skipped}" if summary.skipped else "")
    )
    if summary.error_codes:
        codes = ", ".join(f"{code}={n}" for code, n in sorted(summary.error_codes.items()))
        click.echo(f"errors by code: {codes}")
    if out:
        click.echo(f"lake: {out}")
    if summary.report:
        click.echo(f"report: {summary.report} (and .html)")


@click.group()
@click.version_option(__version__, prog_name="dicomflow")
@click.option("-v", "--verbose", count=True, help="More logging (-v info, -vv debug).")
@click.option("--log-json", is_flag=True, help="Log one JSON object per line (for collectors).")
def cli(verbose: int, log_json: bool) -> None:
    """Turn DICOM sources into analysis-ready data at cohort scale."""
    _configure_logging(verbose, log_json)


def _with_options(
    command: Callable[..., None], options: list[Callable[[Any], Any]]
) -> Callable[..., None]:
    """Apply click options in the order they are listed (first listed, first in --help)."""
    for option in reversed(options):
        command = option(command)
    return command


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
    return _with_options(command, options)


def _dimse_options(command: Callable[..., None]) -> Callable[..., None]:
    """How to reach a DICOM peer: our AE title, TLS files, user identity."""
    options = [
        click.option("--calling-ae", default="DICOMFLOW", show_default=True, help="Our AE title."),
        click.option("--tls-ca", default=None, help="CA bundle to verify the peer (enables TLS)."),
        click.option("--tls-cert", default=None, help="Our certificate, for mutual TLS."),
        click.option("--tls-key", default=None, help="Our private key, for mutual TLS."),
        click.option("--username", default=None, help="User identity (username)."),
        click.option(
            "--password-env",
            default=None,
            help="Name of the environment variable holding the password.",
        ),
    ]
    return _with_options(command, options)


def _build_dimse_options(
    calling_ae: str,
    tls_ca: str | None,
    tls_cert: str | None,
    tls_key: str | None,
    username: str | None,
    password_env: str | None,
) -> DimseOptions:
    return DimseOptions(
        calling_ae=calling_ae,
        tls=TlsOptions.from_files(tls_ca, tls_cert, tls_key),
        username=username,
        password_env=password_env,
    )


def _build_dicomweb_options(
    calling_ae: str,
    tls_ca: str | None,
    tls_cert: str | None,
    tls_key: str | None,
    username: str | None,
    password_env: str | None,
    token_env: str | None,
) -> DicomwebOptions:
    """The same TLS and identity options, for DICOMweb peers (the AE title has no use)."""
    del calling_ae
    return DicomwebOptions(
        tls_ca=tls_ca,
        tls_cert=tls_cert,
        tls_key=tls_key,
        username=username,
        password_env=password_env,
        token_env=token_env,
    )


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


def _anonymize_options(command: Callable[..., None]) -> Callable[..., None]:
    """How to de-identify: profile, options, key (never on the command line), extras."""
    options = [
        click.option("--profile", default="basic", show_default=True, help="PS3.15 profile."),
        click.option(
            "--option",
            "deid_options",
            multiple=True,
            metavar="NAME",
            help="PS3.15 option, e.g. retain-longitudinal-modified, clean-descriptors (repeat).",
        ),
        click.option("--key-file", default=None, help="File holding the pseudonymisation key."),
        click.option(
            "--key-env", default=None, help="Environment variable holding the pseudonymisation key."
        ),
        click.option(
            "--keep",
            "keep_attributes",
            multiple=True,
            metavar="KEYWORD",
            help="Project override: keep this attribute as it is (repeat).",
        ),
        click.option(
            "--action",
            "actions",
            multiple=True,
            metavar="KEYWORD=CODE",
            help="Project override: apply X, Z, D, K, C or U to this attribute (repeat).",
        ),
        click.option(
            "--pixel-rules", default=None, help="JSON rules of regions to black out per device."
        ),
        click.option(
            "--safe-private", default=None, help="JSON file adding safe private attributes."
        ),
        click.option("--vocabulary", default=None, help="File of extra words clean-* keeps."),
        click.option(
            "--mapping",
            default=None,
            help="Folder (outside the lake) for the original-to-pseudonym mapping.",
        ),
    ]
    return _with_options(command, options)


def _build_anonymize(
    *,
    write_dicom: bool,
    profile: str,
    deid_options: tuple[str, ...],
    key_file: str | None,
    key_env: str | None,
    keep_attributes: tuple[str, ...],
    actions: tuple[str, ...],
    pixel_rules: str | None,
    safe_private: str | None,
    vocabulary: str | None,
    mapping: str | None,
) -> Any:
    from dicomflow.api import AnonymizeSettings, deidentifier

    engine = deidentifier(
        key_file=key_file,
        key_env=key_env,
        profile=profile,
        options=deid_options,
        keep=keep_attributes,
        overrides=_parse_queries(actions, "--action"),
        pixel_rules=pixel_rules,
        safe_private=safe_private,
        vocabulary=vocabulary,
        keep_mapping=mapping is not None,
    )
    return AnonymizeSettings(engine, write_dicom=write_dicom, mapping_dir=mapping)


@cli.command()
@click.argument("src", nargs=-1, required=True)
@click.option("--out", required=True, help="Lake directory to write.")
@click.option("--pixels/--no-pixels", default=False, help="Also write image stacks to Zarr.")
@click.option(
    "--frames-per-chunk",
    type=click.IntRange(min=1),
    default=1,
    show_default=True,
    help="Frames per Zarr chunk (with --pixels).",
)
@click.option(
    "--expand-palette",
    is_flag=True,
    help="With --pixels: write PALETTE COLOR images as RGB (default: indices + palette).",
)
@click.option(
    "--anonymize", is_flag=True, help="De-identify (PS3.15 Annex E) before any output is made."
)
@click.option(
    "--dicom", "write_dicom", is_flag=True, help="With --anonymize: keep de-identified DICOM files."
)
@click.option(
    "-q",
    "--query",
    "queries",
    multiple=True,
    metavar="KEYWORD=VALUE",
    help="For dimse:// and dicomweb+http(s):// sources: what to retrieve, "
    "e.g. -q StudyInstanceUID=1.2.3.",
)
@click.option(
    "--max-associations",
    type=int,
    default=2,
    show_default=True,
    help="Concurrent associations (or DICOMweb requests) per peer, across the whole cluster.",
)
@click.option(
    "--send",
    "send_to",
    default=None,
    metavar="dimse://AE@host:port | dicomweb+https://host/root",
    help="Also C-STORE (or STOW-RS) every instance written (de-identified ones with --anonymize).",
)
@click.option(
    "--token-env",
    default=None,
    help="DICOMweb: name of the environment variable holding a bearer token.",
)
@_anonymize_options
@_run_options
@_dimse_options
def ingest(
    src: tuple[str, ...],
    out: str,
    pixels: bool,
    frames_per_chunk: int,
    expand_palette: bool,
    anonymize: bool,
    write_dicom: bool,
    profile: str,
    deid_options: tuple[str, ...],
    key_file: str | None,
    key_env: str | None,
    keep_attributes: tuple[str, ...],
    actions: tuple[str, ...],
    pixel_rules: str | None,
    safe_private: str | None,
    vocabulary: str | None,
    mapping: str | None,
    queries: tuple[str, ...],
    max_associations: int,
    send_to: str | None,
    token_env: str | None,
    scheduler: str | None,
    workers: int | None,
    fail_on_error: bool,
    progress: bool | None,
    **dimse: Any,
) -> None:
    """Ingest SRC (files, folders, URLs, dimse://AE@host:port, dicomweb+https://host/root)
    into a lake, in one run."""
    from dicomflow.api import ingest as run_ingest

    options = _run(lambda: _build_dimse_options(**dimse))
    web = _run(lambda: _build_dicomweb_options(token_env=token_env, **dimse))
    matching = _run(lambda: _parse_queries(queries))
    settings = None
    if anonymize:
        settings = _run(
            lambda: _build_anonymize(
                write_dicom=write_dicom,
                profile=profile,
                deid_options=deid_options,
                key_file=key_file,
                key_env=key_env,
                keep_attributes=keep_attributes,
                actions=actions,
                pixel_rules=pixel_rules,
                safe_private=safe_private,
                vocabulary=vocabulary,
                mapping=mapping,
            )
        )
    elif write_dicom:
        _run(lambda: _config_error("--dicom writes de-identified files: it needs --anonymize"))
    summary = _dimse(
        "retrieve",
        lambda: run_ingest(
            list(src),
            out=out,
            pixels=pixels,
            query=matching,
            dimse=options,
            dicomweb=web,
            max_associations=max_associations,
            scheduler=scheduler,
            workers=workers,
            progress=progress,
            anonymize=settings,
            send_to=send_to,
            frames_per_chunk=frames_per_chunk,
            expand_palette=expand_palette,
        ),
    )
    _print_summary(summary, out)
    _exit_for(summary, fail_on_error)


@cli.command()
@click.argument("src", nargs=-1, required=True)
@click.option("--out", required=True, help="Folder to write (a lake holding dicom/ and tables).")
@_anonymize_options
@_run_options
def anonymize(
    src: tuple[str, ...],
    out: str,
    scheduler: str | None,
    workers: int | None,
    fail_on_error: bool,
    progress: bool | None,
    **deid: Any,
) -> None:
    """De-identify SRC into OUT/dicom/<study>/<series>/<sop>.dcm (shortcut for
    ``ingest --anonymize --dicom``); the tables are made from the output files."""
    from dicomflow.api import ingest as run_ingest

    settings = _run(lambda: _build_anonymize(write_dicom=True, **deid))
    summary = _run(
        lambda: run_ingest(
            list(src),
            out=out,
            pixels=False,
            scheduler=scheduler,
            workers=workers,
            progress=progress,
            anonymize=settings,
        )
    )
    _print_summary(summary, out)
    click.echo(f"de-identified DICOM: {Path(out) / 'dicom'}")
    _exit_for(summary, fail_on_error)


@cli.command()
@click.argument("url")
@_dimse_options
@click.option(
    "-v",
    "--verbose",
    "show_contexts",
    is_flag=True,
    help="Also print the negotiated presentation contexts.",
)
def echo(url: str, show_contexts: bool, **dimse: Any) -> None:
    """C-ECHO a DICOM peer (dimse://CALLED_AE@host:port). Exit 0 if it answers, else 1."""
    address = _run(lambda: DimseAddress.parse(url))
    options = _run(lambda: _build_dimse_options(**dimse))
    result = _dimse("C-ECHO", lambda: c_echo(address, options))
    click.echo(f"C-ECHO {address}: success in {result.round_trip_ms:.1f} ms")
    if show_contexts:
        for context in result.contexts:
            click.echo(f"  accepted {context}")


@cli.command()
@click.argument("url")
@click.option(
    "--level",
    type=click.Choice(["patient", "study", "series", "image"]),
    default="study",
    show_default=True,
)
@click.option(
    "--model",
    type=click.Choice(["study", "patient"]),
    default="study",
    show_default=True,
    help="Query/retrieve information model (root).",
)
@click.option(
    "-q",
    "--query",
    "queries",
    multiple=True,
    metavar="KEYWORD=VALUE",
    help="Matching key, e.g. -q PatientName=DOE* -q StudyDate=20240101-20241231.",
)
@click.option("--return-key", "return_keys", multiple=True, help="Extra keyword to return.")
@click.option("--limit", type=int, default=None, help="Stop (C-CANCEL) after N matches.")
@click.option(
    "--cohort",
    default=None,
    help="CSV with an AccessionNumber, PatientID or StudyInstanceUID column: "
    "one C-FIND per row, results joined.",
)
@click.option("--out", required=True, help="Parquet file to write.")
@_dimse_options
def query(
    url: str,
    level: str,
    model: str,
    queries: tuple[str, ...],
    return_keys: tuple[str, ...],
    limit: int | None,
    cohort: str | None,
    out: str,
    **dimse: Any,
) -> None:
    """C-FIND a DICOM peer and write the matches as Parquet (typed like instances)."""
    address = _run(lambda: DimseAddress.parse(url))
    options = _run(lambda: _build_dimse_options(**dimse))
    matching = _run(lambda: _parse_queries(queries))
    find_level, find_model = cast(Level, level), cast(Model, model)
    if cohort:
        column, values = _run(lambda: read_cohort(cohort))
        table = _dimse(
            "C-FIND",
            lambda: find_cohort(
                address,
                find_level,
                column,
                values,
                query=matching,
                model=find_model,
                return_keys=return_keys,
                options=options,
            ),
        )
    else:
        table = _dimse(
            "C-FIND",
            lambda: find_table(
                address,
                find_level,
                matching,
                model=find_model,
                return_keys=return_keys,
                limit=limit,
                options=options,
            ),
        )
    pq.write_table(table, out, compression="zstd")
    click.echo(f"matches: {table.num_rows}  written: {out}")


@cli.command()
@click.argument("src", nargs=-1, required=True)
@click.option("--to", "url", required=True, help="The peer: dimse://CALLED_AE@host:port.")
@click.option(
    "--commit",
    "commit_port",
    type=int,
    default=None,
    metavar="PORT",
    help="Then request Storage Commitment; the peer's report is accepted on PORT "
    "(or on the same association).",
)
@click.option(
    "--commit-timeout", type=float, default=60.0, show_default=True, help="Seconds to wait."
)
@_dimse_options
def send(
    src: tuple[str, ...],
    url: str,
    commit_port: int | None,
    commit_timeout: float,
    **dimse: Any,
) -> None:
    """C-STORE files or folders to a DICOM peer. Exit 0 if all were stored (and committed,
    with --commit), 3 if some failed."""
    from dicomflow.connectors.dimse.commitment import request_commitment
    from dicomflow.connectors.dimse.store import c_store

    address = _run(lambda: DimseAddress.parse(url))
    options = _run(lambda: _build_dimse_options(**dimse))
    paths = sorted(
        p
        for s in src
        for p in (Path(s).rglob("*") if Path(s).is_dir() else [Path(s)])
        if p.is_file()
    )
    outcomes = _dimse("C-STORE", lambda: c_store(address, paths, options))
    failed = [o for o in outcomes if not o.ok]
    click.echo(f"sent: {len(outcomes) - len(failed)}  failed: {len(failed)}")
    for outcome in failed[:20]:
        click.echo(f"  not stored: {outcome.path} ({outcome.message})", err=True)
    uncommitted = 0
    if commit_port is not None:
        sent = [(o.sop_class_uid, o.sop_instance_uid) for o in outcomes if o.ok]
        result = _dimse(
            "storage commitment",
            lambda: request_commitment(
                address, sent, options, report_port=commit_port, timeout=commit_timeout
            ),
        )
        uncommitted = len(result.failed) + len(result.missing)
        click.echo(
            f"committed: {len(result.committed)}  failed: {len(result.failed)}  "
            f"unreported: {len(result.missing)}"
        )
        for uid, reason in list(result.failed.items())[:20]:
            code = f"0x{reason:04X}" if reason is not None else "no reason given"
            click.echo(f"  not committed: {uid} ({code})", err=True)
    sys.exit(EXIT_INPUT_ERRORS if failed or uncommitted else EXIT_OK)


@cli.command()
@click.option("--ae", "ae_title", required=True, help="Our AE title as a Storage SCP.")
@click.option("--port", type=int, required=True, help="Port to listen on.")
@click.option("--out", required=True, help="Lake directory to write.")
@click.option("--pixels/--no-pixels", default=False, help="Also write image stacks to Zarr.")
@click.option("--allow", "allowed", multiple=True, help="Calling AE titles to accept (repeat).")
@click.option(
    "--batch-seconds",
    type=float,
    default=5.0,
    show_default=True,
    help="How often received instances are ingested.",
)
@click.option("--host", default="0.0.0.0", show_default=True, help="Address to bind.")  # noqa: S104
@click.option("--workers", type=int, default=None, help="Local worker processes.")
@click.option("--scheduler", default=None, help="Dask scheduler address.")
@_dimse_options
def listen(
    ae_title: str,
    port: int,
    out: str,
    pixels: bool,
    allowed: tuple[str, ...],
    batch_seconds: float,
    host: str,
    workers: int | None,
    scheduler: str | None,
    **dimse: Any,
) -> None:
    """Receive pushed instances (C-STORE) and ingest them in micro-batches, until stopped.

    TLS: --tls-cert/--tls-key serve TLS; with --tls-ca, callers must present a
    certificate signed by it.
    """
    from dicomflow.api import connect_client
    from dicomflow.pipelines.listen import listen as run_listen

    options = _run(lambda: _build_dimse_options(**dimse))

    def report(summary: RunSummary) -> None:
        click.echo(f"batch: files {summary.files}  rows {summary.rows}  errors {summary.errors}")

    with connect_client(None, scheduler, workers) as client:
        click.echo(f"listening as {ae_title} on {host}:{port}; stop with Ctrl-C")
        totals = run_listen(
            client,
            ae_title=ae_title,
            port=port,
            out=out,
            pixels=pixels,
            options=options,
            allowed_callers=frozenset(allowed) or None,
            batch_seconds=batch_seconds,
            host=host,
            on_batch=report,
        )
    _print_summary(totals, out)


def _config_error(message: str) -> None:
    raise ConfigError(message)


@cli.command()
@click.argument("spec_file", metavar="SPEC.yaml")
@click.option(
    "--set",
    "sets",
    multiple=True,
    metavar="PATH=VALUE",
    help="Override a field, e.g. --set sinks.0.path=/data/lake (repeat).",
)
def validate(spec_file: str, sets: tuple[str, ...]) -> None:
    """Check a pipeline spec; print it with every default filled in. Exit 0 or 2."""
    from dicomflow.spec_runner import load_spec

    spec = _run(lambda: load_spec(spec_file, sets))
    click.echo(spec.to_yaml(), nl=False)
    click.echo(f"# valid: {spec.name}", err=True)


@cli.command(name="run")
@click.argument("spec_file", metavar="SPEC.yaml")
@click.option("--set", "sets", multiple=True, metavar="PATH=VALUE", help="Override a field.")
@click.option(
    "--max-error-rate",
    type=click.FloatRange(0.0, 1.0),
    default=None,
    help="Exit 3 when more than this fraction of inputs failed (default: the spec's limit).",
)
@click.option("--progress/--no-progress", default=None, help="Force the progress bar on or off.")
def run_command(
    spec_file: str, sets: tuple[str, ...], max_error_rate: float | None, progress: bool | None
) -> None:
    """Run a pipeline spec (YAML). Exit 0 all good, 3 too many failed inputs, 2 config
    error, 1 crash."""
    from dicomflow.spec_runner import load_spec, run_spec

    spec = _run(lambda: load_spec(spec_file, sets))
    summary = _dimse("run", lambda: run_spec(spec, progress=progress))
    _print_summary(summary, spec.lake.path)
    limit = spec.limits.max_error_rate if max_error_rate is None else max_error_rate
    if not summary.accounted:
        click.echo("error: some inputs were neither written nor reported as errors", err=True)
        sys.exit(EXIT_CRASH)
    rate = summary.errors / summary.files if summary.files else 0.0
    if rate > limit:
        click.echo(f"error rate {rate:.1%} is above the limit {limit:.1%}", err=True)
        sys.exit(EXIT_INPUT_ERRORS)
    sys.exit(EXIT_OK)


def _parse_queries(queries: tuple[str, ...], option: str = "-q") -> dict[str, str]:
    matching = {}
    for item in queries:
        keyword, sep, value = item.partition("=")
        if not sep or not keyword:
            raise ConfigError(f"each {option} takes KEYWORD=VALUE")
        matching[keyword.strip()] = value
    return matching


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


def _dimse(label: str, job: Callable[[], T]) -> T:
    """Run a job that talks to a peer (DIMSE or DICOMweb): configuration errors exit 2, a
    failing peer exits 1, both clearly."""
    try:
        return _run(job)
    except (DimseError, DicomwebError) as exc:
        click.echo(f"{label} failed: {exc}", err=True)
        sys.exit(EXIT_CRASH)


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
