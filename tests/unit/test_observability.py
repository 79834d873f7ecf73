"""app/observability.py: the StageMetrics protocol, its implementations, and that the
runtime and the app factory hand stages the object instead of the global."""

from __future__ import annotations

import inspect
from typing import Any

import pytest
from prometheus_client import CollectorRegistry

from app import metrics as prometheus
from app.factory import create_app
from app.metrics import Metrics, PrometheusMetrics
from app.observability import NullMetrics, StageMetrics
from app.runtime import Runtime
from app.settings import Settings
from app.stages.common import Emission, now_ms
from app.stages.deadletters import summarize_letters
from app.topology import Topology
from tests.plugins.factories import bare_dead_letter, dead_letter, send_result
from tests.plugins.metrics import RecordingMetrics

OPERATIONS = sorted(
    name for name, v in vars(StageMetrics).items() if callable(v) and not name.startswith("_")
)


def test_the_protocol_has_the_operations_stages_call() -> None:
    called = {
        "emitted", "produce_failed", "busy", "render_time", "provider_response",
        "breaker_state", "rate_limit_remaining", "bucket_level", "quota", "retry",
        "missing_message_id", "duplicate_suppressed", "dead_letter_window",
    }  # fmt: skip
    assert set(OPERATIONS) == called


@pytest.mark.parametrize(
    "impl",
    [PrometheusMetrics(Metrics(CollectorRegistry())), NullMetrics(), RecordingMetrics()],
    ids=["prometheus", "null", "recording"],
)
def test_each_implementation_has_every_operation_with_its_parameters(impl: Any) -> None:
    assert isinstance(impl, StageMetrics)
    for name in OPERATIONS:
        want = list(inspect.signature(getattr(StageMetrics, name)).parameters)[1:]  # no self
        assert list(inspect.signature(getattr(impl, name)).parameters) == want, name


def test_prometheus_operations_set_the_same_series_as_before() -> None:
    m = Metrics(CollectorRegistry())
    p = PrometheusMetrics(m)

    def value(name: str, **labels: str) -> float | None:
        return m.registry.get_sample_value(name, labels)

    p.emitted(Emission("sent", None, send_result(priority="bulk")), "dispatch")
    p.emitted(Emission("dead", None, bare_dead_letter(reason="undecodable")), "render")
    p.produce_failed("render", "rendered", "KafkaError")
    p.render_time("password_reset", 0.002)
    with p.busy("route"), p.busy("route"):
        pass
    p.provider_response("sim", "2xx", 0.01)
    p.provider_response("sim", "teapot", 0.01)  # unknown class: error
    p.breaker_state("sim", "open")
    p.rate_limit_remaining("sim", 7)
    p.bucket_level("sim", 2.5)
    p.quota("sim", 100.0)
    p.retry(9)  # clamped to max_attempts
    p.missing_message_id("sim")
    p.duplicate_suppressed()
    assert value("spillway_emails_sent_total", provider="sim-http", priority="bulk") == 1
    assert value("spillway_events_out_total", stage="dispatch", outcome="sent") == 1
    assert value("spillway_dead_letters_total", stage="render", reason="undecodable") == 1
    assert value("spillway_produce_failures_total", stage="render", topic="rendered",
                 error="KafkaError") == 1  # fmt: skip
    assert value("spillway_render_duration_seconds_count", template="password_reset") == 1
    assert value("spillway_agent_busy_seconds_total", stage="route") is not None
    assert value("spillway_provider_requests_total", provider="sim", status_class="2xx") == 1
    assert value("spillway_provider_requests_total", provider="sim", status_class="error") == 1
    assert value("spillway_provider_breaker_state_code", provider="sim") == 1
    assert value("spillway_provider_ratelimit_remaining", provider="sim") == 7
    assert value("spillway_provider_bucket_tokens", provider="sim") == 2.5
    assert value("spillway_provider_quota_per_second", provider="sim") == 100
    assert value("spillway_retries_total", attempt="3") == 1
    assert value("spillway_provider_missing_message_id_total", provider="sim") == 1
    assert value("spillway_duplicates_suppressed_total") == 1


def test_the_analyser_gauges_appear_only_where_the_analyser_reports() -> None:
    m = Metrics(CollectorRegistry())
    p = PrometheusMetrics(m)
    assert b"spillway_dead_letters_window" not in m.exposition()  # other workers: as before
    now = now_ms()
    summary = summarize_letters([dead_letter(dead_at=now)], now_ms=now, window_s=300)
    alert = {"firing": False, "count": {"firing": False}, "rate": {"firing": False}}
    p.dead_letter_window({"5m": summary}, alert)
    p.dead_letter_window({"5m": summary}, alert)  # the gauges are made once
    get = m.registry.get_sample_value
    assert get("spillway_dead_letters_window_count", {"window": "5m"}) == 1
    assert get("spillway_dead_letters_alert", {"signal": "any"}) == 0


def test_prometheus_operations_never_raise(caplog: pytest.LogCaptureFixture) -> None:
    p = PrometheusMetrics(Metrics(CollectorRegistry()))
    p.rate_limit_remaining("p", "lots")  # type: ignore[arg-type]
    p.render_time("t", None)  # type: ignore[arg-type]
    p.provider_response("p", "2xx", float("nan"))  # NaN latency: observed, no raise


async def test_runtime_reports_what_it_produced_to_its_metrics(registry: Any) -> None:
    settings = Settings(stage="render")
    produced: list[bytes] = []

    class FakeTopic:
        async def send(self, key: bytes | None, value: bytes) -> None:
            produced.append(value)

    recording = RecordingMetrics()
    runtime = Runtime(
        settings, Topology(settings, {"dead": FakeTopic()}), registry=registry, metrics=recording
    )
    runtime.serde.register()
    emission = Emission("dead", b"k", bare_dead_letter(reason="undecodable"))
    await runtime.emit(emission)
    assert len(produced) == 1 and recording.calls == [("emitted", (emission, "render"))]


def test_a_runtime_without_metrics_reports_nothing(registry: Any) -> None:
    settings = Settings(stage="render")
    runtime = Runtime(settings, Topology(settings, {}), registry=registry)
    assert isinstance(runtime.metrics, NullMetrics)


def test_the_factory_hands_the_runtime_its_metrics(registry: Any) -> None:
    recording = RecordingMetrics()
    app = create_app(Settings(stage="route"), registry=registry, metrics=recording)
    assert app.spillway.metrics is recording  # type: ignore[attr-defined]
    app = create_app(Settings(stage="route"), registry=registry)
    assert app.spillway.metrics is prometheus.DEFAULT  # type: ignore[attr-defined]
