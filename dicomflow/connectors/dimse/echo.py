"""C-ECHO: is the peer there, how fast does it answer, what did it accept."""

from __future__ import annotations

import time
from dataclasses import dataclass

from pynetdicom.sop_class import Verification  # type: ignore[attr-defined]

from dicomflow.connectors.dimse.address import DimseAddress, DimseOptions
from dicomflow.connectors.dimse.association import DimseError, associate


@dataclass(frozen=True)
class EchoResult:
    """Round-trip time of the C-ECHO and the presentation contexts the peer accepted."""

    round_trip_ms: float
    contexts: tuple[str, ...]


def c_echo(address: DimseAddress, options: DimseOptions | None = None) -> EchoResult:
    """Send one C-ECHO; raise :class:`DimseError` if the peer fails to answer with success."""
    options = options or DimseOptions()
    with associate(address, options, [(Verification, None)]) as assoc:
        started = time.perf_counter()
        status = assoc.send_c_echo()
        elapsed = 1000 * (time.perf_counter() - started)
        code = getattr(status, "Status", None)
        if code != 0x0000:
            raise DimseError(f"{address} did not confirm the C-ECHO", status=code)
        contexts = tuple(
            f"{cx.abstract_syntax} {cx.transfer_syntax[0]}" for cx in assoc.accepted_contexts
        )
    return EchoResult(elapsed, contexts)
