"""Agents in Faust's test context: memory broker and store, outputs captured."""

from __future__ import annotations

import asyncio
import json
from typing import Any

import pytest

from app.factory import create_app
from app.settings import Settings
from app.templating import TemplateStore
from tests.plugins.agents import make_app
from tests.plugins.factories import rendered_email
from tests.plugins.metrics import RecordingMetrics


async def test_render_agent_renders_and_dead_letters(
    registry: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    recording = RecordingMetrics()
    app, out = make_app("render", registry, monkeypatch, metrics=recording)
    sample = TemplateStore(Settings().templates_dir).sample_data("newsletter")
    good = {
        "event_id": "n1",
        "template": "newsletter",
        "to": "a@b.example",
        "priority": "bulk",
        "data": sample,
    }
    async with app.agents["render"].test_context() as agent:
        await agent.put(json.dumps(good).encode(), key=b"n1")
        await agent.put(b"not an event", key=b"n2")
    assert [e.topic for e in out] == ["rendered.bulk", "dead"]  # by the event's priority
    assert out[1].value.reason == "undecodable" and out[1].value.event_id == "n2"
    # the agent reports to the metrics it was given (issue 16 pt 4), not a global
    assert {args for args in recording.of("busy")} == {("render",)}
    assert recording.open_busy["render"] == 0
    assert [t for t, _ in recording.of("render_time")] == ["newsletter"]  # rendered only


async def test_route_agent_picks_lane(registry: Any, monkeypatch: pytest.MonkeyPatch) -> None:
    recording = RecordingMetrics()
    app, out = make_app("route", registry, monkeypatch, metrics=recording)
    serde = app.spillway.serde  # type: ignore[attr-defined]
    email = rendered_email(event_id="r1", priority="critical", template="password_reset")
    async with app.agents["route"].test_context() as agent:
        await agent.put(serde.encode("email.rendered", email), key=b"r1")
    assert [e.topic for e in out] == ["dispatch.critical"]
    assert recording.of("busy") == [("route",)] and recording.open_busy["route"] == 0


@pytest.mark.parametrize("stage", ["render", "route", "dispatch", "intake", "all"])
def test_each_stage_has_its_own_app_id(stage: str) -> None:
    app = create_app(Settings(stage=stage))  # type: ignore[arg-type]
    assert app.conf.id == f"spillway-{stage}"


async def test_dispatch_agent_sends_through_the_provider(
    registry: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    from app.agents import dispatch as dispatch_module
    from tests.plugins.factories import dispatch_request as request
    from tests.plugins.fakes import FakeProvider

    class Owner:
        def __init__(self, app: Any) -> None:
            pass

        def owns(self, tp: Any, generation: int | None) -> bool:
            return True

    provider = FakeProvider(name="sim-http")
    table: dict[bytes, Any] = {}  # the ledger table, without a changelog producer
    monkeypatch.setattr(dispatch_module, "build_provider", lambda policy: provider)
    monkeypatch.setattr(dispatch_module, "FaustMembership", Owner)
    monkeypatch.setattr(dispatch_module.ledger_table, "declare_table", lambda app, n: table)
    monkeypatch.setattr(dispatch_module.pressure_table, "declare_table", lambda app, n: {})
    recording = RecordingMetrics()
    app, out = make_app("dispatch", registry, monkeypatch, metrics=recording)
    process = registry_figures()
    dispatcher = app.spillway_dispatcher  # type: ignore[attr-defined]
    serde = app.spillway.serde  # type: ignore[attr-defined]
    payload = serde.encode("email.dispatch.critical", request("c1", "critical"))
    async with app.agents["dispatch-critical"].test_context() as agent:
        await agent.put(payload, key=b"c1")
        for want in (1, 2):
            for _ in range(200):  # a condition with a deadline, not a clock
                if dispatcher.stats.done == want:
                    break
                await asyncio.sleep(0.01)
            if want == 1:  # the same event again, once the first is done: suppressed
                await agent.put(payload, key=b"c1")
    assert dispatcher.stats.done == 2
    assert [e.topic for e in out] == ["sent"]
    assert [c.event_id for c in provider.calls] == ["c1"]
    assert table[b"c1"]["s"] == "sent"
    # the stage and the agent report to the metrics they were given (issue 16 pt 4)
    assert ("sim-http", "closed") in recording.of("breaker_state")
    assert [p for p, _ in recording.of("quota")] == ["sim-http"]
    assert [(p, c) for p, c, _ in recording.of("provider_response")] == [("sim-http", "2xx")]
    assert recording.of("duplicate_suppressed") == [()]
    assert recording.of("busy") == [("dispatch",), ("dispatch",)]
    assert recording.open_busy["dispatch"] == 0
    assert registry_figures() == process  # not to the process's Prometheus registry


def registry_figures() -> dict[str, float]:
    """The dispatch figures of the process's Prometheus registry (``app.metrics.REGISTRY``)."""
    from app.metrics import REGISTRY

    names = (
        "spillway_provider_requests_total",
        "spillway_duplicates_suppressed_total",
        "spillway_agent_busy_seconds_total",
        "spillway_provider_quota_per_second",
        "spillway_provider_breaker_state_code",
    )
    return {
        f"{s.name}{sorted(s.labels.items())}": s.value
        for family in REGISTRY.collect()
        for s in family.samples
        if s.name in names
    }
