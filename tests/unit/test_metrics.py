"""app/metrics.py: the Prometheus operations, records to metrics, lag and slope,
utilisation, exposition."""

from __future__ import annotations

import asyncio
from collections import deque
from typing import Any

import pytest
from faust.types import TP
from prometheus_client import CollectorRegistry
from prometheus_client.parser import text_string_to_metric_families

from app import metrics
from app.metrics import (
    REGISTRY,
    BusyMeter,
    LagTracker,
    LoopMonitor,
    Metrics,
    Sampler,
    measure_lag,
    slope,
    stage_of,
    status_class_of,
)
from app.models import DeadLetter, DispatchRequest, SendResult
from app.runtime import Runtime
from app.settings import Settings
from app.stages.common import Emission
from app.topology import Topology
from tests.plugins.factories import bare_dead_letter, dispatch_request, send_result


@pytest.fixture
def m() -> Metrics:
    return Metrics(CollectorRegistry())


def value(m: Metrics, name: str, **labels: str) -> float | None:
    return m.registry.get_sample_value(name, labels)


def sent(priority: str = "critical", ms: float = 1500.0, replay: bool = False) -> SendResult:
    return send_result(priority=priority, time_to_send_ms=ms, replay=replay)


def dead(stage: str = "render", reason: str = "render_error") -> DeadLetter:
    return bare_dead_letter(stage=stage, reason=reason)


def test_provider_hooks(m: Metrics) -> None:
    m.provider_response("sim-http", "2xx", 0.03)
    m.provider_response("sim-http", "2xx", 0.07)
    m.provider_response("sim-http", "weird", 1.0)  # unknown class: counted as error
    assert (
        value(m, "spillway_provider_requests_total", provider="sim-http", status_class="2xx") == 2
    )
    assert (
        value(m, "spillway_provider_requests_total", provider="sim-http", status_class="error") == 1
    )
    assert (
        value(
            m,
            "spillway_provider_request_duration_seconds_bucket",
            provider="sim-http",
            status_class="2xx",
            le="0.05",
        )
        == 1
    )


def test_breaker_state_is_a_code_and_one_hot(m: Metrics) -> None:
    m.breaker_state("p", "open")
    assert value(m, "spillway_provider_breaker_state_code", provider="p") == 1
    assert [value(m, "spillway_provider_breaker_state", provider="p", state=s) for s in
            ("closed", "open", "half_open")] == [0, 1, 0]  # fmt: skip
    m.breaker_state("p", "half_open")
    assert value(m, "spillway_provider_breaker_state_code", provider="p") == 2
    m.breaker_state("p", "ajar")  # ignored
    assert value(m, "spillway_provider_breaker_state", provider="p", state="half_open") == 1


def test_retry_attempt_label_is_bounded(m: Metrics) -> None:
    m.max_attempts = 3
    for attempt in (1, 2, 7, 0):
        m.retry(attempt)
    assert value(m, "spillway_retries_total", attempt="1") == 2
    assert value(m, "spillway_retries_total", attempt="3") == 1
    assert value(m, "spillway_retries_total", attempt="7") is None


def test_the_default_operations_write_the_process_registry() -> None:
    """``DEFAULT`` (what the app factory hands every runtime) reports to ``REGISTRY``,
    the registry ``/metrics`` serves."""
    def get(name: str, **labels: str) -> float:
        return REGISTRY.get_sample_value(name, labels) or 0.0

    before = get("spillway_duplicates_suppressed_total")
    metrics.DEFAULT.duplicate_suppressed()
    assert get("spillway_duplicates_suppressed_total") == before + 1
    metrics.DEFAULT.quota("hook-p", 50.0)
    metrics.DEFAULT.bucket_level("hook-p", 3.5)
    metrics.DEFAULT.rate_limit_remaining("hook-p", 99)
    metrics.DEFAULT.breaker_state("hook-p", "closed")
    metrics.DEFAULT.provider_response("hook-p", "429", 0.001)
    metrics.DEFAULT.retry(2)
    assert get("spillway_provider_quota_per_second", provider="hook-p") == 50
    assert get("spillway_provider_bucket_tokens", provider="hook-p") == 3.5
    assert get("spillway_provider_ratelimit_remaining", provider="hook-p") == 99
    assert get("spillway_provider_requests_total", provider="hook-p", status_class="429") == 1


