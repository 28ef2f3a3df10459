"""A Storage SCP: dicomflow's own C-STORE receiver (a C-MOVE destination).

Every storage SOP class is accepted in the uncompressed and common compressed
syntaxes, and Verification (C-ECHO) too; each instance is written whole before it is
acknowledged (the same handler as C-GET uses; fsynced too unless the caller says the
sender keeps its copy, as a C-MOVE's PACS does), and ``TCP_NODELAY`` is set on every
accepted socket. Every peer meets the limits of :mod:`.scp_guard`: a finite maximum
PDU enforced before a body is read, read, request and idle timeouts, and a cap on
established associations that idle connections cannot exhaust.
"""

from __future__ import annotations

import socket
import ssl
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from pynetdicom import AE, AllStoragePresentationContexts, evt
from pynetdicom.sop_class import Verification  # type: ignore[attr-defined]

from dicomflow.connectors.dimse.address import DimseOptions, valid_ae_title
from dicomflow.connectors.dimse.errors import DimseError
from dicomflow.connectors.dimse.get import (
    COMPRESSED,
    UNCOMPRESSED,
    GetResult,
    Route,
    store_handler,
)
from dicomflow.connectors.dimse.scp_guard import ScpLimits, association_cap, guard_connection


def _nodelay(event: evt.Event) -> None:
    raw = getattr(getattr(event.assoc.dul, "socket", None), "socket", None)
    if isinstance(raw, socket.socket):
        raw.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)


def _server_tls(options: DimseOptions) -> ssl.SSLContext | None:
    """TLS 1.2+ for the SCP; with a CA configured, callers must present a certificate."""
    if options.tls is None or not options.tls.cert_file:
        return None
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH, cafile=options.tls.ca_file)
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    context.load_cert_chain(options.tls.cert_file, options.tls.key_file)
    context.verify_mode = ssl.CERT_REQUIRED if options.tls.ca_file else ssl.CERT_NONE
    return context


@contextmanager
def storage_scp(
    ae_title: str,
    port: int,
    destination: Path,
    *,
    host: str = "127.0.0.1",
    options: DimseOptions | None = None,
    allowed_callers: frozenset[str] | None = None,
    route: Route | None = None,
    limits: ScpLimits | None = None,
    durable: bool = True,
) -> Iterator[GetResult]:
    """Listen on ``host:port`` as ``ae_title`` while the block runs; yield what arrives.

    ``route`` names the folder of each instance by its SOP Instance UID (a C-MOVE
    destination files what it asked for by series, and refuses the rest). ``limits``
    bound what each peer may take (:class:`ScpLimits`; its defaults when None); the
    DIMSE timeout and TLS come from ``options``. ``durable=False`` skips the fsync
    of each instance, for a destination whose sender keeps the original (C-MOVE)."""
    options = options or DimseOptions()
    limits = limits or ScpLimits()
    destination.mkdir(parents=True, exist_ok=True)
    ae = AE(ae_title=valid_ae_title(ae_title))
    ae.maximum_pdu_size = limits.max_pdu
    ae.network_timeout = limits.idle_timeout
    ae.acse_timeout = limits.request_timeout
    ae.dimse_timeout = options.dimse_timeout
    ae.maximum_associations = limits.max_connections  # ours count established ones only
    if allowed_callers is not None:
        ae.require_calling_aet = sorted(allowed_callers)
    for context in AllStoragePresentationContexts:
        if context.abstract_syntax is not None:
            ae.add_supported_context(context.abstract_syntax, [*UNCOMPRESSED, *COMPRESSED])
    ae.add_supported_context(Verification, UNCOMPRESSED)
    received = GetResult()
    handlers: list[Any] = [
        (evt.EVT_C_STORE, store_handler(destination, received, None, route, durable=durable)),
        (evt.EVT_CONN_OPEN, guard_connection(limits)),
        (evt.EVT_CONN_OPEN, _nodelay),
        (evt.EVT_REQUESTED, association_cap(limits)),
    ]
    try:
        server = ae.start_server(
            (host, port), block=False, evt_handlers=handlers, ssl_context=_server_tls(options)
        )
    except OSError as exc:  # the port is taken, or not ours to bind
        raise DimseError(f"cannot listen on {host}:{port} ({exc.strerror})") from exc
    if server is None:
        raise DimseError(f"cannot listen on {host}:{port}")
    try:
        yield received
    finally:
        server.shutdown()
