from __future__ import annotations

import asyncio

import pytest

from app.agents import guard


def test_infrastructure_failure_exits_without_returning(monkeypatch: pytest.MonkeyPatch) -> None:
    exits: list[int] = []

    def fake_exit(code: int) -> None:
        exits.append(code)
        raise SystemExit(code)

    monkeypatch.setattr(guard.os, "_exit", fake_exit)
    monkeypatch.setattr(guard.logging, "shutdown", lambda: None)
    with pytest.raises(SystemExit), guard.crash_on_error("render"):
        raise ConnectionError("broker gone")
    assert exits == [guard.EXIT_CODE]


def test_no_error_passes_through(monkeypatch: pytest.MonkeyPatch) -> None:
    exits: list[int] = []
    monkeypatch.setattr(guard.os, "_exit", exits.append)
    ran = []
    with guard.crash_on_error("render"):
        ran.append(1)
    assert ran == [1] and exits == []


@pytest.mark.parametrize("exc", [asyncio.CancelledError, KeyboardInterrupt, GeneratorExit])
def test_cancellation_is_not_an_infrastructure_fault(
    monkeypatch: pytest.MonkeyPatch, exc: type[BaseException]
) -> None:
    """A cancelled agent task (revocation, shutdown) must unwind, not kill the worker."""
    exits: list[int] = []
    monkeypatch.setattr(guard.os, "_exit", exits.append)
    with pytest.raises(exc), guard.crash_on_error("dispatch"):
        raise exc()
    assert exits == []
