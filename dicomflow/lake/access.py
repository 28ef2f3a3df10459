"""Whether the lake can be written: checked before a run, and again when a task fails.

A lake that refuses the credentials, or stops accepting writes, is no input's fault:
every input would fail the same way, each only after the store client's own retries
(gcsfs and azure-core back off for tens of seconds an upload). One small probe object,
written and removed, tells at once. The error names the lake (credentials redacted)
and the kind of failure, never a credential.
"""

from __future__ import annotations

import uuid

from dicomflow.errors import ConfigError, DicomflowError, SinkError, refused_access
from dicomflow.lake.layout import LakeLayout
from dicomflow.lake.ledger import LEDGER_DIR
from dicomflow.urls import redact_url


def check_lake_writable(layout: LakeLayout) -> None:
    """Write and remove a probe object under the lake's ledger folder, or raise
    :func:`lake_access_error`'s error."""
    try:
        fs, root = layout.filesystem()
        folder = f"{root}/{LEDGER_DIR}"
        if layout.is_local():
            fs.makedirs(folder, exist_ok=True)
        probe = f"{folder}/probe-{uuid.uuid4().hex}"
        fs.pipe_file(probe, b"")
        fs.rm_file(probe)
    except Exception as exc:
        raise lake_access_error(layout, exc) from None


def lake_access_error(layout: LakeLayout, exc: BaseException) -> DicomflowError:
    """A configuration error when the store refused access (exit 2), else a sink error."""
    where, kind = redact_url(layout.root), type(exc).__name__
    if refused_access(exc):
        return ConfigError(
            f"the lake at {where} refuses access: permission denied ({kind}); "
            "check the lake's credentials (--out-storage-option)"
        )
    return SinkError(
        f"the lake at {where} cannot be written ({kind}); what was committed is kept, "
        "and a rerun continues from there"
    )
