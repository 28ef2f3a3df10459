"""C-GET: retrieve instances over one association, storing each as it arrives.

Storage contexts are proposed for the SOP classes the caller expects (from an
IMAGE-level C-FIND): one uncompressed context per class and one context per
common compressed transfer syntax, so the PACS can send each instance as it
holds it. Every received instance is written whole (temporary file, link) before
the C-STORE sub-operation is acknowledged, so an acknowledged instance is never
lost to a crash of the process, nor to a later instance with the same SOP Instance
UID, and nothing is held in memory beyond one instance. A retrieval's copy is not
fsynced (the PACS keeps the original, and the next run fetches what a power loss
took, by its completeness check); an instance pushed to us (``listen``) is, since
its sender may delete it once acknowledged.
"""

from __future__ import annotations

import filecmp
import hashlib
import logging
import os
import time
import uuid
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from pydicom.uid import (
    JPEG2000,
    DeflatedExplicitVRLittleEndian,
    ExplicitVRLittleEndian,
    ImplicitVRLittleEndian,
    JPEG2000Lossless,
    JPEGBaseline8Bit,
    JPEGExtended12Bit,
    JPEGLosslessSV1,
    JPEGLSLossless,
    RLELossless,
)
from pynetdicom import StoragePresentationContexts, build_role, evt
from pynetdicom.sop_class import (  # type: ignore[attr-defined]
    PatientRootQueryRetrieveInformationModelGet,
    StudyRootQueryRetrieveInformationModelGet,
)

from dicomflow.connectors.dimse.address import DimseAddress, DimseOptions, Level, Model
from dicomflow.connectors.dimse.association import DimseError, associate
from dicomflow.connectors.dimse.find import query_dataset
from dicomflow.errors import ConfigError
from dicomflow.lake.layout import safe_uid_component

logger = logging.getLogger(__name__)

UNCOMPRESSED = (ExplicitVRLittleEndian, ImplicitVRLittleEndian)
# Each in a context of its own, so the PACS can send an instance as stored
# instead of transcoding it (which some PACS, like Orthanc 1.10, cannot do).
COMPRESSED = (
    JPEG2000Lossless,
    JPEG2000,
    JPEGLosslessSV1,
    JPEGBaseline8Bit,
    JPEGExtended12Bit,
    JPEGLSLossless,
    RLELossless,
    DeflatedExplicitVRLittleEndian,
)
MODELS = {
    "patient": PatientRootQueryRetrieveInformationModelGet,
    "study": StudyRootQueryRetrieveInformationModelGet,
}
MAX_CONTEXTS = 127  # the protocol allows 128; one is the query model
# pynetdicom's selection of the commonly used storage classes (120 of them)
COMMON_STORAGE_CLASSES = tuple(str(cx.abstract_syntax) for cx in StoragePresentationContexts)
_PENDING = (0xFF00, 0xFF01)
_WARNING = 0xB000


@dataclass
class GetResult:
    """What arrived (paths by SOP Instance UID) and the peer's final sub-operation counts."""

    received: dict[str, Path] = field(default_factory=dict)
    completed: int = 0
    failed: int = 0
    warning: int = 0
    status: int | None = None


Route = Callable[[str], Path | None]  # SOP Instance UID -> its folder (None: refused)
REFUSED = 0xC000  # "cannot understand": an instance nobody asked for


def _keep(temporary: Path, final: Path) -> Path:
    """Give a received file (written durably at ``temporary``) its name without ever
    replacing an instance acknowledged before: the same bytes again are dropped, and
    different bytes under the same SOP Instance UID are kept beside the first, named by
    their digest. Returns where the instance is."""
    try:
        os.link(temporary, final)  # fails, never overwrites, if the name is taken
        return final
    except FileExistsError:
        if filecmp.cmp(temporary, final, shallow=False):
            return final
        digest = hashlib.sha256(temporary.read_bytes()).hexdigest()[:16]
        apart = final.with_name(f"{final.stem}.{digest}.dcm")
        temporary.replace(apart)  # named by content: a replace writes the same bytes
        logger.warning("a second, different instance with one SOP Instance UID was kept apart")
        return apart
    finally:
        temporary.unlink(missing_ok=True)