@pytest.mark.parametrize(
    ("status", "cls"),
    [(202, "2xx"), (429, "429"), (400, "4xx"), (503, "5xx"), (None, "error"), (302, "error")],
)
def test_status_class_of(status: int | None, cls: str) -> None:
    assert status_class_of(status) == cls


def test_emitted_records(m: Metrics) -> None:
    m.emitted(Emission("sent", b"e1", sent("critical", 1500.0)), "dispatch")
    m.emitted(Emission("sent", b"e2", sent("bulk", 900_000.0, replay=True)), "dispatch")
    m.emitted(Emission("dead", b"e3", dead("render", "render_error")), "render")
    assert value(m, "spillway_events_out_total", stage="dispatch", outcome="sent") == 2
    assert value(m, "spillway_emails_sent_total", provider="sim-http", priority="bulk") == 1
    assert value(m, "spillway_time_to_send_seconds_count", priority="critical") == 1
    assert value(m, "spillway_time_to_send_seconds_bucket", priority="critical", le="2.5") == 1
    assert value(m, "spillway_time_to_send_seconds_bucket", priority="critical", le="1.0") == 0
    assert value(m, "spillway_time_to_send_seconds_count", priority="bulk") is None  # replay
    assert value(m, "spillway_dead_letters_total", stage="render", reason="render_error") == 1


def test_stage_of_in_dev_mode() -> None:
    req = dispatch_request("e", template="x")
    assert stage_of(Emission("rendered", None, None), "render") == "render"
    assert stage_of(Emission("rendered.normal", None, None), "all") == "render"
    assert stage_of(Emission("dispatch.normal", None, req), "all") == "route"
    retry = DispatchRequest(**{**req.asdict(), "attempts": 1})
    assert stage_of(Emission("dispatch.normal", None, retry), "all") == "dispatch"
    assert stage_of(Emission("dead", None, dead("dispatch")), "all") == "dispatch"
    assert stage_of(Emission("sent", None, sent()), "all") == "dispatch"


async def test_runtime_emit_counts_what_it_produced(registry: Any) -> None:
    settings = Settings(stage="render")
    produced: list[bytes] = []

    class FakeTopic:
        async def send(self, key: bytes | None, value: bytes) -> None:
            produced.append(value)

    topology = Topology(settings, {"dead": FakeTopic()})
    runtime = Runtime(settings, topology, registry=registry, metrics=metrics.DEFAULT)
    runtime.serde.register()
    labels = {"stage": "render", "reason": "undecodable"}
    before = REGISTRY.get_sample_value("spillway_dead_letters_total", labels) or 0.0
    await runtime.emit(Emission("dead", b"k", dead("render", "undecodable")))
    assert len(produced) == 1
    assert REGISTRY.get_sample_value("spillway_dead_letters_total", labels) == before + 1


def test_slope_is_least_squares() -> None:
    assert slope([(0.0, 0), (1.0, 10), (2.0, 20), (3.0, 30)]) == pytest.approx(10.0)
    assert slope([(0.0, 100), (10.0, 50)]) == pytest.approx(-5.0)
    assert slope([(5.0, 7)]) == 0.0
    assert slope(deque([(1.0, 3), (1.0, 9)])) == 0.0


def test_lag_tracker_window_and_forgetting() -> None:
    tracker = LagTracker(window_s=10.0)
    key = ("render", "email.raw-events", "0")
    other = ("render", "email.raw-events", "1")
    for t in range(0, 36, 2):  # lag grows 50/s until t=20, then stays flat
        lag = 50 * min(t, 20)
        slopes = tracker.update(float(t), {key: lag, other: 5})
    assert slopes[other] == 0.0
    assert slopes[key] == pytest.approx(0.0)  # the last 10 s are flat
    slopes = tracker.update(36.0, {key: 1000 + 300})  # partition 1 revoked
    assert set(tracker.samples) == {key} and slopes[key] > 0


