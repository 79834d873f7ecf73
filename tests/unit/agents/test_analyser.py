"""The dead-letter analyser agent in Faust's test context, and its gauges."""

from __future__ import annotations

from typing import Any

import pytest
from prometheus_client import CollectorRegistry

from app.agents import deadletters as analyser_module
from app.metrics import AnalyserMetrics
from app.settings import Settings
from app.stages.common import now_ms
from app.stages.deadletters import parse_count_key
from tests.plugins.agents import make_app
from tests.plugins.factories import dead_letter as letter


@pytest.fixture
def table(monkeypatch: pytest.MonkeyPatch) -> dict[bytes, Any]:
    counts: dict[bytes, Any] = {}  # the counts table, without a changelog producer
    monkeypatch.setattr(analyser_module, "declare_table", lambda app, partitions: counts)
    return counts


async def test_analyser_counts_dead_letters_by_partition(
    registry: Any, table: dict[bytes, Any]
) -> None:
    app, out = make_app("analyser", registry)
    serde = app.spillway.serde  # type: ignore[attr-defined]
    now = now_ms()
    async with app.agents["analyser"].test_context() as agent:
        for i in range(3):
            dl = letter(event_id=f"e{i}", dead_at=now - i * 1000)
            await agent.put(serde.encode("email.dead", dl), key=f"e{i}".encode(), partition=1)
        await agent.put(b"not a dead letter", key=b"x", partition=1)
    assert out == []  # the analyser produces nothing but its changelog
    assert {parse_count_key(k)[0] for k in table} == {1}
    analyser = app.spillway_analyser  # type: ignore[attr-defined]
    doc = analyser.query({"window": "5m", "by": "reason,template"})
    assert doc["total"] == 3 and doc["unreadable"] == 1
    assert doc["by"]["template"] == {"order_confirmation@v2": {"count": 3, "previous": 0}}
    assert set(doc["by"]) == {"reason", "template"}
    assert doc["alert"]["firing"] is False
    for bad in ({"window": "soon"}, {"window": "30d"}, {"by": "colour"}):
        with pytest.raises(ValueError):
            analyser.query(bad)


def test_default_window_and_alert_thresholds(registry: Any, table: dict[bytes, Any]) -> None:
    settings = Settings(stage="analyser", analyser_alert_count=2, analyser_windows="15m,1h")
    from app.factory import create_app

    app = create_app(settings, registry=registry)
    analyser = app.spillway_analyser  # type: ignore[attr-defined]
    now = now_ms()
    for i in range(2):
        analyser.counts.add(letter(dead_at=now - i), partition=0)
    doc = analyser.query({})
    assert doc["window"] == "15m" and doc["alert"]["count"]["firing"] and doc["alert"]["firing"]


def test_gauges_follow_the_windows() -> None:
    reg = CollectorRegistry()
    gauges = AnalyserMetrics(reg)
    from app.stages.deadletters import summarize_letters

    now = now_ms()
    s = summarize_letters([letter(dead_at=now), letter(dead_at=now, source="crm")], now_ms=now,
                          window_s=300)  # fmt: skip
    alert = {"firing": True, "count": {"firing": True}, "rate": {"firing": False}}
    gauges.update({"5m": s}, alert)
    get = reg.get_sample_value
    assert get("spillway_dead_letters_window_count", {"window": "5m"}) == 2
    labels = {"window": "5m", "dimension": "source", "value": "crm"}
    assert get("spillway_dead_letters_window_by", labels) == 1
    assert get("spillway_dead_letters_alert", {"signal": "any"}) == 1
    assert get("spillway_dead_letters_alert", {"signal": "rate"}) == 0
    gauges.update({"5m": summarize_letters([], now_ms=now, window_s=300)}, alert)
    assert get("spillway_dead_letters_window_by", labels) is None  # gone, not stale
