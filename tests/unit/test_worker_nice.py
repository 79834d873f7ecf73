"""SPILLWAY_WORKER_NICE: a worker lowers its own CPU priority once, never fatally."""

from __future__ import annotations

from pathlib import Path

import pytest

from app import factory
from app.settings import Settings


@pytest.fixture(autouse=True)
def fresh(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(factory, "_niced", [])


def test_raises_niceness_once_per_process() -> None:
    calls: list[int] = []

    def nice(by: int) -> int:
        calls.append(by)
        return by

    assert factory.lower_cpu_priority(10, nice) == 10
    assert factory.lower_cpu_priority(10, nice) == 0  # a second app in the process adds nothing
    assert calls == [10]


@pytest.mark.parametrize("by", [0, -5])
def test_zero_or_less_changes_nothing(by: int) -> None:
    calls: list[int] = []
    assert factory.lower_cpu_priority(by, calls.append) == 0  # type: ignore[arg-type]
    assert calls == []


def test_refusal_is_logged_not_fatal(caplog: pytest.LogCaptureFixture) -> None:
    def refuse(by: int) -> int:
        raise PermissionError("not permitted")

    assert factory.lower_cpu_priority(5, refuse) == 0
    assert "worker_nice 5 not applied" in caplog.text
    calls: list[int] = []
    assert factory.lower_cpu_priority(5, lambda by: calls.append(by) or by) == 5  # retried later


def test_setting_from_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("SPILLWAY_WORKER_NICE", "10")
    assert Settings().worker_nice == 10
    for bad in ("-1", "20", "nan", "", "1e3"):
        monkeypatch.setenv("SPILLWAY_WORKER_NICE", bad)
        with pytest.raises(ValueError):
            Settings()


@pytest.mark.parametrize(
    ("sid", "expected"),
    [
        (42, "10"),  # leads its own session: its autogroup is lowered too
        (1, "/autogroup-7 nice 0\n"),  # in someone else's session: the group keeps its share
    ],
)
def test_only_a_session_leader_lowers_its_autogroup(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path, sid: int, expected: str
) -> None:
    group = tmp_path / "autogroup"
    group.write_text("/autogroup-7 nice 0\n")
    monkeypatch.setattr(factory.os, "getsid", lambda pid: sid)
    monkeypatch.setattr(factory.os, "getpid", lambda: 42)
    factory._autogroup_nice(10, str(group))
    assert group.read_text() == expected
