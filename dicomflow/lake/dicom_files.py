"""Write DICOM files into a lake: ``<root>/<study>/<series>/<sop>.dcm``, atomically.

Every path component comes from a UID and is validated
(:func:`~dicomflow.lake.layout.safe_uid_component`), so a hostile value can
never climb out of the lake.
"""

from __future__ import annotations

import uuid
from dataclasses import dataclass

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
        """Write one file (temporary name + rename locally, one put elsewhere); its path."""
        fs, _ = self.layout.filesystem()
        final = self.path_for(study_uid, series_uid, sop_uid)
        directory = final.rsplit("/", 1)[0]
        try:
            fs.makedirs(directory, exist_ok=True)
            if isinstance(fs, LocalFileSystem):
                temporary = f"{directory}/.{uuid.uuid4().hex}.tmp"
                try:
                    fs.pipe_file(temporary, data)
                    fs.mv(temporary, final)
                finally:
                    if fs.exists(temporary):
                        fs.rm(temporary)
            else:
                fs.pipe_file(final, data)
        except OSError as exc:
            raise SinkError(f"cannot write a DICOM file: {type(exc).__name__}") from exc
        return final

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
    for path in paths:
        if path.startswith(root + "/") and fs.exists(path):
            fs.rm(path)
