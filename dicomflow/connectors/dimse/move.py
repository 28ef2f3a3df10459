"""C-MOVE: ask the PACS to send instances to a destination AE (ours or another)."""

from __future__ import annotations

import logging
import time
from collections.abc import Mapping
from dataclasses import dataclass

from pynetdicom.sop_class import (  # type: ignore[attr-defined]
    PatientRootQueryRetrieveInformationModelMove,
    StudyRootQueryRetrieveInformationModelMove,
)

from dicomflow.connectors.dimse.address import DimseAddress, DimseOptions, valid_ae_title
from dicomflow.connectors.dimse.association import DimseError, associate
from dicomflow.connectors.dimse.find import Level, Model, query_dataset
from dicomflow.errors import ConfigError

logger = logging.getLogger(__name__)
MODELS = {
    "patient": PatientRootQueryRetrieveInformationModelMove,
    "study": StudyRootQueryRetrieveInformationModelMove,
}
_PENDING = (0xFF00, 0xFF01)


@dataclass(frozen=True)
class MoveResult:
    """The peer's final sub-operation counts."""

    status: int
    completed: int
    failed: int
    warning: int


def c_move(
    address: DimseAddress,
    level: Level,
    query: Mapping[str, str],
    destination_ae: str,
    *,
    model: Model = "study",
    options: DimseOptions | None = None,
) -> MoveResult:
    """C-MOVE what ``query`` identifies to ``destination_ae`` (which the PACS must know)."""
    if level == "patient" and model == "study":
        raise ConfigError("the study-root model has no PATIENT level; use model='patient'")
    options = options or DimseOptions()
    information_model = MODELS[model]
    identifier = query_dataset(level, query)
    started = time.perf_counter()
    final: MoveResult | None = None
    with associate(address, options, [(information_model, None)]) as assoc:
        for status, _ in assoc.send_c_move(
            identifier, valid_ae_title(destination_ae), information_model, msg_id=1
        ):
            code = getattr(status, "Status", None)
            if code is None:
                raise DimseError(f"{address} stopped answering the C-MOVE")
            if code in _PENDING:
                continue
            final = MoveResult(
                code,
                int(getattr(status, "NumberOfCompletedSuboperations", 0) or 0),
                int(getattr(status, "NumberOfFailedSuboperations", 0) or 0),
                int(getattr(status, "NumberOfWarningSuboperations", 0) or 0),
            )
    if final is None:
        raise DimseError(f"{address} ended the C-MOVE without a final status")
    if final.status not in (0x0000, 0xB000) and final.completed == 0:
        raise DimseError(f"{address} failed the C-MOVE", status=final.status)
    logger.info(
        "C-MOVE at %s level: %d completed, %d failed in %.0f ms",
        level,
        final.completed,
        final.failed,
        1000 * (time.perf_counter() - started),
    )
    return final
