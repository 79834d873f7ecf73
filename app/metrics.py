"""Prometheus metrics of a stage worker, served at ``/metrics`` on its Faust web server.

One registry per process (``REGISTRY``). Every name starts with ``spillway_`` and
every label has a bounded set of values (stages, topics, partitions, priorities,
configured provider names, reason codes, status classes): never an event id or an
address. ``docs/observability.md`` lists them all with the alerts built on them.

Where each figure comes from:

- consumer lag and its slope: a Faust timer (every ``metrics_lag_every_s``) asks the
  broker for the end offsets of this worker's assigned partitions and subtracts the
  group's committed offsets; the slope is a least-squares fit over the samples of the
  last ``metrics_slope_window_s`` (messages per second, > 0: falling behind);
- events in: a Faust sensor, one count per consumed message of a stage topic;
- events out, time-to-send, sends by provider, dead letters: ``emitted``, called
  by ``Runtime.emit`` with every record a stage produces;
- render time and agent busy time: the agents (``render_time``, ``busy``);
  event-loop busy fraction: a timing wrapper around the loop's selector;
- provider figures, breaker, quota, retries, duplicates: the dispatch operations below.

Stages and agents report through the ``app.observability.StageMetrics`` protocol;
:class:`PrometheusMetrics` implements it on a :class:`Metrics` registry and the app
factory hands the worker's one instance (:data:`DEFAULT`, on ``REGISTRY``) to the
runtime (``Runtime.metrics``); stages and agents never import this module.

The operations (``PrometheusMetrics``; cheap, never raise, safe to call before the app
starts):

- ``provider_response(provider, status_class, latency_s)``: after every provider
  request; ``status_class`` is one of ``2xx 4xx 429 5xx timeout error`` (anything
  else counts as ``error``); see :func:`status_class_of`.
- ``breaker_state(provider, state)``: once at start and whenever a breaker changes
  (``closed``, ``open``, ``half_open``); until the first call the gauge does not exist.
  With one breaker per partition, report the worst state among this worker's breakers
  of that provider (open > half_open > closed).
- ``rate_limit_remaining(provider, remaining)``: ``X-RateLimit-Remaining`` as last seen.
- ``bucket_level(provider, tokens)``: requests the rate limiter would let through now.
- ``quota(provider, per_second)``: at start, the provider's quota (the same global
  figure on every worker); achieved rate vs quota is ``rate(spillway_provider_requests_total
  {status_class="2xx"}) / spillway_provider_quota_per_second``.
- ``retry(attempt)``: a message is scheduled for retry after its ``attempt``-th failure.
- ``duplicate_suppressed()``: the sent-ledger skipped an already-sent event.
- ``busy(stage)``: context manager around the handling of a message or batch
  (overlapping uses of one stage count once); gives ``spillway_agent_busy_seconds_total``.
"""

from __future__ import annotations

import asyncio
import functools
import logging
import time
from collections import deque
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any, ParamSpec

import faust
from prometheus_client import (
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    ProcessCollector,
    disable_created_metrics,
    generate_latest,
)
from prometheus_client.exposition import CONTENT_TYPE_LATEST

from app import faust_adapter
from app.models import PRIORITIES, DeadLetter, DispatchRequest, SendResult
from app.stages.common import Emission
from app.stages.deadletters import DIMENSIONS, WindowSummary
from app.topology import STAGE_ORDER, STAGES, TOPICS, stages_of

log = logging.getLogger(__name__)

STATUS_CLASSES = ("2xx", "4xx", "429", "5xx", "timeout", "error")
BREAKER_STATES = ("closed", "open", "half_open")  # gauge value = index
#: end-to-end latency from intake to provider acceptance; alert at p95 > 30 s
TIME_TO_SEND_BUCKETS = (0.1, 0.25, 0.5, 1, 2.5, 5, 10, 20, 30, 60, 120, 300, 600, 1800)
RENDER_BUCKETS = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 1.0)
PROVIDER_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30)


