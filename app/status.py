"""The status page: the pipeline at a glance, without Grafana.

Served by every worker's web server: ``/status`` (HTML, refreshes itself every 5 s)
and ``/status.json`` (the same figures). It reads the same metrics Prometheus
scrapes: this worker's registry plus the ``/metrics`` of the workers listed in
``SPILLWAY_METRICS_PEERS``; so one worker given the others as peers shows the whole
pipeline: stages and their lag, the dispatch lanes, providers with breaker and
quota, and the dead letters by reason. Rates (sent per second) come from the
difference between this page's own recent loads.
"""

from __future__ import annotations

import asyncio
import math
import time
from collections import defaultdict, deque
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import jinja2
from prometheus_client.parser import text_string_to_metric_families

from app.models import PRIORITIES
from app.topology import STAGE_ORDER, dispatch_topics

TEMPLATE = Path(__file__).parent / "static" / "status.html"
REFRESH_S = 5
LAG_ALERT = 10_000  # the lag alert's threshold (deploy/prometheus/rules.yml)
RATE_WINDOW_S = 60.0


@dataclass(frozen=True, slots=True)
class Sample:
    name: str
    labels: dict[str, str]
    value: float


@dataclass
class Source:
    """One worker's metrics: this process (``url`` None) or a peer's ``/metrics``."""

    url: str | None
    samples: list[Sample] = field(default_factory=list)
    error: str | None = None


def registry_samples(registry: Any) -> list[Sample]:
    return [
        Sample(s.name, dict(s.labels), float(s.value))
        for family in registry.collect()
        for s in family.samples
    ]


def parse_samples(text: str) -> list[Sample]:
    return [
        Sample(s.name, dict(s.labels), float(s.value))
        for family in text_string_to_metric_families(text)
        for s in family.samples
    ]


async def fetch(client: httpx.AsyncClient, url: str) -> Source:
    try:
        response = await client.get(url.rstrip("/") + "/metrics")
        response.raise_for_status()
        return Source(url, parse_samples(response.text))
    except Exception as exc:  # an unreachable peer is shown as down, not an error page
        return Source(url, error=f"{type(exc).__name__}: {exc}"[:200])


class RateBook:
    """Recent counter totals by key, to turn counters into per-second rates."""

    def __init__(self, window_s: float = RATE_WINDOW_S) -> None:
        self.window_s = window_s
        self._history: deque[tuple[float, dict[str, float]]] = deque()

    def rates(self, now: float, totals: dict[str, float]) -> dict[str, float | None]:
        self._history.append((now, totals))
        while len(self._history) > 2 and self._history[0][0] < now - self.window_s:
            self._history.popleft()
        then, old = self._history[0]
        out: dict[str, float | None] = {}
        for key, total in totals.items():
            before = old.get(key)
            ok = now > then and before is not None and total >= before  # else reset or new
            out[key] = (total - before) / (now - then) if ok and before is not None else None
        return out


def _sum(samples: Iterable[Sample], name: str, **match: str) -> float | None:
    values = [
        s.value
        for s in samples
        if s.name == name and all(s.labels.get(k) == v for k, v in match.items())
    ]
    return sum(values) if values else None


def _by(samples: Iterable[Sample], name: str, *keys: str) -> dict[tuple[str, ...], float]:
    out: dict[tuple[str, ...], float] = defaultdict(float)
    for s in samples:
        if s.name == name:
            out[tuple(s.labels.get(k, "") for k in keys)] += s.value
    return dict(out)


def quantile_from_buckets(buckets: dict[float, float], q: float) -> float | None:
    """``histogram_quantile`` over cumulative bucket counts (upper bound -> count)."""
    if not buckets:
        return None
    bounds = sorted(buckets)
    total = buckets[bounds[-1]]
    if total <= 0:
        return None
    rank = q * total
    prev_bound, prev_count = 0.0, 0.0
    for bound in bounds:
        count = buckets[bound]
        if count >= rank:
            if math.isinf(bound):
                return prev_bound
            if count == prev_count:
                return bound
            return prev_bound + (bound - prev_bound) * (rank - prev_count) / (count - prev_count)
        prev_bound, prev_count = bound, count
    return None


