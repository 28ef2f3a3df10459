"""The one compiler: a :class:`PipelineSpec` becomes the Dask work of a run.

The CLI's flags, the keywords of :func:`dicomflow.ingest` and YAML all build a
spec; :func:`compile_spec` resolves it once, on the client, into plain picklable
parts, and :meth:`CompiledPipeline.run` runs them on a ``distributed`` client:

- the source, from ``dicomflow.sources``: a listing source (files, buckets or a
  plugin's), a peer (retrieved first into ``<lake>/_retrieved``) or a listener
  (each micro-batch of received files runs through this same pipeline);
- the operators, from ``dicomflow.operators``, in the order listed. Instance
  operators are fused per partition (or per series' reading task), those that
  read decoded pixels inside one :class:`WithImages` (decoded once); the
  ``pixels`` series operator runs as the series graphs of :mod:`.ingest` (whose
  reading tasks encode the stacks' chunks from that same decode), and the
  series operators listed after it (built-in or a plugin's,
  :mod:`dicomflow.operators.series`) run in the task that commits each series;
- the sinks, from ``dicomflow.sinks``: the lake, which writes every table the
  operators declare, and operator sinks (``store``) that run after every other
  instance operator.

What the spec cannot hold (a client, a key held in memory) comes in
:class:`Resources`.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Callable, Mapping, Sequence
from contextlib import AbstractContextManager
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

import pyarrow as pa
from distributed import Client

from dicomflow._version import __version__
from dicomflow.anonymize.engine import Deidentifier
from dicomflow.connectors.dicomweb.metadata import DicomwebMetadata
from dicomflow.connectors.dimse.address import DimseAddress
from dicomflow.connectors.files import FilesConnector
from dicomflow.connectors.peers import DimsePeer, Peer
from dicomflow.errors import ConfigError
from dicomflow.lake.dicom_files import remove_files
from dicomflow.lake.layout import LakeLayout
from dicomflow.lake.ledger import config_digest
from dicomflow.lake.watermark import Watermark
from dicomflow.operators.anonymize import build_deidentifier
from dicomflow.operators.base import Operator, RunSettings, TableOutput
from dicomflow.operators.images import WithImages
from dicomflow.pipelines.anonymize import AnonymizeSettings, check_mapping_dir
from dicomflow.pipelines.cluster import connect_client
from dicomflow.pipelines.commitment import commit_sent
from dicomflow.pipelines.endpoints import Listener, dimse_options
from dicomflow.pipelines.ingest import IngestOptions, run_ingest
from dicomflow.pipelines.job_size import extra_decode_seconds
from dicomflow.pipelines.pipeline import RunSummary, new_run_id
from dicomflow.pipelines.plan import PartitionPolicy
from dicomflow.pipelines.report import write_report
from dicomflow.pipelines.sinks import commit_records
from dicomflow.records import RunContext
from dicomflow.registry import operators as operator_registry
from dicomflow.registry import sinks as sink_registry
from dicomflow.registry import sources as source_registry
from dicomflow.schemas import instances_schema
from dicomflow.schemas.spec import (
    AnonymizeOperator,
    DicomSink,
    DimseSink,
    DimseSource,
    LakeSink,
    OperatorConfig,
    PipelineSpec,
    PixelsOperator,
)

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class Resources:
    """What a run needs that a spec cannot hold.

    ``client``: run there (else the spec's cluster, chosen by the job's size);
    ``deidentifiers``: de-identifiers built in Python, named by an ``anonymize``
    entry's ``key_ref``; ``policy``: how inputs are cut into partitions;
    ``on_batch``/``stop``: a listener's callbacks.
    """

    client: Client | None = None
    progress: bool | None = None
    deidentifiers: Mapping[str, Deidentifier] = field(default_factory=dict)
    policy: PartitionPolicy | None = None
    read_once: bool = True
    on_batch: Callable[[RunSummary], Any] | None = None
    stop: Any = None  # a threading.Event that ends a listener


@dataclass(frozen=True)
class CompiledPipeline:
    """A spec resolved into what runs: its source, the ingest options (operators in
    order, declared tables), de-identification, and where the lake is."""

    spec: PipelineSpec
    source: Any
    options: IngestOptions
    anonymize: AnonymizeSettings | None
    lake: LakeLayout
    resources: Resources
    lake_operators: tuple[Any, ...] = ()  # kind "lake": run by after_run

    @property
    def decodes(self) -> bool:
        """Whether the run decodes images (the pixels operator, or one that asks)."""
        return self.options.pixels or any(
            isinstance(op, WithImages) for op in self.options.operators
        )

    def connect(
        self, inputs: int | None = None, input_bytes: int | None = None, decode_seconds: float = 0.0
    ) -> AbstractContextManager[Client]:
        cluster = self.spec.cluster
        return connect_client(
            self.resources.client,
            cluster.scheduler,
            cluster.workers,
            inputs=inputs,
            input_bytes=input_bytes,
            pixels=self.decodes,
            decode_seconds=decode_seconds,
        )

    def run(self) -> RunSummary:
        """Run the pipeline to its end (a listener: until stopped) and return its summary."""
        if isinstance(self.source, Listener):
            return self._listen()
        if isinstance(self.source, Peer):
            return self._retrieve_and_ingest(self.source)
        listing = self.source.query()  # listed once, on the client, to size the job
        inputs = len(listing.refs) + len(listing.failures)
        sizes = [ref.size for ref in listing.refs]
        known = None if any(s is None for s in sizes) else sum(s or 0 for s in sizes)
        decode = 0.0
        if self.decodes and listing.refs and isinstance(self.source, FilesConnector):
            decode = extra_decode_seconds(self.source, listing.refs[0])
        with self.connect(inputs, known, decode) as client:
            return self.after_run(client, self.ingest(client, self.source, listed=listing))

    def after_run(self, client: Client, summary: RunSummary) -> RunSummary:
        """What runs once the run's outputs are committed: each lake operator over the
        lake (its rows and error rows committed like a partition's), then Storage
        Commitment of what was sent to each DIMSE sink that asks for it (see
        :mod:`.commitment`); the report is written again with their error rows."""
        asking = [s for s in self.spec.sinks if isinstance(s, DimseSink) and s.commit]
        if not asking and not self.lake_operators:
            return summary
        context = RunContext(summary.run_id, datetime.now(UTC))
        for operator in self.lake_operators:
            records = operator.on_lake(client, self.lake)
            if records:  # one partition named by the operator and the run
                name = f"{operator.name}-{context.run_id}"
                config = f"lake-{operator.name}"
                tables = operator.outputs.tables
                commit_records(self.lake, config, name, records, context, tables)
                summary.add_faults(records)  # each concerns an instance that keeps its row
        for sink in asking:
            commit_sent(
                summary,
                self.lake,
                context,
                DimseAddress.parse(sink.url),
                dimse_options(sink),
                report_port=sink.commit_port,
                timeout=sink.commit_timeout,
            )
        summary.report = write_report(
            summary, self.lake, name=self.spec.name, started_at=context.started_at
        )
        return summary

    def ingest(
        self,
        client: Client,
        source: Any,
        *,
        context: RunContext | None = None,
        not_retrieved: int = 0,
        listed: Any = None,
        source_storage_options: dict[str, Any] | None = None,
    ) -> RunSummary:
        """Run the operators and sinks over ``source``'s inputs."""
        return run_ingest(
            client,
            source,
            out=self.lake.root,
            options=self.options,
            storage_options=self.lake.storage_options,
            source_storage_options=source_storage_options,
            policy=self.resources.policy,
            progress=self.resources.progress,
            retries=self.spec.limits.retries,
            anonymize=self.anonymize,
            name=self.spec.name,
            context=context,
            not_retrieved=not_retrieved,
            listing=listed,
        )

    def _retrieve_and_ingest(self, peer: Peer) -> RunSummary:
        """Retrieve what the query names into the lake, then ingest it in the same run
        (its ``not_retrieved`` rows included in the summary and the report)."""
        # Retrieval brings pynetdicom and the Storage SCP: imported by the runs that retrieve.
        from dicomflow.pipelines.late_arrivals import late_studies
        from dicomflow.pipelines.retrieve import report_missing, retrieve

        source = self.spec.source
        query = dict(getattr(source, "query", {}) or {})
        if isinstance(source, DimseSource) and source.cohort:
            query = cohort_query(source, peer)
        watermark = Watermark(self.lake, self.spec.name)
        incremental = isinstance(source, DimseSource) and self.spec.incremental
        run_started = datetime.now(UTC).date()
        also: list[dict[str, str]] = []
        if incremental and self.spec.late_arrivals and watermark.read() is not None:
            assert isinstance(peer, DimsePeer)
            late = late_studies(
                peer, query, self.lake, today=run_started, look_back_days=self.spec.look_back_days
            )
            also = [{**query, "StudyInstanceUID": "\\".join(late)}] if late else []
        if incremental:
            query = watermark.narrow(query)
        context = RunContext(new_run_id(), datetime.now(UTC))
        with self.connect() as client:
            paths, lost = retrieve(
                client,
                peer,
                query,
                layout=self.lake,
                max_associations=self.spec.limits.max_associations,
                also=also,
            )
            missing = report_missing(self.lake, peer, lost, context, query)
            summary = self.ingest(
                client,
                paths,
                context=context,
                not_retrieved=missing,
                source_storage_options=self.lake.storage_options,
            )
            if self.anonymize is not None and paths:
                remove_files(self.lake, paths)  # originals must not stay in a de-identified lake
            summary = self.after_run(client, summary)
        if incremental and summary.accounted:
            watermark.advance(run_started)
        return summary

    def _listen(self) -> RunSummary:
        from dicomflow.pipelines.listen import listen

        listener = self.source
        assert isinstance(listener, Listener)
        with self.connect() as client:

            def ingest_batch(files: list[str]) -> RunSummary:
                summary = self.ingest(
                    client, files, source_storage_options=self.lake.storage_options
                )
                if self.anonymize is not None:  # what was received is not de-identified
                    remove_files(self.lake, files)
                return self.after_run(client, summary)

            return listen(
                listener,
                lake=self.lake,
                ingest=ingest_batch,
                stop=self.resources.stop,
                on_batch=self.resources.on_batch,
            )


def compile_spec(spec: PipelineSpec, resources: Resources | None = None) -> CompiledPipeline:
    """Resolve ``spec`` into a :class:`CompiledPipeline`; every problem with it is a
    :class:`ConfigError` raised here, before any work starts."""
    resources = resources or Resources()
    lake_config: LakeSink = spec.lake
    lake = LakeLayout(lake_config.path, dict(lake_config.storage_options))
    source_unit = source_registry.get(spec.source.kind)
    anonymize = _anonymize(spec, lake, resources)
    read_storage = _read_storage(spec, lake, anonymize)
    run = RunSettings(lake, read_storage, spec.limits.max_associations, spec.name, spec.source)
    source = source_unit.build(spec.source, run)
    instance_ops: list[Operator] = []
    wants_pixels: list[bool] = []
    tables: list[TableOutput] = []
    columns: list[pa.Field] = []
    fingerprints: list[tuple[str, str]] = []
    pixels: PixelsOperator | None = None
    series_ops: list[Operator] = []
    lake_ops: list[Any] = []
    for config in spec.operators:
        unit = operator_registry.get(config.name)
        _claim_tables(tables, unit.outputs.tables, config.name)
        _claim_columns(columns, unit.outputs.added_columns, config.name)
        if config.name == "anonymize":
            continue  # de-identification runs first, on every input (see run_ingest)
        fingerprints.append((config.name, settings_digest(config)))
        if isinstance(config, PixelsOperator):
            pixels = config
            continue
        if unit.kind == "lake":  # runs once the run is committed, over the whole lake
            lake_ops.append(unit.build(config, run))
            continue
        if unit.kind == "series":  # runs on each series once pixels wrote its stacks
            if pixels is None:
                raise ConfigError(
                    f"operator {config.name!r} is a series operator: list it after "
                    "'pixels', which assembles the series and writes their stacks"
                )
            series_ops.append(unit.build(config, run))
            continue
        instance_ops.append(unit.build(config, run))
        wants_pixels.append(bool(unit.needs_pixels))
    instance_ops = with_images(instance_ops, wants_pixels, run)
    for sink in spec.sinks:
        built = sink_registry.get(sink.kind).build(sink, run)
        if built is not None:  # a sink that runs as the last instance operator
            instance_ops.append(built)
            _claim_tables(tables, built.outputs.tables, f"sink:{sink.kind}")
            fingerprints.append((f"sink:{sink.kind}", settings_digest(sink)))
    if isinstance(source, DicomwebMetadata) and (
        pixels is not None or any(wants_pixels) or anonymize is not None or len(spec.sinks) > 1
    ):
        raise ConfigError(
            "a header-only DICOMweb scan brings no pixel data and no files: pixels, "
            "de-identification and sending need whole instances (dicomflow ingest)"
        )
    options = IngestOptions(
        pixels=pixels is not None,
        frames_per_chunk=pixels.frames_per_chunk if pixels else 1,
        expand_palette=pixels.expand_palette if pixels else False,
        pyramid=pixels.pyramid if pixels else False,
        operators=tuple(instance_ops),
        series_operators=tuple(series_ops),
        tables=tuple(tables),
        columns=tuple(columns),
        read_once=resources.read_once,
        fingerprints=tuple(fingerprints),
    )
    return CompiledPipeline(spec, source, options, anonymize, lake, resources, tuple(lake_ops))


def with_images(
    operators: Sequence[Operator], wants_pixels: Sequence[bool], run: RunSettings
) -> list[Operator]:
    """``operators`` with those from the first that reads decoded pixels to the last
    run inside one :class:`WithImages`, so each instance is decoded once."""
    asking = [i for i, wants in enumerate(wants_pixels) if wants]
    if not asking:
        return list(operators)
    first, last = asking[0], asking[-1] + 1
    wrapped = WithImages(tuple(operators[first:last]), dict(run.source_storage_options))
    return [*operators[:first], wrapped, *operators[last:]]


def run(spec: PipelineSpec, resources: Resources | None = None) -> RunSummary:
    """Compile ``spec`` and run it."""
    return compile_spec(spec, resources).run()


def settings_digest(config: OperatorConfig | Any) -> str:
    """A digest of one step's settings, as the ledger records it."""
    return config_digest({"settings": json.loads(config.model_dump_json()), "v": __version__})


def _claim_tables(
    tables: list[TableOutput], declared: Sequence[TableOutput], operator: str
) -> None:
    taken = {t.name for t in tables}
    for table in declared:
        if table.name in taken:
            raise ConfigError(f"operator {operator!r} declares table {table.name!r} again")
        tables.append(table)


def _claim_columns(columns: list[pa.Field], added: Sequence[pa.Field], operator: str) -> None:
    taken = {c.name for c in columns} | set(instances_schema().names)
    for column in added:
        if column.name in taken:
            raise ConfigError(f"operator {operator!r} adds column {column.name!r}, which exists")
        columns.append(column)


def _anonymize(
    spec: PipelineSpec, lake: LakeLayout, resources: Resources
) -> AnonymizeSettings | None:
    config = spec.operator("anonymize")
    if not isinstance(config, AnonymizeOperator):
        return None
    if config.key_ref is not None and config.key_ref in resources.deidentifiers:
        engine = resources.deidentifiers[config.key_ref]
    else:  # from the spec's key file or variable (an unknown key_ref is a ConfigError)
        engine = build_deidentifier(config)
    write_dicom = any(isinstance(s, DicomSink) for s in spec.sinks)
    settings = AnonymizeSettings(engine, write_dicom=write_dicom, mapping_dir=config.mapping)
    check_mapping_dir(settings, lake)
    return settings


def _read_storage(
    spec: PipelineSpec, lake: LakeLayout, anonymize: AnonymizeSettings | None
) -> dict[str, Any]:
    """How the files the operators read are reached: the source's own options for files
    read in place, the lake's for files retrieved or de-identified into it."""
    source_options = getattr(spec.source, "storage_options", None)
    if anonymize is not None or source_options is None:
        return dict(lake.storage_options)
    return dict(source_options)


def cohort_query(source: DimseSource, peer: Peer) -> dict[str, str]:
    """One C-FIND per cohort row (batched), then one query listing every study found."""
    from dicomflow.connectors.dimse.find import find_cohort, read_cohort

    assert source.cohort is not None
    column, values = read_cohort(source.cohort)
    address = peer.address  # type: ignore[attr-defined]
    options = peer.options  # type: ignore[attr-defined]
    table = find_cohort(address, "study", column, values, query=source.query, options=options)
    studies = sorted({str(u) for u in table.column("StudyInstanceUID").to_pylist() if u})
    if not studies:
        raise ConfigError("no study of the cohort was found on the PACS")
    return {"StudyInstanceUID": "\\".join(studies)}