class Metrics:
    """Every Spillway metric, registered in one registry (a fresh one per unit test)."""

    def __init__(self, registry: CollectorRegistry) -> None:
        self.registry = registry
        r = registry
        self.worker_info = Gauge(
            "spillway_worker_info", "One per worker: its stage and app id.",
            ["stage", "app_id"], registry=r,
        )  # fmt: skip
        self.events_in = Counter(
            "spillway_events_in", "Messages consumed from a stage's input topic.",
            ["stage", "topic"], registry=r,
        )  # fmt: skip
        self.events_out = Counter(
            "spillway_events_out",
            "Records produced by a stage, by outcome (the logical topic: rendered, "
            "dispatch.<lane>, sent, dead, retries).",
            ["stage", "outcome"], registry=r,
        )  # fmt: skip
        self.consumer_lag = Gauge(
            "spillway_consumer_lag",
            "Messages not yet committed by the stage's consumer group (end offset minus "
            "committed offset), per assigned partition.",
            ["stage", "topic", "partition"], registry=r,
        )  # fmt: skip
        self.consumer_lag_slope = Gauge(
            "spillway_consumer_lag_slope",
            "Rate of change of spillway_consumer_lag over the slope window, messages per "
            "second (> 0: the stage is falling behind).",
            ["stage", "topic", "partition"], registry=r,
        )  # fmt: skip
        self.time_to_send = Histogram(
            "spillway_time_to_send_seconds",
            "From acceptance into email.raw-events to the provider's acceptance (replays "
            "excluded).",
            ["priority"], buckets=TIME_TO_SEND_BUCKETS, registry=r,
        )  # fmt: skip
        self.emails_sent = Counter(
            "spillway_emails_sent", "Emails a provider accepted.",
            ["provider", "priority"], registry=r,
        )  # fmt: skip
        self.render_duration = Histogram(
            "spillway_render_duration_seconds", "Time to render one email's template.",
            ["template"], buckets=RENDER_BUCKETS, registry=r,
        )  # fmt: skip
        self.provider_requests = Counter(
            "spillway_provider_requests", "Provider requests by response status class.",
            ["provider", "status_class"], registry=r,
        )  # fmt: skip
        self.provider_latency = Histogram(
            "spillway_provider_request_duration_seconds", "Provider request latency.",
            ["provider", "status_class"], buckets=PROVIDER_BUCKETS, registry=r,
        )  # fmt: skip
        self.breaker_code = Gauge(
            "spillway_provider_breaker_state_code",
            "Circuit breaker state: 0 closed, 1 open, 2 half_open.",
            ["provider"], registry=r,
        )  # fmt: skip
        self.breaker = Gauge(
            "spillway_provider_breaker_state",
            "Circuit breaker state, one-hot: 1 for the current state, 0 for the others.",
            ["provider", "state"], registry=r,
        )  # fmt: skip
        self.ratelimit_remaining = Gauge(
            "spillway_provider_ratelimit_remaining",
            "X-RateLimit-Remaining as last seen from the provider.",
            ["provider"], registry=r,
        )  # fmt: skip
        self.bucket_tokens = Gauge(
            "spillway_provider_bucket_tokens",
            "Requests the rate limiter would let through right now.",
            ["provider"], registry=r,
        )  # fmt: skip
        self.quota = Gauge(
            "spillway_provider_quota_per_second", "The provider's quota, requests per second.",
            ["provider"], registry=r,
        )  # fmt: skip
        self.retries = Counter(
            "spillway_retries", "Messages scheduled for a retry, by the attempt that failed.",
            ["attempt"], registry=r,
        )  # fmt: skip
        self.dead_letters = Counter(
            "spillway_dead_letters", "Dead letters produced, by the stage that gave up and why.",
            ["stage", "reason"], registry=r,
        )  # fmt: skip
        self.duplicates = Counter(
            "spillway_duplicates_suppressed",
            "Sends skipped because the sent-ledger had the event as sent already.",
            registry=r,
        )
        self.missing_message_ids = Counter(  # issue 13: a 2xx is sent, even without an id
            "spillway_provider_missing_message_id",
            "Emails a provider accepted (2xx) without a message id; recorded as sent.",
            ["provider"], registry=r,
        )  # fmt: skip
        self.busy_seconds = Counter(
            "spillway_agent_busy_seconds",
            "Time an agent of the stage spent handling messages (rate() = utilisation).",
            ["stage"], registry=r,
        )  # fmt: skip
        self.utilisation = Gauge(
            "spillway_agent_utilisation_ratio",
            "Busy fraction of the stage's agents over the last sampling interval.",
            ["stage"], registry=r,
        )  # fmt: skip
        self.loop_busy = Gauge(
            "spillway_event_loop_busy_ratio",
            "Fraction of the last sampling interval the worker's event loop was not idle.",
            registry=r,
        )
        # issue 12 point 4 / issue 13 (helper D): outputs Kafka did not acknowledge
        self.produce_failures = Counter(
            "spillway_produce_failures",
            "Produce requests that failed (the input is not acked and is handled again), "
            "by stage, logical topic and error class.",
            ["stage", "topic", "error"], registry=r,
        )  # fmt: skip
        self.max_attempts = 3
        self._busy: dict[str, BusyMeter] = {}

    # --- stage records ------------------------------------------------------------
    def emitted(self, emission: Emission, worker_stage: str) -> None:
        value = emission.value
        self.events_out.labels(stage_of(emission, worker_stage), emission.topic).inc()
        if isinstance(value, SendResult):
            priority = bounded_priority(value.priority)
            self.emails_sent.labels(value.provider, priority).inc()
            if not value.replay:  # a replayed dead letter's age says nothing about capacity
                self.time_to_send.labels(priority).observe(max(0.0, value.time_to_send_ms) / 1000)
        elif isinstance(value, DeadLetter):
            self.dead_letters.labels(value.stage, value.reason).inc()

    # --- dispatch hooks -------------------------------------------------------------
    def provider_response(self, provider: str, status_class: str, latency_s: float) -> None:
        cls = status_class if status_class in STATUS_CLASSES else "error"
        self.provider_requests.labels(provider, cls).inc()
        self.provider_latency.labels(provider, cls).observe(max(0.0, latency_s))

    def breaker_state(self, provider: str, state: str) -> None:
        if state not in BREAKER_STATES:
            log.warning("metrics: unknown breaker state %r for %s", state, provider)
            return
        self.breaker_code.labels(provider).set(BREAKER_STATES.index(state))
        for s in BREAKER_STATES:
            self.breaker.labels(provider, s).set(1 if s == state else 0)

    def retry(self, attempt: int) -> None:
        self.retries.labels(str(min(max(attempt, 1), self.max_attempts))).inc()

    # --- utilisation ------------------------------------------------------------------
    def busy_meter(self, stage: str) -> BusyMeter:
        if stage not in self._busy:
            counter = self.busy_seconds.labels(stage)
            self._busy[stage] = BusyMeter(counter.inc)
        return self._busy[stage]

    def metric_names(self) -> set[str]:
        """Every sample name this registry can export (with _total, _bucket, ...)."""
        names: set[str] = set()
        for family in self.registry.collect():
            names.add(family.name)
            suffixes = {
                "counter": ("_total",),
                "histogram": ("_bucket", "_sum", "_count"),
            }.get(family.type, ())
            names.update(family.name + s for s in suffixes)
        return names

    def exposition(self) -> bytes:
        return generate_latest(self.registry)