def summarise(sources: Sequence[Source], rates: RateBook, now: float | None = None) -> dict:
    """The status model (what ``/status.json`` returns and the page shows)."""
    now = time.time() if now is None else now
    samples = [s for src in sources for s in src.samples]

    workers = []
    for src in sources:
        infos = [s.labels for s in src.samples if s.name == "spillway_worker_info"]
        for info in infos or [{}]:
            workers.append(
                {
                    "source": src.url or "this worker",
                    "stage": info.get("stage", "?"),
                    "app_id": info.get("app_id", "?"),
                    "up": src.error is None,
                    "error": src.error,
                }
            )

    lag = _by(samples, "spillway_consumer_lag", "stage", "topic")
    slope = _by(samples, "spillway_consumer_lag_slope", "stage", "topic")
    util = _by(samples, "spillway_agent_utilisation_ratio", "stage")
    loop_busy: dict[str, float] = {}  # busiest event loop among each stage's workers
    for src in sources:
        ratio = _sum(src.samples, "spillway_event_loop_busy_ratio")
        for s in src.samples:
            if s.name == "spillway_worker_info" and ratio is not None:
                stage = s.labels.get("stage", "")
                loop_busy[stage] = max(loop_busy.get(stage, 0.0), ratio)
    events_in = _by(samples, "spillway_events_in_total", "stage")
    events_out = _by(samples, "spillway_events_out_total", "stage")
    known = {w["stage"] for w in workers if w["up"]} | {k[0] for k in lag}
    expand = set(STAGE_ORDER) if "all" in known else known
    stages = []
    for stage in (s for s in STAGE_ORDER if s in expand):
        keys = [k for k in lag if k[0] == stage]
        util_value = util.get((stage,))
        stages.append(
            {
                "stage": stage,
                "workers": sum(1 for w in workers if w["up"] and w["stage"] in (stage, "all")),
                "lag": int(sum(lag[k] for k in keys)) if keys else None,
                "slope": round(sum(slope.get(k, 0.0) for k in keys), 2) if keys else None,
                "utilisation": round(util_value, 3) if util_value is not None else None,
                "loop_busy": _round(loop_busy.get(stage, loop_busy.get("all")), 3),
                "events_in": int(events_in.get((stage,), 0)),
                "events_out": int(events_out.get((stage,), 0)),
            }
        )

    topic_of = dispatch_topics()
    lane_of = {topic: lane for lane, topic in topic_of.items()}
    lane_names = [p for p in PRIORITIES] + sorted(
        {lane_of.get(t, t) for (st, t) in lag if st == "dispatch"} - set(PRIORITIES)
    )
    tts: dict[str, dict[float, float]] = defaultdict(dict)
    for s in samples:
        if s.name == "spillway_time_to_send_seconds_bucket":
            le = float(s.labels["le"])
            prio = s.labels.get("priority", "")
            tts[prio][le] = tts[prio].get(le, 0.0) + s.value
    sent_by_prio = _by(samples, "spillway_emails_sent_total", "priority")
    lanes = []
    for lane in lane_names:
        key = ("dispatch", topic_of.get(lane, lane))
        p95 = quantile_from_buckets(tts.get(lane, {}), 0.95)
        lanes.append(
            {
                "lane": lane,
                "topic": key[1],
                "lag": int(lag[key]) if key in lag else None,
                "slope": round(slope.get(key, 0.0), 2) if key in lag else None,
                "sent": int(sent_by_prio.get((lane,), 0)),
                "time_to_send_p95_s": round(p95, 3) if p95 is not None else None,
            }
        )

    sent = _by(samples, "spillway_emails_sent_total", "provider")
    requests = _by(samples, "spillway_provider_requests_total", "provider", "status_class")
    names = sorted(
        {k[0] for k in sent}
        | {k[0] for k in requests}
        | {
            s.labels["provider"]
            for s in samples
            if s.name.startswith("spillway_provider_") and "provider" in s.labels
        }
    )
    sent_rates = rates.rates(now, {p: sent.get((p,), 0.0) for p in names})
    providers = []
    for name in names:
        states = {
            s.labels.get("state"): s.value
            for s in samples
            if s.name == "spillway_provider_breaker_state" and s.labels.get("provider") == name
        }
        # several dispatch workers: the worst state wins
        breaker = next((st for st in ("open", "half_open", "closed") if states.get(st)), "unknown")
        quota = _max(samples, "spillway_provider_quota_per_second", name)
        rate = sent_rates.get(name)
        providers.append(
            {
                "provider": name,
                "breaker": breaker,
                "quota_per_s": quota,
                "sent": int(sent.get((name,), 0)),
                "sent_per_s": round(rate, 2) if rate is not None else None,
                "quota_use": round(rate / quota, 3) if rate is not None and quota else None,
                "ratelimit_remaining": _min(samples, "spillway_provider_ratelimit_remaining", name),
                "bucket_tokens": _sum(samples, "spillway_provider_bucket_tokens", provider=name),
                "responses": {cls: int(n) for (p, cls), n in sorted(requests.items()) if p == name},
            }
        )

    dead = _by(samples, "spillway_dead_letters_total", "stage", "reason")
    dead_rows = [
        {"stage": st, "reason": reason, "count": int(n)}
        for (st, reason), n in sorted(dead.items(), key=lambda kv: -kv[1])
        if n > 0
    ]
    return {
        "generated_at": now,
        "workers": workers,
        "stages": stages,
        "lanes": lanes,
        "providers": providers,
        "dead_letters": {"total": sum(r["count"] for r in dead_rows), "by_reason": dead_rows},
        "lag_alert": LAG_ALERT,
    }


