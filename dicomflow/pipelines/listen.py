"""``listen``: a Storage SCP as a source. Pushed instances are ingested in micro-batches.

The SCP writes each received instance durably before acknowledging it, into
``<lake>/_received/incoming``; that folder is the queue. Every few seconds the
finished files are moved (renamed) into a batch folder and ingested with the
usual operators and sinks. On SIGTERM or Ctrl-C the SCP stops accepting, the
last batch is ingested, and the command exits.
"""

from __future__ import annotations

import logging
import signal
import threading
from collections.abc import Callable
from pathlib import Path
from typing import Any

from dicomflow.connectors.dimse.scp import storage_scp
from dicomflow.lake.layout import LakeLayout
from dicomflow.pipelines.endpoints import Listener
from dicomflow.pipelines.pipeline import RunSummary

logger = logging.getLogger(__name__)
RECEIVED = "_received"


def _take_batch(incoming: Path, batches: Path, number: int) -> list[str]:
    """Move every finished file (temporary names start with a dot) into a new batch folder."""
    ready = sorted(p for p in incoming.glob("*.dcm") if not p.name.startswith("."))
    if not ready:
        return []
    folder = batches / f"batch-{number:06d}"
    folder.mkdir(parents=True, exist_ok=True)
    moved = []
    for path in ready:
        target = folder / path.name
        path.rename(target)
        moved.append(str(target))
    return moved


def listen(
    listener: Listener,
    *,
    lake: LakeLayout,
    ingest: Callable[[list[str]], RunSummary],
    stop: threading.Event | None = None,
    on_batch: Callable[[RunSummary], Any] | None = None,
) -> RunSummary:
    """Receive and ingest until ``stop`` is set (or SIGTERM/SIGINT); return the totals.

    ``ingest`` runs one micro-batch of received files through the compiled pipeline,
    with every operator of the spec (de-identification included): nothing received
    reaches the lake any other way.
    """
    stop = stop or threading.Event()
    if threading.current_thread() is threading.main_thread():
        for signum in (signal.SIGTERM, signal.SIGINT):
            signal.signal(signum, lambda *_: stop.set())
    _, root = lake.filesystem()
    incoming = Path(root) / RECEIVED / "incoming"
    batches = Path(root) / RECEIVED
    totals = RunSummary("listen")
    number = 0

    def ingest_ready() -> None:
        nonlocal number
        files = _take_batch(incoming, batches, number)
        if not files:
            return
        number += 1
        summary = ingest(files)
        totals.files += summary.files
        totals.rows += summary.rows
        totals.errors += summary.errors
        totals.faults += summary.faults
        totals.error_codes.update(summary.error_codes)
        if on_batch is not None:
            on_batch(summary)

    with storage_scp(
        listener.ae_title,
        listener.port,
        incoming,
        host=listener.host,
        options=listener.options,
        allowed_callers=listener.allowed_callers,
        limits=listener.limits,
    ):
        logger.info("listening as %s on port %d", listener.ae_title, listener.port)
        while not stop.wait(listener.batch_seconds):
            ingest_ready()
    ingest_ready()  # what arrived before the SCP shut down
    return totals
