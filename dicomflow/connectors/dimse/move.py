"""C-MOVE: ask the PACS to send instances to a destination AE (ours or another).

A C-MOVE in flight can be cancelled from another thread: :func:`cancel_moves`
sends C-CANCEL on every C-MOVE this process has open (Ctrl-C or SIGTERM of a
run), waits a bounded time for the peer's final "cancelled" answer, then aborts
the associations that did not give one. The peer's final status is turned into
an error with its meaning (0xA801: the destination is unknown to the peer).
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from pynetdicom.sop_class import (  # type: ignore[attr-defined]
    PatientRootQueryRetrieveInformationModelMove,
    StudyRootQueryRetrieveInformationModelMove,
)

from dicomflow.connectors.dimse.address import (
    DimseAddress,
    DimseOptions,
    Level,
    Model,
    valid_ae_title,
)
from dicomflow.connectors.dimse.association import DimseError, associate
from dicomflow.connectors.dimse.find import query_dataset
from dicomflow.errors import ConfigError

logger = logging.getLogger(__name__)
MODELS = {
    "patient": PatientRootQueryRetrieveInformationModelMove,
    "study": StudyRootQueryRetrieveInformationModelMove,
}
_PENDING = (0xFF00, 0xFF01)
CANCELLED = 0xFE00
DESTINATION_UNKNOWN = 0xA801
_WARNING = 0xB000


@dataclass(frozen=True)
class MoveResult:
    """The peer's final sub-operation counts."""

    status: int
    completed: int
    failed: int
    warning: int


class MoveDestinationUnknown(DimseError):
    """The peer does not know the destination AE title (0xA801): a configuration error
    on one side or the other, so retrying is pointless."""


class MoveCancelled(DimseError):
    """The C-MOVE was cancelled (C-CANCEL sent, or the association aborted)."""


@dataclass
class _InFlight:
    assoc: Any
    query_model: str
    msg_id: int
    done: threading.Event


_lock = threading.Lock()
_moves: dict[int, _InFlight] = {}
_cancelling = threading.Event()


def cancel_moves(grace: float = 5.0) -> int:
    """Send C-CANCEL on every C-MOVE of this process; abort those not ended after
    ``grace`` seconds. Until :func:`allow_moves` (which the caller must call once its
    threads have ended), new C-MOVEs are refused.
    Returns how many were cancelled."""
    _cancelling.set()
    with _lock:
        moves = list(_moves.values())
    for move in moves:
        try:
            move.assoc.send_c_cancel(move.msg_id, query_model=move.query_model)
        except Exception:  # the association went away meanwhile
            logger.debug("C-CANCEL could not be sent", exc_info=True)
    deadline = time.monotonic() + grace
    for move in moves:
        if not move.done.wait(max(0.0, deadline - time.monotonic())):
            move.assoc.abort()
    if moves:
        logger.warning("cancelled %d C-MOVE(s) in flight", len(moves))
    return len(moves)


def allow_moves() -> None:
    """Allow C-MOVEs again after :func:`cancel_moves` (a new run in the same process)."""
    _cancelling.clear()


def c_move(
    address: DimseAddress,
    level: Level,
    query: Mapping[str, str],
    destination_ae: str,
    *,
    model: Model = "study",
    options: DimseOptions | None = None,
) -> MoveResult:
    """C-MOVE what ``query`` identifies to ``destination_ae`` (which the PACS must know).

    Raises :class:`MoveDestinationUnknown` when the peer does not know the
    destination, :class:`MoveCancelled` when :func:`cancel_moves` ended it, and
    :class:`DimseError` when the peer failed it with nothing moved.
    """
    if level == "patient" and model == "study":
        raise ConfigError("the study-root model has no PATIENT level; use model='patient'")
    if _cancelling.is_set():
        raise MoveCancelled(f"C-MOVE from {address} not started: the retrieve was interrupted")
    options = options or DimseOptions()
    information_model = MODELS[model]
    identifier = query_dataset(level, query)
    destination = valid_ae_title(destination_ae)
    started = time.perf_counter()
    final: MoveResult | None = None
    with associate(address, options, [(information_model, None)]) as assoc:
        move = _InFlight(assoc, information_model, 1, threading.Event())
        with _lock:
            _moves[id(move)] = move
        try:
            for status, _ in assoc.send_c_move(
                identifier, destination, information_model, msg_id=1
            ):
                code = getattr(status, "Status", None)
                if code is None:
                    if _cancelling.is_set():
                        raise MoveCancelled(f"the C-MOVE from {address} was aborted")
                    raise DimseError(f"{address} stopped answering the C-MOVE")
                if code in _PENDING:
                    continue
                final = MoveResult(
                    code,
                    int(getattr(status, "NumberOfCompletedSuboperations", 0) or 0),
                    int(getattr(status, "NumberOfFailedSuboperations", 0) or 0),
                    int(getattr(status, "NumberOfWarningSuboperations", 0) or 0),
                )
        finally:
            move.done.set()
            with _lock:
                _moves.pop(id(move), None)
    if final is None:
        raise DimseError(f"{address} ended the C-MOVE without a final status")
    logger.info(
        "C-MOVE at %s level: status 0x%04X, %d completed, %d failed in %.0f ms",
        level,
        final.status,
        final.completed,
        final.failed,
        1000 * (time.perf_counter() - started),
    )
    if final.status == CANCELLED:
        raise MoveCancelled(f"the C-MOVE from {address} was cancelled", status=final.status)
    if final.status == DESTINATION_UNKNOWN:
        raise MoveDestinationUnknown(
            f"{address} does not know the C-MOVE destination {destination!r}: it must be "
            "configured on the peer with our host and port",
            status=final.status,
        )
    if final.status not in (0x0000, _WARNING) and final.completed == 0:
        raise DimseError(
            f"{address} failed the C-MOVE to {destination!r} with nothing moved "
            "(is that destination configured on the peer?)",
            status=final.status,
        )
    return final
