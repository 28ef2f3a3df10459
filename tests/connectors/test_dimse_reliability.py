"""Retries with backoff, the circuit breaker, and recovery when the PACS comes back."""

from __future__ import annotations

import threading
import time
from pathlib import Path

import pytest

from dicomflow.connectors.dimse import DimseAddress, DimseOptions, c_echo
from dicomflow.connectors.dimse.association import DimseError
from dicomflow.connectors.dimse.reliability import CircuitOpenError, RetryPolicy, is_transient
from dicomflow.errors import ConfigError
from tests.conftest import require
from tests.peers.orthanc import ORTHANC_AET, free_port, orthanc_binary, running_orthanc

QUICK = DimseOptions(connect_timeout=1, acse_timeout=2, network_timeout=2)


def test_classification_uses_types_and_status_codes() -> None:
    assert is_transient(DimseError("x"))
    assert is_transient(DimseError("x", status=0xA702))
    assert not is_transient(DimseError("x", status=0xC000))
    assert not is_transient(ConfigError("x"))


def test_backoff_grows_and_gives_up_after_the_attempts() -> None:
    delays: list[float] = []
    policy = RetryPolicy(attempts=4, base_delay=0.01, failures_to_open=99, sleep=delays.append)
    address = DimseAddress("NOBODY", "127.0.0.1", free_port())
    with pytest.raises(DimseError):
        policy.call(lambda: c_echo(address, QUICK))
    assert len(delays) == 3
    assert all(0 <= d <= 0.01 * 2 ** (i + 1) for i, d in enumerate(delays))


def test_breaker_opens_and_then_refuses_without_calling() -> None:
    calls = []
    policy = RetryPolicy(attempts=10, base_delay=0, failures_to_open=3, sleep=lambda _: None)

    def failing() -> None:
        calls.append(1)
        raise DimseError("unreachable")

    with pytest.raises(CircuitOpenError):
        policy.call(failing)
    assert len(calls) == 3
    with pytest.raises(CircuitOpenError):
        policy.call(failing)
    assert len(calls) == 3  # refused without touching the peer


def test_non_transient_errors_are_not_retried() -> None:
    calls = []

    def wrong() -> None:
        calls.append(1)
        raise ConfigError("bad query")

    with pytest.raises(ConfigError):
        RetryPolicy(sleep=lambda _: None).call(wrong)
    assert calls == [1]


def test_recovers_when_the_pacs_comes_back(tmp_path: Path) -> None:
    require(orthanc_binary() is not None, "Orthanc (Debian package orthanc)")
    port = free_port()
    stop = threading.Event()

    def pacs_later() -> None:
        time.sleep(1.5)
        with running_orthanc(tmp_path / "pacs", dicom_port=port):
            stop.wait(60)

    thread = threading.Thread(target=pacs_later, daemon=True)
    thread.start()
    try:
        policy = RetryPolicy(attempts=12, base_delay=0.5, max_delay=1.0, failures_to_open=99)
        result = policy.call(lambda: c_echo(DimseAddress(ORTHANC_AET, "127.0.0.1", port), QUICK))
        assert result.round_trip_ms > 0
    finally:
        stop.set()
        thread.join(timeout=30)