class BusyMeter:
    """Union of the busy intervals of one stage's agents (nested/overlapping count once)."""

    def __init__(self, add: Any, clock: Any = time.monotonic) -> None:
        self._add = add  # receives busy seconds as they accrue
        self._clock = clock
        self._active = 0
        self._since = 0.0
        self.total = 0.0
        self.created = clock()

    def enter(self) -> None:
        if self._active == 0:
            self._since = self._clock()
        self._active += 1

    def leave(self) -> None:
        self._active -= 1
        if self._active == 0:
            self._accrue(self._clock())

    def flush(self) -> None:
        """Count an interval still in progress (so a long batch shows before it ends)."""
        if self._active:
            now = self._clock()
            self._accrue(now)
            self._since = now

    def _accrue(self, now: float) -> None:
        seconds = max(0.0, now - self._since)
        self.total += seconds
        self._add(seconds)


disable_created_metrics()  # no *_created series: half the samples, nothing lost
REGISTRY = CollectorRegistry()
ProcessCollector(registry=REGISTRY)  # process_resident_memory_bytes, cpu seconds, ...
METRICS = Metrics(REGISTRY)


ANALYSER_TOP_VALUES = 20  # per dimension in the gauges: label sets stay bounded


class AnalyserMetrics:
    """The dead-letter analyser's gauges (app/agents/deadletters.py), made on a registry
    the first time the analyser reports (other workers' /metrics do not list them)."""

    def __init__(self, registry: CollectorRegistry) -> None:
        self.count = Gauge(
            "spillway_dead_letters_window_count", "Dead letters in the sliding window.",
            ["window"], registry=registry,
        )  # fmt: skip
        self.rate = Gauge(
            "spillway_dead_letters_window_rate_per_minute",
            "Dead letters per minute over the sliding window.",
            ["window"], registry=registry,
        )  # fmt: skip
        self.by = Gauge(
            "spillway_dead_letters_window_by",
            "Dead letters in the sliding window by reason, template (name@version), source, "
            f"provider and stage (top {ANALYSER_TOP_VALUES} values each).",
            ["window", "dimension", "value"], registry=registry,
        )  # fmt: skip
        self.alert = Gauge(
            "spillway_dead_letters_alert",
            "1 while dead letters exceed the configured count or rate threshold.",
            ["signal"], registry=registry,
        )  # fmt: skip

    def update(self, summaries: Mapping[str, WindowSummary], alert: Mapping[str, Any]) -> None:
        self.by.clear()  # values that left the window must not linger
        for window, s in summaries.items():
            self.count.labels(window).set(s.total)
            self.rate.labels(window).set(round(s.rate_per_min, 3))
            for dimension in DIMENSIONS:
                for value, c in s.top(dimension, ANALYSER_TOP_VALUES):
                    if c.count:
                        self.by.labels(window, dimension, value).set(c.count)
        self.alert.labels("count").set(int(alert["count"]["firing"]))
        self.alert.labels("rate").set(int(alert["rate"]["firing"]))
        self.alert.labels("any").set(int(alert["firing"]))


