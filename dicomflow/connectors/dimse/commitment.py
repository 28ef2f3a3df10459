"""Storage Commitment Push Model (PS3.4 J) as SCU: ask a peer to take responsibility.

:func:`request_commitment` sends one N-ACTION listing the instances, then waits
for the peer's N-EVENT-REPORT. Peers send it on the same association or, like
Orthanc, on a new association to us: both are accepted (the latter needs
``report_port``, where a short-lived SCP listens, with TLS when configured).
The result names every instance: committed, or failed with its reason.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from pydicom.dataset import Dataset
from pydicom.sequence import Sequence as DicomSequence
from pydicom.uid import generate_uid
from pynetdicom import AE, evt
from pynetdicom.sop_class import StorageCommitmentPushModel  # type: ignore[attr-defined]

from dicomflow.connectors.dimse.address import DimseAddress, DimseOptions, valid_ae_title
from dicomflow.connectors.dimse.association import DimseError, associate
from dicomflow.connectors.dimse.scp import _nodelay, _server_tls

logger = logging.getLogger(__name__)

# The well-known SOP Instance of the Storage Commitment Push Model (PS3.4 J.3.1).
COMMITMENT_INSTANCE_UID = "1.2.840.10008.1.20.1.1"
REQUEST_ACTION = 1


@dataclass
class CommitmentResult:
    """The peer's answer for one transaction: committed UIDs and failed UIDs with reasons."""

    transaction_uid: str
    requested: tuple[str, ...]
    committed: set[str] = field(default_factory=set)
    failed: dict[str, int | None] = field(default_factory=dict)
    reported: bool = False

    @property
    def missing(self) -> list[str]:
        """Requested instances the report did not mention (none when reported)."""
        named = self.committed | set(self.failed)
        return [uid for uid in self.requested if uid not in named]


@dataclass
class _Waiter:
    transaction_uid: str
    result: CommitmentResult
    done: threading.Event = field(default_factory=threading.Event)

    def handle(self, event: evt.Event) -> tuple[int, Dataset | None]:
        """The N-EVENT-REPORT handler: fold the report in, answer Success."""
        info = event.event_information
        if str(info.get("TransactionUID", "")) != self.transaction_uid:
            return 0x0000, None  # another transaction's report: acknowledged, ignored
        for item in info.get("ReferencedSOPSequence", []):
            self.result.committed.add(str(item.ReferencedSOPInstanceUID))
        for item in info.get("FailedSOPSequence", []):
            reason = item.get("FailureReason")
            self.result.failed[str(item.ReferencedSOPInstanceUID)] = (
                int(reason) if reason is not None else None
            )
        self.result.reported = True
        self.done.set()
        return 0x0000, None


def request_commitment(
    address: DimseAddress,
    instances: Sequence[tuple[str, str]],
    options: DimseOptions | None = None,
    *,
    report_port: int | None = None,
    report_host: str = "0.0.0.0",  # noqa: S104 - the peer connects back to us
    timeout: float = 60.0,
) -> CommitmentResult:
    """Request commitment of ``instances`` ((SOP Class UID, SOP Instance UID) pairs).

    Waits up to ``timeout`` seconds for the report; instances it does not mention
    are listed by :attr:`CommitmentResult.missing`. Raises :class:`DimseError` when
    the peer refuses the request itself.
    """
    options = options or DimseOptions()
    transaction = str(generate_uid())
    result = CommitmentResult(transaction, tuple(uid for _, uid in instances))
    waiter = _Waiter(transaction, result)
    request = Dataset()
    request.TransactionUID = transaction
    items = []
    for sop_class, sop_uid in instances:
        item = Dataset()
        item.ReferencedSOPClassUID = sop_class
        item.ReferencedSOPInstanceUID = sop_uid
        items.append(item)
    request.ReferencedSOPSequence = DicomSequence(items)
    server = _report_server(options, report_host, report_port, waiter) if report_port else None
    started = time.perf_counter()
    try:
        handlers = [(evt.EVT_N_EVENT_REPORT, waiter.handle)]
        with associate(
            address, options, [(StorageCommitmentPushModel, None)], handlers=handlers
        ) as assoc:
            status, _ = assoc.send_n_action(
                request, REQUEST_ACTION, StorageCommitmentPushModel, COMMITMENT_INSTANCE_UID
            )
            code = getattr(status, "Status", None)
            if code != 0x0000:
                raise DimseError(f"{address} refused the commitment request", status=code)
            # Some peers report on this association straight away; give them a moment.
            waiter.done.wait(min(2.0, timeout))
        if server is not None:
            waiter.done.wait(max(0.0, timeout - (time.perf_counter() - started)))
    finally:
        if server is not None:
            server.shutdown()
    logger.info(
        "storage commitment with %s: %d committed, %d failed, %d unreported in %.0f ms",
        address,
        len(result.committed),
        len(result.failed),
        len(result.missing),
        1000 * (time.perf_counter() - started),
    )
    return result


def _report_server(options: DimseOptions, host: str, port: int, waiter: _Waiter) -> Any:
    """A short-lived SCP that accepts the peer's N-EVENT-REPORT on a new association."""
    ae = AE(ae_title=valid_ae_title(options.calling_ae))
    ae.network_timeout = options.network_timeout
    ae.acse_timeout = options.acse_timeout
    ae.dimse_timeout = options.dimse_timeout
    ae.add_supported_context(StorageCommitmentPushModel, scu_role=True, scp_role=True)
    handlers: list[Any] = [(evt.EVT_N_EVENT_REPORT, waiter.handle), (evt.EVT_CONN_OPEN, _nodelay)]
    server = ae.start_server(
        (host, port), block=False, evt_handlers=handlers, ssl_context=_server_tls(options)
    )
    if server is None:
        raise DimseError(f"cannot listen for the commitment report on port {port}")
    return server
