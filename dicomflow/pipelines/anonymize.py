"""The de-identification stage of ``ingest --anonymize``.

Stage one de-identifies every input (one task per partition) and writes the
new files into the lake: under ``dicom/`` when de-identified DICOM is a
requested output, else under a staging folder that is removed after the run.
Stage two is the ordinary ingest over those files, so the instances table,
Zarr arrays and every other output are made only from de-identified data.

On the client, inputs are relabelled with keyed pseudonyms and partitions are
renamed with a keyed digest before any task is built, so neither error rows,
logs nor Dask task keys carry an original path.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import pyarrow as pa
from distributed import Client

from dicomflow.anonymize.engine import Deidentifier
from dicomflow.connectors.files import FilesConnector
from dicomflow.errors import ConfigError
from dicomflow.lake.dicom_files import DicomFiles
from dicomflow.lake.layout import LakeLayout
from dicomflow.lake.writer import write_table_file
from dicomflow.operators.anonymize import MAPPING_OUTPUT, SERIES_OUTPUT, Anonymize
from dicomflow.pipelines.deid_proof import FINGERPRINTS_TABLE, fingerprint_table
from dicomflow.pipelines.pipeline import (
    PartitionResult,
    RunSummary,
    error_codes,
    execute,
    task,
    task_key,
    timed,
)
from dicomflow.pipelines.plan import Partition
from dicomflow.pipelines.sinks import LakeSink
from dicomflow.records import Batch, InstanceRecord, RunContext, SourceRef

WRITTEN_TABLE = "deidentified"
WRITTEN_SCHEMA = pa.schema(
    [
        ("url", pa.string()),
        ("size", pa.int64()),
        ("label", pa.string()),
        ("identity", pa.string()),
        ("series", pa.string()),
    ]
)
MAPPING_SCHEMA = pa.schema(
    [
        ("source", pa.string()),
        ("input_id", pa.string()),
        ("kind", pa.string()),
        ("original", pa.string()),
        ("pseudonym", pa.string()),
    ]
)


@dataclass(frozen=True)
class AnonymizeSettings:
    """How ``ingest`` de-identifies: the engine, and which extra outputs it keeps.

    ``mapping_dir`` (optional) receives the honest-broker mapping, original →
    pseudonym; it must be given explicitly and may not lie inside the lake.
    """

    deidentifier: Deidentifier
    write_dicom: bool = False
    mapping_dir: str | None = None

    def fingerprint(self) -> dict[str, Any]:
        """What about de-identification changes the outputs (the key only as a keyed
        digest, so it can be recorded in the ledger)."""
        engine = self.deidentifier
        return {
            "profile": sorted(o.value for o in engine.profile.options),
            "overrides": {f"{t:08X}": a.value for t, a in sorted(engine.profile.overrides.items())},
            "pseudonymize_patient": engine.profile.pseudonymize_patient,
            "key": engine.pseudonyms.digest("fingerprint", "ledger").hex()[:16],
            "safe_private": len(engine.safe_private),
            "vocabulary": len(engine.vocabulary),
            "pixel_rules": repr(engine.pixel_rules),
            "dicom": self.write_dicom,
        }


def check_mapping_dir(settings: AnonymizeSettings, layout: LakeLayout) -> None:
    """The mapping identifies patients: it must never be written into the lake."""
    if settings.mapping_dir is None:
        return
    mapping = LakeLayout(settings.mapping_dir).root.rstrip("/") + "/"
    lake = layout.root.rstrip("/") + "/"
    if mapping.startswith(lake) or lake.startswith(mapping):
        raise ConfigError("the honest-broker mapping must be written outside the lake")


def deidentify_partition(
    partition: Partition,
    operator: Anonymize,
    sinks: Sequence[LakeSink],
    context: RunContext,
    mapping_dir: str | None,
) -> PartitionResult:
    """Task: de-identify one partition's inputs, commit its error rows, list what was written."""
    started = time.time()
    batch = operator(Batch(tuple(InstanceRecord(ref) for ref in partition.refs), context))
    failed = [r for r in batch.records if r.failed]
    if failed:
        for sink in sinks:
            sink.write(batch.replace_records(failed), partition)
    written = [r for r in batch.records if not r.failed]
    table = pa.table(
        {
            "url": [r.ref.url for r in written],
            "size": [r.ref.size for r in written],
            "label": [r.ref.label for r in written],
            "identity": [r.ref.identity for r in written],
            "series": [r.outputs.get(SERIES_OUTPUT) for r in written],
        },
        schema=WRITTEN_SCHEMA,
    )
    if mapping_dir is not None:
        _write_mapping(mapping_dir, partition.name, written)
    result = PartitionResult(
        partition.index,
        len(batch.records),
        0,
        len(failed),
        error_codes(failed),
        {WRITTEN_TABLE: table, FINGERPRINTS_TABLE: fingerprint_table(written)},
    )
    return timed(result, started, partition)


def _write_mapping(mapping_dir: str, part_name: str, records: Sequence[InstanceRecord]) -> None:
    rows: list[dict[str, str | None]] = []
    for record in records:
        if MAPPING_OUTPUT not in record.outputs:
            continue
        source, input_id, pairs = record.outputs[MAPPING_OUTPUT]
        rows.extend(
            {"source": source, "input_id": input_id, "kind": k, "original": o, "pseudonym": p}
            for k, o, p in pairs
        )
        rows.append(
            {
                "source": source,
                "input_id": input_id,
                "kind": "file",
                "original": source,
                "pseudonym": record.ref.url,
            }
        )
    write_table_file(
        f"{mapping_dir.rstrip('/')}/{part_name}.parquet",
        pa.Table.from_pylist(rows, schema=MAPPING_SCHEMA),
    )


def keyed_refs(refs: Sequence[SourceRef], deidentifier: Deidentifier) -> list[SourceRef]:
    """Inputs labelled with keyed pseudonyms of their sources: partition names, task keys,
    error rows and ledger identities are then all derived from the pseudonyms."""
    return [deidentifier.pseudonyms.labelled(r) for r in refs]


def run_deidentify(
    client: Client,
    partitions: Sequence[Partition],
    *,
    reader: FilesConnector,
    sinks: Sequence[LakeSink],
    settings: AnonymizeSettings,
    context: RunContext,
    progress: bool | None,
    retries: int,
) -> tuple[RunSummary, DicomFiles, list[tuple[SourceRef, str | None]]]:
    """Stage one on the cluster: the summary (error rows only), where the files went,
    and each written file with its (pseudonymous) series UID."""
    layout = sinks[0].layout
    check_mapping_dir(settings, layout)
    destination = (
        DicomFiles(layout) if settings.write_dicom else DicomFiles.staging(layout, context.run_id)
    )
    operator = Anonymize(
        settings.deidentifier, reader, destination, label_outputs=settings.write_dicom
    )
    keyed = list(partitions)
    jobs = [
        (
            part,
            task(
                deidentify_partition,
                part,
                operator,
                sinks,
                context,
                settings.mapping_dir,
                key=task_key("deidentify", context, part.name),
            ),
        )
        for part in keyed
    ]
    summary = RunSummary(context.run_id, files=sum(len(p.refs) for p in keyed))
    execute(client, jobs, summary, sinks=sinks, context=context, progress=progress, retries=retries)
    written: list[tuple[SourceRef, str | None]] = []
    for table in summary.tables.pop(WRITTEN_TABLE, []):
        for row in table.to_pylist():
            ref = SourceRef(row["url"], row["size"], None, row["label"], row["identity"])
            written.append((ref, row["series"]))
    written.sort(key=lambda item: item[0].url)
    return summary, destination, written
