"""The incremental watermark of a PACS source: studies since the last good run.

Stored as ``<lake>/_ledger/watermarks/<spec name>.json``. A run narrows its
query to ``StudyDate`` from the watermark on (one day of overlap, so a study
that arrives late on the boundary day is not missed; what was already fetched
is skipped by the ledger), and moves the watermark only after a run in which
every input was accounted for.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from datetime import date, timedelta

from dicomflow.lake.layout import LakeLayout, safe_uid_component
from dicomflow.lake.ledger import LEDGER_DIR
from dicomflow.lake.writer import put_atomically

OVERLAP = timedelta(days=1)


@dataclass(frozen=True)
class Watermark:
    layout: LakeLayout
    name: str

    def _path(self) -> str:
        _, root = self.layout.filesystem()
        name = self.name if self.name.replace("-", "").replace("_", "").isalnum() else None
        return f"{root}/{LEDGER_DIR}/watermarks/{name or safe_uid_component(self.name)}.json"

    def read(self) -> date | None:
        fs, _ = self.layout.filesystem()
        path = self._path()
        if not fs.exists(path):
            return None
        return date.fromisoformat(json.loads(fs.cat_file(path))["study_date_from"])

    def narrow(self, query: dict[str, str]) -> dict[str, str]:
        """``query`` limited to studies from the watermark on (unless it names dates)."""
        since = self.read()
        if since is None or "StudyDate" in query:
            return query
        return {**query, "StudyDate": f"{since:%Y%m%d}-"}

    def advance(self, run_started: date) -> None:
        fs, _ = self.layout.filesystem()
        value = {"study_date_from": (run_started - OVERLAP).isoformat()}
        put_atomically(fs, self._path(), json.dumps(value).encode())