# --- the StageMetrics protocol (app.observability) on Prometheus: the edge ---------------
P = ParamSpec("P")
_failed: set[str] = set()


def never_raises(fun: Callable[P, None]) -> Callable[P, None]:
    """A metric must never fail a send or crash an agent: log (once per hook) instead."""

    @functools.wraps(fun)
    def safe(*args: P.args, **kwargs: P.kwargs) -> None:
        try:
            fun(*args, **kwargs)
        except Exception:
            if fun.__name__ not in _failed:
                _failed.add(fun.__name__)
                log.warning("metrics: %s%r failed", fun.__name__, args[1:], exc_info=True)

    return safe


class PrometheusMetrics:
    """``app.observability.StageMetrics`` on a :class:`Metrics` registry. The app
    factory builds the worker's one instance (:data:`DEFAULT`, on ``REGISTRY``) and
    hands it to the runtime; stages and agents call it, never this module."""

    def __init__(self, metrics: Metrics) -> None:
        self.metrics = metrics
        self._analyser: AnalyserMetrics | None = None

    def __repr__(self) -> str:
        return "PrometheusMetrics()"

    @never_raises
    def emitted(self, emission: Emission, worker_stage: str) -> None:
        self.metrics.emitted(emission, worker_stage)

    @never_raises
    def produce_failed(self, stage: str, topic: str, error: str) -> None:
        self.metrics.produce_failures.labels(stage, topic, error).inc()

    @contextmanager
    def busy(self, stage: str) -> Iterator[None]:
        meter = self.metrics.busy_meter(stage)
        meter.enter()
        try:
            yield
        finally:
            meter.leave()

    @never_raises
    def render_time(self, template: str, seconds: float) -> None:
        self.metrics.render_duration.labels(template).observe(seconds)

    @never_raises
    def provider_response(self, provider: str, status_class: str, latency_s: float) -> None:
        self.metrics.provider_response(provider, status_class, latency_s)

    @never_raises
    def breaker_state(self, provider: str, state: str) -> None:
        self.metrics.breaker_state(provider, state)

    @never_raises
    def rate_limit_remaining(self, provider: str, remaining: int) -> None:
        self.metrics.ratelimit_remaining.labels(provider).set(remaining)

    @never_raises
    def bucket_level(self, provider: str, tokens: float) -> None:
        self.metrics.bucket_tokens.labels(provider).set(tokens)

    @never_raises
    def quota(self, provider: str, per_second: float) -> None:
        self.metrics.quota.labels(provider).set(per_second)

    @never_raises
    def retry(self, attempt: int) -> None:
        self.metrics.retry(attempt)

    @never_raises
    def missing_message_id(self, provider: str) -> None:
        self.metrics.missing_message_ids.labels(provider).inc()

    @never_raises
    def duplicate_suppressed(self) -> None:
        self.metrics.duplicates.inc()

    @never_raises
    def dead_letter_window(
        self, summaries: Mapping[str, WindowSummary], alert: Mapping[str, Any]
    ) -> None:
        if self._analyser is None:
            self._analyser = AnalyserMetrics(self.metrics.registry)
        self._analyser.update(summaries, alert)


DEFAULT = PrometheusMetrics(METRICS)