def store_handler(
    destination: Path,
    result: GetResult,
    on_progress: Callable[[int], None] | None,
    route: Route | None = None,
    *,
    durable: bool = True,
) -> Callable[[evt.Event], int]:
    """The C-STORE handler: each instance written whole (temporary file, link; with
    ``durable``, fsynced first) into ``destination``, or into the folder ``route``
    names for its SOP Instance UID; an instance ``route`` does not know is refused."""

    def handle(event: evt.Event) -> int:
        try:
            sop_uid = str(getattr(event.request, "AffectedSOPInstanceUID", ""))
            folder = destination if route is None else route(sop_uid)
            if folder is None:
                logger.warning("refused an instance that was not asked for")
                return REFUSED
            final = folder / f"{safe_uid_component(sop_uid)}.dcm"
            temporary = folder / f".{final.name}.{uuid.uuid4().hex}.tmp"
            with temporary.open("wb") as fh:
                fh.write(event.encoded_dataset())
                if durable:
                    fh.flush()
                    os.fsync(fh.fileno())
            kept = _keep(temporary, final)
        except OSError:
            logger.warning("could not store a received instance")
            return 0xA700  # out of resources: the peer counts it as failed
        result.received.setdefault(sop_uid, kept)
        if on_progress is not None:
            on_progress(len(result.received))
        return 0x0000

    return handle


def classes_to_accept(expected: Iterable[str]) -> list[str]:
    """The SOP classes a C-GET should accept: the expected ones, and when some are
    unknown ("": peers such as DCMTK's dcmqrscp return no SOP Class UID from C-FIND)
    also the common storage classes, as many as the context limit leaves room for
    (then uncompressed only: the peer must decompress what it holds compressed)."""
    expected = set(expected)
    known = sorted(c for c in expected if c)
    if "" not in expected:
        return known
    return [*known, *(c for c in COMMON_STORAGE_CLASSES if c not in known)][:MAX_CONTEXTS]


def storage_contexts(classes: Sequence[str]) -> list[tuple[str, Sequence[str]]]:
    """Per SOP class: one uncompressed context, then one context per compressed syntax,
    as many as the 128-context limit leaves room for."""
    per_class = max(1, MAX_CONTEXTS // max(1, len(classes)))
    contexts: list[tuple[str, Sequence[str]]] = []
    for sop_class in classes:
        contexts.append((sop_class, UNCOMPRESSED))
        contexts.extend((sop_class, (syntax,)) for syntax in COMPRESSED[: per_class - 1])
    return contexts


def c_get(
    address: DimseAddress,
    level: Level,
    query: Mapping[str, str],
    destination: Path,
    *,
    sop_classes: Sequence[str],
    model: Model = "study",
    options: DimseOptions | None = None,
    on_progress: Callable[[int], None] | None = None,
) -> GetResult:
    """C-GET what ``query`` identifies at ``level`` into ``destination``."""
    if level == "patient" and model == "study":
        raise ConfigError("the study-root model has no PATIENT level; use model='patient'")
    classes = sorted(set(sop_classes))
    if not classes:
        raise ConfigError("C-GET needs the SOP classes to accept (from a C-FIND)")
    if len(classes) > MAX_CONTEXTS:
        raise ConfigError(f"more than {MAX_CONTEXTS} SOP classes in one C-GET")
    options = options or DimseOptions()
    destination.mkdir(parents=True, exist_ok=True)
    result = GetResult()
    information_model = MODELS[model]
    contexts = [(information_model, None), *storage_contexts(classes)]
    handlers = [(evt.EVT_C_STORE, store_handler(destination, result, on_progress, durable=False))]
    identifier = query_dataset(level, query)
    roles = [build_role(c, scp_role=True) for c in classes]
    started = time.perf_counter()
    with associate(address, options, contexts, roles=roles, handlers=handlers) as assoc:
        for status, _ in assoc.send_c_get(identifier, information_model, msg_id=1):
            code = getattr(status, "Status", None)
            if code is None:
                raise DimseError(f"{address} stopped answering the C-GET")
            if code in _PENDING:
                continue
            result.status = code
            result.completed = int(getattr(status, "NumberOfCompletedSuboperations", 0) or 0)
            result.failed = int(getattr(status, "NumberOfFailedSuboperations", 0) or 0)
            result.warning = int(getattr(status, "NumberOfWarningSuboperations", 0) or 0)
            if code not in (0x0000, _WARNING) and not result.received:
                raise DimseError(f"{address} failed the C-GET", status=code)
    logger.info(
        "C-GET at %s level: %d received, %d failed in %.0f ms",
        level,
        len(result.received),
        result.failed,
        1000 * (time.perf_counter() - started),
    )
    return result
