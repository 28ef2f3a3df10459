"""What dicomflow's Storage SCP demands of every peer before it trusts one.

pynetdicom reads whatever length a peer's PDU header claims, waits as long as a
peer keeps trickling bytes, and counts every open socket against its association
limit, so a handful of idle or hostile connections can exhaust memory or lock real
senders out. The SCP (``listen``, and the C-MOVE destination) therefore:

- announces a finite maximum PDU (:attr:`ScpLimits.max_pdu`) and closes a
  connection whose PDU header claims more, before reading the body;
- requires each PDU to arrive whole within :attr:`ScpLimits.read_timeout`, so a
  peer trickling a byte at a time frees its slot;
- gives a connection :attr:`ScpLimits.request_timeout` to send its association
  request (pynetdicom's ACSE timeout) and aborts an association idle for
  :attr:`ScpLimits.idle_timeout` (its network timeout);
- caps associations at :attr:`ScpLimits.max_associations` established at once,
  rejecting more as "local limit exceeded", while connections that have not
  associated yet count only against the larger :attr:`ScpLimits.max_connections`.

The guards are installed per connection (:func:`guard_connection`, on
``EVT_CONN_OPEN``, before pynetdicom reads a byte) and per request
(:func:`association_cap`, on ``EVT_REQUESTED``); nothing in pynetdicom is patched.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING

if TYPE_CHECKING:  # only named in annotations: the limits import no networking code
    from pynetdicom import evt

logger = logging.getLogger(__name__)

# A-ASSOCIATE-RJ: rejected-transient (2), by the presentation-related service provider
# (3), local limit exceeded (2): PS3.8 Table 9-21.
LOCAL_LIMIT_EXCEEDED = (0x02, 0x03, 0x02)
# An association request with every presentation context the protocol allows (128,
# each with a dozen transfer syntaxes) and user identity stays well under this.
SMALLEST_PDU_LIMIT = 256 * 1024
READ_SIZE = 64 * 1024


@dataclass(frozen=True)
class ScpLimits:
    """How much a peer of the Storage SCP may take: bytes, time and slots."""

    max_pdu: int = 1024 * 1024
    max_associations: int = 16
    max_connections: int = 512
    read_timeout: float = 30.0
    request_timeout: float = 10.0
    idle_timeout: float = 60.0

    def __post_init__(self) -> None:
        if self.max_pdu <= 0:
            raise ValueError("an SCP's maximum PDU must be finite (a positive number of bytes)")
        if not 0 < self.max_associations <= self.max_connections:
            raise ValueError("max_associations must be positive and no more than max_connections")
        if min(self.read_timeout, self.request_timeout, self.idle_timeout) <= 0:
            raise ValueError("the SCP's timeouts must be positive")

    @property
    def pdu_body_limit(self) -> int:
        """The largest PDU body read: the announced maximum (the variable field of a
        P-DATA-TF PDU, PS3.8 D.1), and never less than an association request needs."""
        return max(self.max_pdu, SMALLEST_PDU_LIMIT)


class PeerTooDemanding(OSError):
    """A peer claimed more than the SCP accepts, or took too long: its connection closes
    (pynetdicom treats an ``OSError`` while reading as the transport closing)."""


def bounded_recv(raw_socket: Callable[[], object], limits: ScpLimits) -> Callable[[int], bytearray]:
    """A replacement for ``AssociationSocket.recv``: refuses a read longer than the PDU
    limit before reading any of it, and gives the whole read ``limits.read_timeout``
    seconds however slowly the bytes come. ``raw_socket`` returns the connection's
    socket (plain or TLS) at the time of the read."""

    def recv(nr_bytes: int) -> bytearray:
        if nr_bytes > limits.pdu_body_limit:
            logger.warning(
                "a peer's PDU claimed %d bytes, over the %d this SCP accepts; connection closed",
                nr_bytes,
                limits.pdu_body_limit,
            )
            raise PeerTooDemanding("PDU longer than the SCP's maximum")
        sock = raw_socket()
        previous = sock.gettimeout()  # type: ignore[attr-defined]
        deadline = time.monotonic() + limits.read_timeout
        data = bytearray()
        try:
            while len(data) < nr_bytes:
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    logger.warning(
                        "a peer sent %d of a %d-byte PDU in %.0f s; connection closed",
                        len(data),
                        nr_bytes,
                        limits.read_timeout,
                    )
                    raise PeerTooDemanding("PDU not received within the read timeout")
                sock.settimeout(remaining)  # type: ignore[attr-defined]
                try:
                    chunk = sock.recv(min(READ_SIZE, nr_bytes - len(data)))  # type: ignore[attr-defined]
                except TimeoutError:
                    continue  # the deadline check above names it
                if not chunk:  # the peer closed: pynetdicom reports a short PDU
                    return data
                data += chunk
        finally:
            sock.settimeout(previous)  # type: ignore[attr-defined]
        return data

    return recv


def guard_connection(limits: ScpLimits) -> Callable[[evt.Event], None]:
    """An ``EVT_CONN_OPEN`` handler that bounds every read of the new connection."""

    def on_open(event: evt.Event) -> None:
        association_socket = event.assoc.dul.socket
        if association_socket is None:
            return
        # this connection's socket object only; pynetdicom's class is left as it is
        association_socket.recv = bounded_recv(  # type: ignore[method-assign,assignment]
            lambda: association_socket.socket, limits
        )

    return on_open


def association_cap(limits: ScpLimits) -> Callable[[evt.Event], None]:
    """An ``EVT_REQUESTED`` handler that rejects an association request ("local limit
    exceeded") while ``limits.max_associations`` others are established."""

    def on_request(event: evt.Event) -> None:
        assoc = event.assoc
        established = [
            other
            for other in assoc.ae.active_associations
            if other is not assoc and other.is_acceptor and other.is_established
        ]
        if len(established) >= limits.max_associations:
            logger.warning(
                "association refused: %d associations already established (the limit)",
                len(established),
            )
            assoc.acse.send_reject(*LOCAL_LIMIT_EXCEEDED)
            _wait_until_sent(assoc.dul)

    return on_request


def _wait_until_sent(dul: object, seconds: float = 2.0) -> None:
    """Wait for the DUL to put a queued A-ASSOCIATE-RJ on the wire: pynetdicom closes the
    socket right after a rejection made in ``EVT_REQUESTED``, and the peer would see a
    dropped connection instead of the reason. Sending it moves the state machine to
    Sta13, awaiting the transport's close (PS3.8 Table 9-10, AE-8)."""
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        if getattr(getattr(dul, "state_machine", None), "current_state", None) == "Sta13":
            return
        time.sleep(0.005)