def status_class_of(status: int | None) -> str:
    """HTTP status -> status class label (``None``: no response, i.e. ``error``)."""
    if status is None:
        return "error"
    if status == 429:
        return "429"
    if 200 <= status < 300:
        return "2xx"
    if 400 <= status < 500:
        return "4xx"
    if 500 <= status < 600:
        return "5xx"
    return "error"


# --- label helpers -------------------------------------------------------------------------
def bounded_priority(priority: str | None) -> str:
    return priority if priority in PRIORITIES else "other"


def stage_of(emission: Emission, worker_stage: str) -> str:
    """The stage that produced ``emission``: the worker's, or in dev mode (``all``)
    the one the record and topology point at."""
    if worker_stage != "all":
        return worker_stage
    value = emission.value
    if isinstance(value, DeadLetter):
        return value.stage
    if isinstance(value, SendResult) or (
        isinstance(value, DispatchRequest) and value.attempts > 0  # a retry on its way
    ):
        return "dispatch"
    for stage in STAGE_ORDER:
        if emission.topic in STAGES[stage][1]:
            return stage
    return "unknown"


def consumed_topics(settings: Any) -> dict[str, tuple[str, str]]:
    """Kafka topic this worker consumes -> (stage, topic label without namespace)."""
    out: dict[str, tuple[str, str]] = {}
    for stage in stages_of(settings.stage):
        for logical in STAGES[stage][0]:
            base = TOPICS[logical][0]
            out[settings.topic(base)] = (stage, base)
    return out


# --- lag -------------------------------------------------------------------------------------
LagKey = tuple[str, str, str]  # stage, topic, partition


@dataclass
class LagTracker:
    """Per-partition lag samples over a sliding window, and their least-squares slope."""

    window_s: float = 30.0
    samples: dict[LagKey, deque[tuple[float, int]]] = field(default_factory=dict)

    def update(self, now: float, lags: Mapping[LagKey, int]) -> dict[LagKey, float]:
        """Add this round's lags; forget partitions no longer reported; return slopes."""
        for key in set(self.samples) - set(lags):
            del self.samples[key]
        slopes: dict[LagKey, float] = {}
        for key, lag in lags.items():
            window = self.samples.setdefault(key, deque())
            window.append((now, lag))
            while window and window[0][0] < now - self.window_s:
                window.popleft()
            slopes[key] = slope(window)
        return slopes


def slope(points: deque[tuple[float, int]] | list[tuple[float, int]]) -> float:
    """Least-squares slope of (t, y) points; 0 with fewer than two distinct times."""
    n = len(points)
    if n < 2:
        return 0.0
    mean_t = sum(t for t, _ in points) / n
    mean_y = sum(y for _, y in points) / n
    var = sum((t - mean_t) ** 2 for t, _ in points)
    if var <= 0:
        return 0.0
    return sum((t - mean_t) * (y - mean_y) for t, y in points) / var


async def measure_lag(consumer: Any, topics: Mapping[str, tuple[str, str]]) -> dict[LagKey, int]:
    """End offset minus committed offset of every assigned partition of ``topics``."""
    tps = [tp for tp in consumer.assignment() if tp.topic in topics]
    if not tps:
        return {}
    ends = await consumer.highwaters(*tps)
    committed = faust_adapter.committed_offsets(consumer)  # Faust's view of the group
    missing = [tp for tp in tps if committed.get(tp) is None]
    starts = dict(committed)
    if missing:  # nothing committed yet: everything from the log start is lag
        starts.update(await consumer.earliest_offsets(*missing))
    lags: dict[LagKey, int] = {}
    for tp in tps:
        end, start = ends.get(tp), starts.get(tp)
        if end is None or start is None:
            continue
        stage, topic = topics[tp.topic]
        lags[(stage, topic, str(tp.partition))] = max(0, end - start)
    return lags


# --- event loop busy fraction ------------------------------------------------------------
class _TimedSelector:
    """Delegates to the loop's selector and adds up the time spent waiting in select()."""

    def __init__(self, inner: Any) -> None:
        self._inner = inner
        self.idle_s = 0.0

    def select(self, timeout: float | None = None) -> Any:
        started = time.perf_counter()
        try:
            return self._inner.select(timeout)
        finally:
            self.idle_s += time.perf_counter() - started

    def __getattr__(self, name: str) -> Any:
        return getattr(self._inner, name)