def test_busy_meter_counts_overlaps_once() -> None:
    now = [0.0]
    added: list[float] = []
    meter = BusyMeter(added.append, clock=lambda: now[0])
    meter.enter()  # lane A from 0
    now[0] = 1.0
    meter.enter()  # lane B from 1
    now[0] = 2.0
    meter.leave()
    now[0] = 3.0
    meter.flush()  # still busy: the 3 s so far count now
    assert meter.total == 3.0
    now[0] = 4.0
    meter.leave()
    now[0] = 10.0
    meter.flush()  # idle: nothing to add
    assert meter.total == 4.0 and sum(added) == 4.0


def test_sampler_utilisation_and_revoked_partitions(m: Metrics) -> None:
    sampler = Sampler(Settings(stage="dispatch"), m)
    assert "email.dispatch.critical" in sampler.topics
    k0 = ("dispatch", "email.dispatch.critical", "0")
    k1 = ("dispatch", "email.dispatch.critical", "1")
    sampler.record_lag(0.0, {k0: 10, k1: 20})
    sampler.record_lag(5.0, {k0: 60})  # partition 1 went to another worker
    assert value(m, "spillway_consumer_lag", stage="dispatch", topic=k0[1], partition="0") == 60
    assert (
        value(m, "spillway_consumer_lag_slope", stage="dispatch", topic=k0[1], partition="0") == 10
    )
    assert value(m, "spillway_consumer_lag", stage="dispatch", topic=k1[1], partition="1") is None

    assert m.busy_meter("dispatch") is m.busy_meter("dispatch")  # one meter per stage
    now = [100.0]  # a virtual clock: counts of seconds, not a measurement
    meter = BusyMeter(m.busy_seconds.labels("dispatch").inc, clock=lambda: now[0])
    m._busy["dispatch"] = meter
    sampler.sample_busy(now[0])  # the start of the first interval
    assert value(m, "spillway_agent_utilisation_ratio", stage="dispatch") is None
    meter.enter()
    now[0] = 101.0
    meter.leave()
    now[0] = 104.0
    sampler.sample_busy(now[0])  # busy 1 s of 4
    assert value(m, "spillway_agent_utilisation_ratio", stage="dispatch") == 0.25
    meter.enter()
    now[0] = 106.0
    sampler.sample_busy(now[0])  # busy the whole 2 s, still in progress
    assert value(m, "spillway_agent_utilisation_ratio", stage="dispatch") == 1.0
    now[0] = 116.0
    sampler.sample_busy(now[0])  # an interval in progress counts as it goes
    assert value(m, "spillway_agent_utilisation_ratio", stage="dispatch") == 1.0
    meter.leave()
    now[0] = 126.0
    sampler.sample_busy(now[0])
    assert value(m, "spillway_agent_utilisation_ratio", stage="dispatch") == 0.0


class FakeSelector:
    """A selector whose select() waits ``timeout`` seconds of a virtual clock."""

    def __init__(self, clock: list[float]) -> None:
        self.clock = clock
        self.extra = "delegated"

    def select(self, timeout: float | None = None) -> list[Any]:
        self.clock[0] += timeout or 0.0
        return []


def test_loop_monitor_counts_time_outside_select(monkeypatch: pytest.MonkeyPatch) -> None:
    clock = [50.0]
    monkeypatch.setattr(metrics.time, "perf_counter", lambda: clock[0])
    loop = type("Loop", (), {})()
    loop._selector = FakeSelector(clock)  # type: ignore[attr-defined]
    monitor = LoopMonitor(loop)  # type: ignore[arg-type]
    assert loop._selector.extra == "delegated"  # type: ignore[attr-defined]
    loop._selector.select(3.0)  # type: ignore[attr-defined]  # idle 3 s
    clock[0] += 1.0  # busy 1 s
    assert monitor.sample() == 0.25
    loop._selector.select(2.0)  # type: ignore[attr-defined]
    assert monitor.sample() == 0.0  # only waited
    clock[0] += 4.0
    assert monitor.sample() == 1.0  # never waited
    assert monitor.sample() is None  # no time passed: no figure
    assert LoopMonitor(loop)._timed is monitor._timed  # type: ignore[arg-type]  # wraps once
    assert LoopMonitor(type("Uv", (), {})()).sample() is None  # type: ignore[arg-type]


