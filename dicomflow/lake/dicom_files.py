"""Write DICOM files into a lake: ``<root>/<study>/<series>/<sop>.dcm``, atomically.

Every path component comes from a UID and is validated
(:func:`~dicomflow.lake.layout.safe_uid_component`), so a hostile value can
never climb out of the lake.
"""

from __future__ import annotations

import hashlib
import os
import uuid
from dataclasses import dataclass
from pathlib import Path

from fsspec.implementations.local import LocalFileSystem

from dicomflow.errors import SinkError
from dicomflow.lake.layout import LakeLayout, safe_uid_component

DICOM_DIR = "dicom"
STAGING_DIR = "_staging"


@dataclass(frozen=True)
class DicomFiles:
    """A folder of DICOM files inside a lake (``dicom/`` or a run's staging folder)."""

    layout: LakeLayout
    folder: str = DICOM_DIR

    @classmethod
    def staging(cls, layout: LakeLayout, run_id: str) -> DicomFiles:
        return cls(layout, f"{STAGING_DIR}/{safe_uid_component(run_id.replace('-', '.'))}")

    def root(self) -> str:
        _, root = self.layout.filesystem()
        return f"{root}/{self.folder}"

    def path_for(self, study_uid: str, series_uid: str, sop_uid: str) -> str:
        parts = (safe_uid_component(study_uid), safe_uid_component(series_uid))
        return f"{self.root()}/{parts[0]}/{parts[1]}/{safe_uid_component(sop_uid)}.dcm"

    def write(self, study_uid: str, series_uid: str, sop_uid: str, data: bytes) -> str:
        """Write one file and return where it is: a local path, or a URL any process
        can open (``s3://…``) for a lake in a bucket.

        The same bytes at the same path are left as they are (a rerun). Different
        bytes under an existing SOP Instance UID (two inputs claiming one UID) are
        never overwritten: the newcomer goes to ``<sop>-<content digest>.dcm``.
        Locally the file appears atomically (temporary file, then a hard link that
        fails if the name is taken); elsewhere it is one put.
        """
        fs, _ = self.layout.filesystem()
        final = self.path_for(study_uid, series_uid, sop_uid)
        try:
            if isinstance(fs, LocalFileSystem):
                return self._write_local(final, data)
            if fs.exists(final) and fs.cat_file(final) != data:
                final = _alternative(final, data)
            fs.pipe_file(final, data)
        except OSError as exc:
            raise SinkError(f"cannot write a DICOM file: {type(exc).__name__}") from exc
        return self.layout.url(final)

    def _write_local(self, final: str, data: bytes) -> str:
        directory = Path(final).parent
        directory.mkdir(parents=True, exist_ok=True)
        temporary = directory / f".{uuid.uuid4().hex}.tmp"
        try:
            temporary.write_bytes(data)
            for candidate in (final, _alternative(final, data)):
                try:
                    os.link(temporary, candidate)
                    return candidate
                except FileExistsError:
                    if Path(candidate).read_bytes() == data:
                        return candidate
            raise SinkError("two different inputs share one SOP Instance UID and content digest")
        finally:
            temporary.unlink(missing_ok=True)

    def remove(self) -> None:
        """Delete the whole folder (used for a run's staging area)."""
        fs, root = self.layout.filesystem()
        if fs.exists(self.root()):
            fs.rm(self.root(), recursive=True)
        parent = self.root().rsplit("/", 1)[0]
        if parent != root and fs.exists(parent) and not fs.ls(parent):
            fs.rmdir(parent)


def remove_files(layout: LakeLayout, paths: list[str]) -> None:
    """Delete files of the lake (for example retrieved originals once de-identified)."""
    fs, root = layout.filesystem()
    for path in (fs._strip_protocol(p) for p in paths):
        if path.startswith(root + "/") and fs.exists(path):
            fs.rm(path)


def _alternative(final: str, data: bytes) -> str:
    """The path for a second, different instance under an already used SOP Instance UID."""
    return f"{final.removesuffix('.dcm')}-{hashlib.sha256(data).hexdigest()[:12]}.dcm"