class LoopMonitor:
    """Busy fraction of an asyncio selector loop between two ``sample()`` calls."""

    def __init__(self, loop: asyncio.AbstractEventLoop) -> None:
        selector = getattr(loop, "_selector", None)
        if selector is None:  # not a selector loop (uvloop, proactor): no figure
            self._timed: _TimedSelector | None = None
        elif isinstance(selector, _TimedSelector):
            self._timed = selector
        else:
            self._timed = _TimedSelector(selector)
            loop._selector = self._timed  # type: ignore[attr-defined]
        self._last = (time.perf_counter(), self._timed.idle_s if self._timed else 0.0)

    def sample(self) -> float | None:
        if self._timed is None:
            return None
        now, idle = time.perf_counter(), self._timed.idle_s
        (then, idle_then), self._last = self._last, (now, idle)
        wall = now - then
        return None if wall <= 0 else min(1.0, max(0.0, 1.0 - (idle - idle_then) / wall))


# --- wiring ---------------------------------------------------------------------------------
class InSensor(faust.Sensor):
    """Faust sensor: counts consumed messages of the stage topics (every agent alike)."""

    def __init__(self, topics: Mapping[str, tuple[str, str]], metrics: Metrics) -> None:
        super().__init__()
        self._by_topic = {
            name: metrics.events_in.labels(stage, base) for name, (stage, base) in topics.items()
        }

    def on_message_in(self, tp: Any, offset: int, message: Any) -> None:
        child = self._by_topic.get(tp.topic)
        if child is not None:
            child.inc()


class Sampler:
    """What the metrics timer does each round: lag + slope, utilisation, loop busy."""

    def __init__(self, settings: Any, metrics: Metrics = METRICS) -> None:
        self.metrics = metrics
        self.topics = consumed_topics(settings)
        self.tracker = LagTracker(settings.observability.metrics_slope_window_s)
        self.loop_monitor: LoopMonitor | None = None
        self._busy_last: dict[str, tuple[float, float]] = {}
        self._reported: set[LagKey] = set()

    async def sample(self, consumer: Any) -> None:
        now = time.monotonic()
        if self.loop_monitor is None:
            self.loop_monitor = LoopMonitor(asyncio.get_running_loop())
        elif (ratio := self.loop_monitor.sample()) is not None:
            self.metrics.loop_busy.set(ratio)
        self.sample_busy(now)
        if self.topics:
            try:
                lags = await measure_lag(consumer, self.topics)
            except Exception as exc:  # rebalancing, broker away: try again next round
                log.debug("metrics: lag not measured: %r", exc)
                return
            self.record_lag(time.monotonic(), lags)  # when the answer came: a busy loop lags

    def record_lag(self, now: float, lags: Mapping[LagKey, int]) -> None:
        slopes = self.tracker.update(now, lags)
        m = self.metrics
        for key in self._reported - set(lags):  # revoked: another worker reports it now
            m.consumer_lag.remove(*key)
            m.consumer_lag_slope.remove(*key)
        for key, lag in lags.items():
            m.consumer_lag.labels(*key).set(lag)
            m.consumer_lag_slope.labels(*key).set(round(slopes[key], 3))
        self._reported = set(lags)

    def sample_busy(self, now: float) -> None:
        for stage, meter in list(self.metrics._busy.items()):
            meter.flush()
            then, total_then = self._busy_last.get(stage, (meter.created, 0.0))
            if now > then:
                ratio = (meter.total - total_then) / (now - then)
                self.metrics.utilisation.labels(stage).set(min(1.0, max(0.0, ratio)))
            self._busy_last[stage] = (now, meter.total)


def attach(app: Any, runtime: Any) -> Sampler:
    """Serve ``/metrics`` (and the status page), count events in, sample lag."""
    settings = runtime.settings
    metrics = METRICS
    metrics.max_attempts = settings.policy.max_attempts
    metrics.worker_info.labels(settings.stage, app.conf.id).set(1)
    sampler = Sampler(settings, metrics)
    app.sensors.add(InSensor(sampler.topics, metrics))

    @app.page("/metrics")
    async def metrics_page(web: Any, request: Any) -> Any:
        return web.bytes(metrics.exposition(), headers={"Content-Type": CONTENT_TYPE_LATEST})

    @app.timer(settings.observability.metrics_lag_every_s, name="metrics-sample")
    async def sample() -> None:
        await sampler.sample(app.consumer)

    from app import status  # the status page reads the same registry

    status.attach(app, runtime, metrics)
    return sampler
