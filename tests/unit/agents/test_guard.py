from __future__ import annotations

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


def test_no_error_passes_through() -> None:
    with guard.crash_on_error("render"):
        pass
