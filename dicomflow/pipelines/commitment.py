"""Storage Commitment after a run's sends (``ingest --send dimse://… --commit PORT``).

The ``store`` operator records every instance the peer stored in the lake's
``sent`` table. Once the run's work is done, the client asks the peer, in one
transaction, to take responsibility for this run's sent instances (PS3.4 J,
:func:`~dicomflow.connectors.dimse.commitment.request_commitment`); its report
comes on the association or on a new one to ``commit_port``. Every instance the
peer did not commit (failed, or not in a report that came within the timeout)
gets a ``not_committed`` error row; its ``instances`` row stays.
"""

from __future__ import annotations

import hashlib
import logging

import pyarrow.parquet as pq

from dicomflow.connectors.dimse.address import DimseAddress, DimseOptions
from dicomflow.errors import ErrorCode
from dicomflow.lake.layout import LakeLayout
from dicomflow.lake.ledger import Ledger
from dicomflow.operators.store import SENT_TABLE
from dicomflow.pipelines.sinks import commit_records
from dicomflow.pipelines.summary import RunSummary
from dicomflow.records import InstanceRecord, RunContext, SourceRef

logger = logging.getLogger(__name__)

STAGE = "commit"
FAILURE_REASONS = {  # PS3.4 J.3.2.1.1.2
    0x0110: "processing failure",
    0x0112: "no such object instance",
    0x0213: "resource limitation",
    0x0122: "referenced SOP Class not supported",
    0x0119: "class/instance conflict",
    0x0131: "duplicate transaction UID",
}


def sent_by_run(layout: LakeLayout, run_id: str, peer: str) -> list[tuple[str, str]]:
    """(SOP Class UID, SOP Instance UID) of every instance this run stored on ``peer``."""
    fs, root = layout.filesystem()
    pairs: dict[str, str] = {}
    for entry in Ledger(layout).entries():
        part = entry.parts.get(SENT_TABLE)
        if entry.run_id != run_id or part is None:
            continue
        with fs.open(f"{root}/{part}", "rb") as handle:
            table = pq.read_table(handle, columns=["peer", "SOPClassUID", "SOPInstanceUID"])
        for row in table.to_pylist():
            if row["peer"] == peer and row["SOPInstanceUID"]:
                pairs[row["SOPInstanceUID"]] = row["SOPClassUID"] or ""
    return sorted((sop_class, uid) for uid, sop_class in pairs.items())


def commit_sent(
    summary: RunSummary,
    layout: LakeLayout,
    context: RunContext,
    address: DimseAddress,
    options: DimseOptions,
    *,
    report_port: int | None,
    timeout: float,
) -> int:
    """Ask ``address`` to commit what this run sent it; commit a ``not_committed`` error
    row for each instance it did not commit; count them into ``summary``."""
    from dicomflow.connectors.dimse.commitment import request_commitment  # pynetdicom

    sent = sent_by_run(layout, context.run_id, str(address))
    if not sent:
        return 0
    result = request_commitment(address, sent, options, report_port=report_port, timeout=timeout)
    reasons = {uid: _reason(code) for uid, code in result.failed.items()}
    if not result.reported:
        silence = f"the peer sent no commitment report within {timeout:g} s"
        reasons.update(dict.fromkeys(result.missing, silence))
    else:
        reasons.update(dict.fromkeys(result.missing, "the peer's report did not name it"))
    records = [
        InstanceRecord(SourceRef(f"{address}#sop={uid}")).with_error(
            STAGE, ErrorCode.NOT_COMMITTED, reasons[uid]
        )
        for uid in sorted(reasons)
    ]
    name = "commit-" + hashlib.sha256(f"{address}\0{context.run_id}".encode()).hexdigest()[:20]
    commit_records(layout, "commit", name, records, context)
    summary.add_faults(records)  # each keeps its row
    return len(records)


def _reason(code: int | None) -> str:
    if code is None:
        return "the peer failed to commit it"
    return f"the peer failed to commit it: {FAILURE_REASONS.get(code, 'failure')} (0x{code:04X})"
