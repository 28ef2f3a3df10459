"""The ``anonymize`` operator: each input is de-identified and written as a new DICOM file.

Records come in with only a source reference; they leave pointing at the
de-identified file, so every later operator (flatten, pixels) and every
output sees only de-identified data. Before anything is read, each record is
relabelled with a keyed pseudonym of its source, so even an error row never
shows the original path (file names can carry PHI). A failure of any kind is
an error row; the instance is never passed through.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, ClassVar

import fsspec

from dicomflow.anonymize.config import deidentifier
from dicomflow.anonymize.engine import Deidentifier
from dicomflow.anonymize.values import quiet_pydicom
from dicomflow.connectors.files import FilesConnector
from dicomflow.errors import ConfigError, DeidentificationError
from dicomflow.lake.dicom_files import DICOM_DIR, DicomFiles
from dicomflow.lake.ledger import input_identity
from dicomflow.operators.base import FileOutput, OperatorKind, Outputs, RunSettings, map_records
from dicomflow.records import Batch, InstanceRecord, SourceRef
from dicomflow.schemas.spec import AnonymizeOperator

SERIES_OUTPUT = "series_uid"


def build_deidentifier(config: AnonymizeOperator) -> Deidentifier:
    """The de-identifier a spec's ``anonymize`` entry describes (the one place it is
    built from settings); every problem is a :class:`ConfigError`, before any work."""
    if config.key_ref is not None:
        raise ConfigError(
            f"anonymize names the key {config.key_ref!r} given to dicomflow.run; "
            "none of that name was given"
        )
    return deidentifier(
        key_file=config.key_file,
        key_env=config.key_env,
        profile=config.profile,
        options=config.options,
        keep=config.keep,
        overrides=config.actions,
        pixel_rules=config.pixel_rules,
        safe_private=config.safe_private,
        vocabulary=config.vocabulary,
        keep_mapping=config.mapping is not None,
    )


MAPPING_OUTPUT = "mapping"
PROOF_OUTPUT = "proof"  # the fingerprints of what was removed, when the run proves


@dataclass(frozen=True)
class Anonymize:
    """De-identify every input with ``deidentifier`` and write it to ``destination``.

    ``label_outputs``: show the written file's path as the record's source (when
    the de-identified files are a kept output); otherwise the pseudonymous input id.
    """

    deidentifier: Deidentifier
    reader: FilesConnector
    destination: DicomFiles
    label_outputs: bool = False

    name: ClassVar[str] = "anonymize"
    kind: ClassVar[OperatorKind] = "instance"
    Config: ClassVar[type[AnonymizeOperator]] = AnonymizeOperator
    outputs: ClassVar[Outputs] = Outputs(
        files=(FileOutput(DICOM_DIR + "/{study}/{series}/{sop}.dcm"),)
    )
    needs_pixels: ClassVar[bool] = False

    @classmethod
    def build(cls, config: AnonymizeOperator, run: RunSettings) -> Anonymize:
        """De-identify into the lake's ``dicom/`` folder (the key from the spec's file or
        variable: a ``key_ref`` is resolved by :func:`dicomflow.run` instead)."""
        return cls(
            build_deidentifier(config),
            FilesConnector((), dict(run.source_storage_options)),
            DicomFiles(run.lake),
            label_outputs=True,
        )

    def __call__(self, batch: Batch) -> Batch:
        pseudonyms = self.deidentifier.pseudonyms
        relabelled = batch.replace_records(
            [InstanceRecord(pseudonyms.labelled(r.ref), error=r.error) for r in batch.records]
        )
        fs_cache: dict[str, fsspec.AbstractFileSystem] = {}
        with quiet_pydicom():
            return map_records(relabelled, self.name, lambda r: self._one(r, fs_cache))

    def _one(self, record: InstanceRecord, fs_cache: dict[str, Any]) -> InstanceRecord:
        try:
            data = self.reader.read_bytes(record.ref, fs_cache)
        except OSError as exc:
            raise DeidentificationError(f"cannot read the input ({type(exc).__name__})") from None
        result = self.deidentifier.instance(data)
        path = self.destination.write(
            result.study_uid, result.series_uid, result.sop_uid, result.data
        )
        label = None if self.label_outputs else record.ref.label
        written = SourceRef(path, len(result.data), None, label, input_identity(record.ref))
        out = InstanceRecord(written, outputs={SERIES_OUTPUT: result.series_uid or None})
        if self.deidentifier.proof_key is not None:
            out = out.with_output(PROOF_OUTPUT, (result.fingerprints, result.unchecked))
        if result.mapping:
            out = out.with_output(
                MAPPING_OUTPUT, (record.ref.url, record.ref.label, result.mapping)
            )
        return out
