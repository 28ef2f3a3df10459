"""Protecting the PACS: retry transient failures with backoff and jitter, and stop calling
a peer that keeps failing (a circuit breaker).

Transient means: the peer could not be reached or rejected the association
(often "busy"), a connection reset, or a DIMSE status 0xA700-0xA7FF ("out of
resources"). Decisions are made on error classes and status codes, never on
message text. The breaker is per call site (a task), so it needs no shared state.
"""

from __future__ import annotations

import logging
import random
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TypeVar

from dicomflow.connectors.dimse.errors import DimseError
from dicomflow.connectors.dimse.move import MoveCancelled, MoveDestinationUnknown

logger = logging.getLogger(__name__)
T = TypeVar("T")


def is_transient(exc: BaseException) -> bool:
    """Worth another try: unreachable, rejected, reset, or out of resources (0xA7xx)."""
    if isinstance(exc, MoveCancelled | MoveDestinationUnknown):
        return False  # interrupted on purpose, or a configuration error
    if isinstance(exc, DimseError):
        return exc.status is None or 0xA700 <= exc.status <= 0xA7FF
    return isinstance(exc, ConnectionResetError | TimeoutError)


class CircuitOpenError(DimseError):
    """The peer failed too many times in a row; calls are refused for a while."""


@dataclass
class RetryPolicy:
    """Exponential backoff with full jitter, and a breaker after consecutive failures."""

    attempts: int = 4
    base_delay: float = 0.5
    max_delay: float = 20.0
    failures_to_open: int = 5
    open_for: float = 60.0
    sleep: Callable[[float], None] = time.sleep
    _consecutive: int = field(default=0, init=False)
    _open_until: float = field(default=0.0, init=False)

    def call(self, operation: Callable[[], T]) -> T:
        """Run ``operation``, retrying transient failures; raise when out of attempts."""
        if time.monotonic() < self._open_until:
            raise CircuitOpenError("the peer is failing; not calling it for a while")
        for attempt in range(1, self.attempts + 1):
            try:
                result = operation()
            except Exception as exc:
                if not is_transient(exc):
                    raise
                self._consecutive += 1
                if self._consecutive >= self.failures_to_open:
                    self._open_until = time.monotonic() + self.open_for
                    raise CircuitOpenError("the peer keeps failing; circuit opened") from exc
                if attempt == self.attempts:
                    raise
                delay = random.uniform(0, min(self.max_delay, self.base_delay * 2**attempt))
                logger.warning(
                    "transient DIMSE failure (%s); retrying in %.1f s", type(exc).__name__, delay
                )
                self.sleep(delay)
            else:
                self._consecutive = 0
                return result
        raise AssertionError("unreachable")
