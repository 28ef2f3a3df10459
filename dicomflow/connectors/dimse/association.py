"""Open an association safely: timeouts, TCP_NODELAY, TLS, user identity, quiet logs.

pynetdicom never sets ``TCP_NODELAY``; with Nagle's algorithm and delayed ACKs
every small message waits, so it is set on the association's socket as soon as
it connects. pynetdicom also clears the socket timeout once connected, so a peer
that stops in the middle of a PDU would block its reader forever, and it reads
whatever PDU length a peer announces: the socket here times out reads after
``network_timeout`` and refuses a PDU longer than ``MAX_ASSOCIATION_PDU`` before
the association is up. pynetdicom logs identifiers at DEBUG; its loggers are
kept at WARNING inside the task.
"""

from __future__ import annotations

import logging
import os
import socket
import ssl
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from typing import Any

from pynetdicom import AE, Association, evt
from pynetdicom.pdu import A_ASSOCIATE_RJ
from pynetdicom.transport import AssociationSocket

from dicomflow.connectors.dimse.address import DimseAddress, DimseOptions
from dicomflow.connectors.dimse.errors import DimseError
from dicomflow.errors import ConfigError

logger = logging.getLogger(__name__)

# An A-ASSOCIATE-AC with 128 contexts, roles and a user identity response is well
# under 200 kB; a peer announcing more before the association is up is not DICOM.
MAX_ASSOCIATION_PDU = 1 << 20


class _GuardedSocket(AssociationSocket):
    """An association socket with ``TCP_NODELAY``, read timeouts and a bounded
    association PDU (see the module docstring)."""

    connected_once = False  # the TCP connection was made (kept after it closes)

    def connect(self, primitive: Any) -> None:
        super().connect(primitive)
        self.connected_once = self._is_connected
        raw = self.socket
        if self.connected_once and isinstance(raw, socket.socket):  # SSLSocket included
            raw.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            raw.settimeout(self.assoc.network_timeout)

    def recv(self, nr_bytes: int) -> bytearray:
        if nr_bytes > MAX_ASSOCIATION_PDU and not self.assoc.is_established:
            # pynetdicom treats OSError as a lost connection and aborts
            raise OSError("the peer announced an oversized PDU during association")
        return super().recv(nr_bytes)


class _GuardedAE(AE):
    """An AE whose associations use :class:`_GuardedSocket`."""

    def _create_socket(self, assoc: Any, address: Any, tls_args: Any) -> AssociationSocket:
        sock = _GuardedSocket(assoc, address=address)
        sock.tls_args = tls_args
        return sock


def _quiet_pynetdicom() -> None:
    for name in ("pynetdicom", "pynetdicom.assoc", "pynetdicom.events", "pynetdicom.dsutils"):
        logging.getLogger(name).setLevel(logging.WARNING)


def _tls_context(options: DimseOptions) -> ssl.SSLContext | None:
    if options.tls is None:
        return None
    context = ssl.create_default_context(ssl.Purpose.SERVER_AUTH, cafile=options.tls.ca_file)
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    if options.tls.cert_file:
        context.load_cert_chain(options.tls.cert_file, options.tls.key_file)
    return context


def _user_identity(options: DimseOptions) -> list[Any]:
    """The user identity negotiation item, if a username is configured."""
    if not options.username:
        return []
    password = os.environ.get(options.password_env or "", "") if options.password_env else ""
    if options.password_env and not password:
        raise ConfigError("the password environment variable named by --password-env is empty")
    if password:
        return [_identity(2, options.username.encode(), password.encode())]
    return [_identity(1, options.username.encode(), b"")]


def _identity(kind: int, primary: bytes, secondary: bytes) -> Any:
    from pynetdicom.pdu_primitives import UserIdentityNegotiation

    item = UserIdentityNegotiation()
    item.user_identity_type = kind
    item.primary_field = primary
    if secondary:
        item.secondary_field = secondary
    return item


@contextmanager
def associate(
    address: DimseAddress,
    options: DimseOptions,
    contexts: Sequence[tuple[str, Sequence[str] | None]],
    *,
    roles: Sequence[Any] = (),
    handlers: Sequence[tuple[Any, Any]] = (),
) -> Iterator[Association]:
    """Yield an established association proposing ``contexts`` (abstract syntax, syntaxes).

    ``roles`` are SCP/SCU role selections (C-GET storage); ``handlers`` are
    pynetdicom event handlers bound to the association.
    """
    _quiet_pynetdicom()
    ae = _GuardedAE(ae_title=options.calling_ae)
    ae.connection_timeout = options.connect_timeout
    ae.acse_timeout = options.acse_timeout
    ae.dimse_timeout = options.dimse_timeout
    ae.network_timeout = options.network_timeout
    ae.maximum_pdu_size = options.max_pdu
    for abstract, syntaxes in contexts:
        if syntaxes:
            ae.add_requested_context(abstract, list(syntaxes))
        else:
            ae.add_requested_context(abstract)
    context = _tls_context(options)
    tls_args = (context, address.host) if context else None
    started = time.perf_counter()
    answers: list[object] = []
    heard = (evt.EVT_PDU_RECV, lambda event: answers.append(event.pdu))
    assoc = ae.associate(
        address.host,
        address.port,
        ae_title=address.called_ae,
        tls_args=tls_args,
        ext_neg=[*_user_identity(options), *roles] or None,
        evt_handlers=[*handlers, heard],
    )
    assoc.unbind(*heard)  # only the answer to the request: not every PDU of the association
    if not assoc.is_established:
        # A peer that rejects and closes at once can have pynetdicom report an abort
        # (it handles the closed connection before the A-ASSOCIATE-RJ it already read:
        # 4 of 300 rejections by Orthanc): the rejection PDU itself says what happened.
        if assoc.is_rejected or any(isinstance(pdu, A_ASSOCIATE_RJ) for pdu in answers):
            reason = "rejected the association"
        elif _connected(assoc):
            reason = "gave no valid answer to the association request"
        else:
            reason = "could not be reached"
        raise DimseError(f"{address} {reason}")
    logger.info("associated with %s in %.0f ms", address, 1000 * (time.perf_counter() - started))
    try:
        yield assoc
    finally:
        if assoc.is_established:
            assoc.release()


def _connected(assoc: Association) -> bool:
    """Whether the TCP connection was made (the peer answered badly or not at all)."""
    return bool(getattr(assoc.dul.socket, "connected_once", False))