async def test_loop_monitor_wraps_a_real_loop_once() -> None:
    loop = asyncio.get_running_loop()
    monitor = LoopMonitor(loop)
    await asyncio.sleep(0.01)
    ratio = monitor.sample()
    assert ratio is not None and 0.0 <= ratio <= 1.0
    assert LoopMonitor(loop)._timed is monitor._timed


class FakeConsumer:
    def __init__(self) -> None:
        self.tps = {
            TP("ns.email.rendered", 0),
            TP("ns.email.rendered", 1),
            TP("ns-route-__assignor-__leader", 0),  # not ours
        }
        ours = sorted((tp for tp in self.tps if tp.topic == "ns.email.rendered"),
                      key=lambda tp: tp.partition)  # fmt: skip
        self.p0, self.p1 = ours
        self._committed_offset = {self.p0: 40, self.p1: None}

    def assignment(self) -> set[Any]:
        return self.tps

    async def highwaters(self, *tps: Any) -> dict[Any, int]:
        return {self.p0: 100, self.p1: 7}

    async def earliest_offsets(self, *tps: Any) -> dict[Any, int]:
        assert list(tps) == [self.p1]
        return {self.p1: 2}


async def test_measure_lag_end_minus_committed() -> None:
    topics = {"ns.email.rendered": ("route", "email.rendered")}
    lags = await measure_lag(FakeConsumer(), topics)
    assert lags == {("route", "email.rendered", "0"): 60, ("route", "email.rendered", "1"): 5}


def test_consumed_topics_strip_the_namespace() -> None:
    topics = metrics.consumed_topics(Settings(stage="all", topic_namespace="ns."))
    assert topics["ns.email.raw-events"] == ("render", "email.raw-events")
    assert topics["ns.email.dispatch.bulk"] == ("dispatch", "email.dispatch.bulk")


def test_exposition_is_prometheus_text_with_bounded_labels(m: Metrics) -> None:
    m.emitted(Emission("sent", b"e1", sent()), "dispatch")
    m.provider_response("sim-http", "2xx", 0.1)
    families = {f.name: f for f in text_string_to_metric_families(m.exposition().decode())}
    assert "spillway_time_to_send_seconds" in families
    for family in families.values():
        assert family.name.startswith("spillway_")
        for sample in family.samples:
            assert "event_id" not in sample.labels and "to" not in sample.labels
    assert "spillway_events_out_total" in m.metric_names()
    assert "spillway_time_to_send_seconds_bucket" in m.metric_names()


async def test_every_app_serves_metrics_and_status() -> None:
    from app.factory import create_app

    app = create_app(Settings(stage="route"))
    views = app.web.views
    assert {"/metrics", "/status", "/status.json"} <= set(views)
    assert any(isinstance(s, metrics.InSensor) for s in app.sensors)
    response = await views["/metrics"].get(None)
    assert response.headers["Content-Type"].startswith("text/plain")
    assert b'spillway_worker_info{app_id="spillway-route",stage="route"} 1.0' in response.body
    page = await views["/status"].get(None)
    assert page.status == 200 and b'id="stages"' in page.body


def test_operations_never_raise_into_the_pipeline(
    caplog: pytest.LogCaptureFixture, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(metrics, "_failed", set())  # "logged once" is per process
    fresh = Metrics(CollectorRegistry())
    ops = metrics.PrometheusMetrics(fresh)
    caplog.set_level("WARNING", logger=metrics.log.name)

    def warned() -> list[str]:
        return [r.getMessage().split("(")[0] for r in caplog.records if r.levelname == "WARNING"]

    ops.rate_limit_remaining("p", "lots")  # type: ignore[arg-type]
    ops.render_time("t", None)  # type: ignore[arg-type]
    ops.emitted(Emission("sent", None, sent("critical", "soon")), "dispatch")  # type: ignore[arg-type]
    first = warned()
    assert any("rate_limit_remaining" in w for w in first)
    assert any("render_time" in w for w in first)
    assert any("emitted" in w for w in first)
    ops.rate_limit_remaining("p", "lots")  # type: ignore[arg-type]
    assert warned() == first  # once per operation, not once per call
    ops.rate_limit_remaining("p", 7)  # the operation still works after a failure
    assert value(fresh, "spillway_provider_ratelimit_remaining", provider="p") == 7
