"""app/status.py: the status model from this worker's and its peers' metrics, and the page."""

from __future__ import annotations

import httpx
import pytest
from prometheus_client import CollectorRegistry

from app.metrics import Metrics
from app.models import DeadLetter, SendResult
from app.stages.common import Emission
from app.status import (
    RateBook,
    Source,
    StatusPage,
    fetch,
    parse_samples,
    peers_of,
    quantile_from_buckets,
    registry_samples,
    render_html,
    summarise,
)
from tests.plugins.factories import bare_dead_letter, send_result


def worker(stage: str) -> Metrics:
    m = Metrics(CollectorRegistry())
    m.worker_info.labels(stage, f"spillway-{stage}").set(1)
    return m


def render_worker() -> Metrics:
    m = worker("render")
    for p, lag in (("0", 7000), ("1", 5000)):
        m.consumer_lag.labels("render", "email.raw-events", p).set(lag)
        m.consumer_lag_slope.labels("render", "email.raw-events", p).set(40.0)
    m.utilisation.labels("render").set(0.93)
    m.events_in.labels("render", "email.raw-events").inc(500)
    for reason in ("render_error", "render_error", "undecodable"):
        m.emitted(Emission("dead", None, dead(reason)), "render")
    return m


def dispatch_worker() -> Metrics:
    m = worker("dispatch")
    m.consumer_lag.labels("dispatch", "email.dispatch.critical", "0").set(3)
    m.consumer_lag.labels("dispatch", "email.dispatch.bulk", "0").set(900)
    m.consumer_lag_slope.labels("dispatch", "email.dispatch.bulk", "0").set(-12.5)
    m.consumer_lag.labels("dispatch", "email.dispatch.retry-1", "0").set(4)
    m.breaker_state("sim-http", "open")
    m.quota.labels("sim-http").set(100)
    m.provider_response("sim-http", "2xx", 0.05)
    m.provider_response("sim-http", "5xx", 0.05)
    for ms in (500.0, 800.0, 1200.0, 40_000.0):
        m.emitted(Emission("sent", None, sent(ms)), "dispatch")
    return m


def sent(ms: float) -> SendResult:
    return send_result(event_id="e", provider_message_id="m", provider_latency_ms=1.0,
                       time_to_send_ms=ms, template="t")  # fmt: skip


def dead(reason: str) -> DeadLetter:
    return bare_dead_letter(error_class="E", reason=reason, message="m", original_offset=0)


def model(now: float = 1000.0, rates: RateBook | None = None) -> dict:
    sources = [
        Source(None, registry_samples(render_worker().registry)),
        Source("http://d:6069", parse_samples(dispatch_worker().exposition().decode())),
        Source("http://gone:6068", error="ConnectError: refused"),
    ]
    return summarise(sources, rates or RateBook(), now=now)


def test_stages_lanes_providers_dead_letters() -> None:
    m = model()
    stages = {s["stage"]: s for s in m["stages"]}
    assert stages["render"]["lag"] == 12_000 and stages["render"]["slope"] == 80.0
    assert stages["render"]["utilisation"] == 0.93 and stages["render"]["events_in"] == 500
    assert stages["dispatch"]["lag"] == 907 and stages["dispatch"]["workers"] == 1
    lanes = {lane["lane"]: lane for lane in m["lanes"]}
    assert list(lanes) == ["critical", "normal", "bulk", "retry-1"]
    assert lanes["critical"]["lag"] == 3 and lanes["normal"]["lag"] is None
    assert lanes["bulk"]["slope"] == -12.5 and lanes["critical"]["sent"] == 4
    # sends of 0.5, 0.8, 1.2 and 40 s: the 95th of 4 (rank 3.8) lies in the (30, 60]
    # bucket that holds the 4th, interpolated 0.8 of the way: 30 + 0.8 * 30
    assert lanes["critical"]["time_to_send_p95_s"] == 54.0
    assert lanes["bulk"]["time_to_send_p95_s"] is None  # nothing sent: no figure
    [provider] = m["providers"]
    assert provider["provider"] == "sim-http" and provider["breaker"] == "open"
    assert provider["quota_per_s"] == 100 and provider["responses"] == {"2xx": 1, "5xx": 1}
    assert m["dead_letters"]["total"] == 3
    assert m["dead_letters"]["by_reason"][0] == {
        "stage": "render",
        "reason": "render_error",
        "count": 2,
    }
    down = [w for w in m["workers"] if not w["up"]]
    assert down and down[0]["source"] == "http://gone:6068"


def test_sent_rate_and_quota_use_from_successive_loads() -> None:
    rates = RateBook()
    first = model(now=1000.0, rates=rates)
    assert first["providers"][0]["sent_per_s"] is None  # one look: no rate yet
    book = RateBook()
    assert book.rates(0.0, {"p": 100.0}) == {"p": None}
    assert book.rates(10.0, {"p": 600.0}) == {"p": 50.0}
    assert book.rates(20.0, {"p": 5.0}) == {"p": None}  # a restarted worker: counter reset


def test_quantile_from_buckets() -> None:
    buckets = {1.0: 50.0, 2.0: 100.0, float("inf"): 100.0}
    assert quantile_from_buckets(buckets, 0.5) == pytest.approx(1.0)
    assert quantile_from_buckets(buckets, 0.75) == pytest.approx(1.5)
    assert quantile_from_buckets({}, 0.95) is None
    assert quantile_from_buckets({1.0: 0.0, float("inf"): 0.0}, 0.95) is None


def test_html_shows_every_section_and_escapes() -> None:
    m = model()
    m["providers"][0]["provider"] = "<script>x</script>"
    html = render_html(m)
    for section in ('id="stages"', 'id="lanes"', 'id="providers"', 'id="dead-letters"'):
        assert section in html
    assert 'data-stage="render"' in html and "12,000" in html
    assert 'data-lane="critical"' in html and 'data-state="open"' in html
    assert 'data-reason="render_error"' in html and "unreachable" in html
    assert "<script>x</script>" not in html and "&lt;script&gt;" in html


def test_empty_pipeline_renders() -> None:
    html = render_html(summarise([Source(None, [])], RateBook(), now=0.0))
    assert "no provider has been used yet" in html and "none" in html


async def test_fetch_reads_a_peer_and_reports_a_dead_one() -> None:
    text = dispatch_worker().exposition().decode()

    def handler(request: httpx.Request) -> httpx.Response:
        if request.url.host == "d":
            assert request.url.path == "/metrics"
            return httpx.Response(200, text=text)
        return httpx.Response(503, text="no")

    async with httpx.AsyncClient(transport=httpx.MockTransport(handler)) as client:
        ok = await fetch(client, "http://d:6069/")
        bad = await fetch(client, "http://x:1")
    assert ok.error is None and any(s.name == "spillway_consumer_lag" for s in ok.samples)
    assert bad.error is not None and not bad.samples


async def test_status_page_model_without_peers() -> None:
    page = StatusPage(render_worker().registry, peers_of(" , "))
    m = await page.model()
    assert [w["stage"] for w in m["workers"]] == ["render"]
    assert peers_of("http://a:1, http://b:2,") == ["http://a:1", "http://b:2"]
