"""C-STORE SCU: send instances to a peer, in their own transfer syntax when it accepts it.

For every SOP class to send, one context is proposed per transfer syntax the
files use, plus Explicit VR Little Endian as a fallback; an instance whose own
syntax was refused is decompressed to Explicit VR Little Endian (pydicom) and
sent that way. Each instance gets its own outcome; one failure does not stop
the rest.
"""

from __future__ import annotations

import dataclasses
import logging
import time
import warnings
from collections.abc import Sequence
from pathlib import Path

import pydicom
from pydicom.uid import ExplicitVRLittleEndian

from dicomflow.connectors.dimse.address import DimseAddress, DimseOptions
from dicomflow.connectors.dimse.association import DimseError, associate
from dicomflow.connectors.outcomes import StoreOutcome
from dicomflow.errors import ConfigError

logger = logging.getLogger(__name__)
MAX_CONTEXTS = 128


def _identity(path: Path) -> tuple[str, str, str]:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        ds = pydicom.dcmread(path, stop_before_pixels=True)
    return str(ds.SOPClassUID), str(ds.file_meta.TransferSyntaxUID), str(ds.SOPInstanceUID)


def c_store(
    address: DimseAddress, paths: Sequence[Path], options: DimseOptions | None = None
) -> list[StoreOutcome]:
    """Send every file in ``paths`` over one association; an outcome per file."""
    options = options or DimseOptions()
    outcomes: list[StoreOutcome] = []
    identities: dict[Path, tuple[str, str, str]] = {}
    for path in paths:
        try:
            identities[path] = _identity(path)
        except Exception as exc:
            outcomes.append(StoreOutcome(str(path), None, f"not sendable ({type(exc).__name__})"))
    pairs = sorted(
        {(sop, syntax) for sop, syntax, _ in identities.values()}
        | {(sop, ExplicitVRLittleEndian) for sop, _, _ in identities.values()}
    )
    if len(pairs) > MAX_CONTEXTS:
        raise ConfigError("too many SOP class and transfer syntax pairs for one association")
    if not pairs:
        return outcomes
    started = time.perf_counter()
    with associate(address, options, [(sop, [syntax]) for sop, syntax in pairs]) as assoc:
        accepted = {
            (str(cx.abstract_syntax), str(cx.transfer_syntax[0])) for cx in assoc.accepted_contexts
        }
        for path, (sop_class, syntax, sop_uid) in identities.items():
            outcome = _send(assoc, path, sop_class, syntax, accepted)
            outcomes.append(
                dataclasses.replace(outcome, sop_class_uid=sop_class, sop_instance_uid=sop_uid)
            )
    sent = sum(o.ok for o in outcomes)
    logger.info(
        "C-STORE to %s: %d of %d sent in %.0f ms",
        address,
        sent,
        len(outcomes),
        1000 * (time.perf_counter() - started),
    )
    return outcomes


def _send(
    assoc: object, path: Path, sop_class: str, syntax: str, accepted: set[tuple[str, str]]
) -> StoreOutcome:
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            ds = pydicom.dcmread(path)
            if (sop_class, syntax) not in accepted:
                if (sop_class, ExplicitVRLittleEndian) not in accepted:
                    return StoreOutcome(str(path), None, "the peer accepts no context for it")
                # the peer refused the stored syntax: send it uncompressed, same instance
                ds.decompress(generate_instance_uid=False)
        status = assoc.send_c_store(ds)  # type: ignore[attr-defined]
    except DimseError:
        raise
    except Exception as exc:
        return StoreOutcome(str(path), None, f"not sent ({type(exc).__name__})")
    code = getattr(status, "Status", None)
    return StoreOutcome(str(path), code, "" if code == 0 else "the peer reported a failure")