def _round(value: float | None, digits: int) -> float | None:
    return None if value is None else round(value, digits)


def _max(samples: Iterable[Sample], name: str, provider: str) -> float | None:
    values = [s.value for s in samples if s.name == name and s.labels.get("provider") == provider]
    return max(values) if values else None


def _min(samples: Iterable[Sample], name: str, provider: str) -> float | None:
    values = [s.value for s in samples if s.name == name and s.labels.get("provider") == provider]
    return min(values) if values else None


# --- HTML ------------------------------------------------------------------------------------
def _number(value: Any, digits: int = 0) -> str:
    if value is None:
        return "—"
    return f"{value:,.{digits}f}"


def _signed(value: Any) -> str:
    return "—" if value is None else f"{value:+,.1f}/s"


def _percent(value: Any) -> str:
    return "—" if value is None else f"{100 * value:.0f}%"


_env = jinja2.Environment(
    loader=jinja2.FileSystemLoader(TEMPLATE.parent),
    autoescape=True,
    undefined=jinja2.StrictUndefined,
)
_env.filters.update(number=_number, signed=_signed, percent=_percent)


def render_html(model: dict) -> str:
    when = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(model["generated_at"]))
    return _env.get_template(TEMPLATE.name).render(m=model, when=when, refresh_s=REFRESH_S)


# --- wiring ---------------------------------------------------------------------------------
class StatusPage:
    def __init__(self, registry: Any, peers: Sequence[str], timeout_s: float = 2.0) -> None:
        self.registry = registry
        self.peers = list(peers)
        self.timeout_s = timeout_s
        self.rates = RateBook()

    async def model(self) -> dict:
        sources = [Source(None, registry_samples(self.registry))]
        if self.peers:
            async with httpx.AsyncClient(timeout=self.timeout_s) as client:
                sources += await asyncio.gather(*(fetch(client, url) for url in self.peers))
        return summarise(sources, self.rates)


def peers_of(setting: str) -> list[str]:
    return [p.strip() for p in setting.split(",") if p.strip()]


def attach(app: Any, runtime: Any, metrics: Any) -> StatusPage:
    page = StatusPage(metrics.registry, peers_of(runtime.settings.observability.metrics_peers))

    @app.page("/status")
    async def status_html(web: Any, request: Any) -> Any:
        return web.html(render_html(await page.model()))

    @app.page("/status.json")
    async def status_json(web: Any, request: Any) -> Any:
        return web.json(await page.model())

    return page
