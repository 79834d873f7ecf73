"""Dead-letter analyser agent.

Consumes ``email.dead`` (DeadLetter); produces nothing (only its table's changelog).
Keeps ``dead-letter-counts`` (app/tables/deadletters.py): counts by reason,
template@version, source, provider and stage in ``analyser_bucket_s`` buckets for
``analyser_retention_s``. Sliding windows are sums of buckets, read on request:

    GET /dead-letters/summary?window=15m&by=reason,template&top=10

answers the counts in the window and in the window just before (so "a new template
version started failing" shows as a value with a count and no "previous"), the rate,
and the alert signal. Every ``analyser_metrics_every_s`` the analyser reports each of
``analyser_windows`` and the alert state to ``runtime.metrics.dead_letter_window``
(app/observability.py); the Prometheus implementation (``PrometheusMetrics``) sets these
gauges in the registry that ``/metrics`` serves:

    spillway_dead_letters_window_count{window}            dead letters in the window
    spillway_dead_letters_window_rate_per_minute{window}
    spillway_dead_letters_window_by{window,dimension,value}   top 20 values per dimension
    spillway_dead_letters_alert{signal="count"|"rate"|"any"}  1 while over the threshold

With several analyser workers each one counts (and answers for) its own partitions
of ``email.dead``; the answer names them. ``spillway dead summary`` reads the topic
itself and needs no analyser.
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Mapping
from typing import Any

from app import faust_adapter
from app.agents.guard import crash_on_error
from app.runtime import Runtime
from app.settings import Settings
from app.stages.common import now_ms
from app.stages.deadletters import (
    DIMENSIONS,
    AlertRule,
    LabelBounds,
    WindowSummary,
    parse_duration,
    summarize_counts,
)
from app.tables.deadletters import DeadLetterCounts, declare_table
from app.topology import DEAD

log = logging.getLogger(__name__)



class Analyser:
    """The query side: windows over the counts, the alert rule, the gauges."""

    def __init__(self, counts: DeadLetterCounts, settings: Settings) -> None:
        self.counts = counts
        self.bucket_s = settings.observability.analyser_bucket_s
        self.retention_s = settings.observability.analyser_retention_s
        windows = settings.observability.analyser_windows
        self.windows = [w.strip() for w in windows.split(",") if w.strip()]
        for w in self.windows:
            self.window_s(w)  # fail at start on a bad setting
        self.rule = AlertRule(
            count=settings.observability.analyser_alert_count,
            count_window_s=self.window_s(settings.observability.analyser_alert_count_window),
            rate_per_min=settings.observability.analyser_alert_rate_per_min,
            rate_window_s=self.window_s(settings.observability.analyser_alert_rate_window),
        )
        self.unreadable = 0  # records on email.dead that are not dead letters
        self.firing = False

    def window_s(self, text: str) -> float:
        seconds = parse_duration(text)
        if not 0 < seconds <= self.retention_s:
            raise ValueError(f"window {text!r} must be > 0 and at most the retention "
                             f"({self.retention_s} s)")  # fmt: skip
        return seconds

    def summary(self, window_s: float, now: int | None = None) -> WindowSummary:
        return summarize_counts(
            self.counts.items(),
            now_ms=now if now is not None else now_ms(),
            window_s=window_s,
            bucket_s=self.bucket_s,
        )

    def alert(self, now: int | None = None) -> dict[str, Any]:
        now = now if now is not None else now_ms()
        return self.rule.evaluate(
            self.summary(self.rule.count_window_s, now), self.summary(self.rule.rate_window_s, now)
        )

    def query(self, params: Mapping[str, str]) -> dict[str, Any]:
        """The answer of GET /dead-letters/summary; ValueError for a bad parameter."""
        window = params.get("window") or self.windows[0]
        dims = [d.strip() for d in (params.get("by") or ",".join(DIMENSIONS)).split(",")]
        unknown = [d for d in dims if d not in DIMENSIONS]
        if unknown:
            raise ValueError(f"unknown dimension(s) {unknown}; known: {list(DIMENSIONS)}")
        top = int(params.get("top") or 0)
        now = now_ms()
        doc: dict[str, Any] = self.summary(self.window_s(window), now).as_json(dims, top or None)
        doc["bucket_s"] = self.bucket_s
        doc["alert"] = self.alert(now)
        doc["unreadable"] = self.unreadable
        return doc


async def changelog_known(app: Any, table: Any, timeout_s: float = 30.0) -> bool:
    """Wait until the consumer's metadata gives the table's changelog its partitions.

    Faust compares the changelog's partition count with the source topic's on the first
    write, from the consumer's metadata snapshot; right after Faust created the
    changelog that snapshot can say 0 partitions, and the write raises
    PartitionsMismatch (seen once in tests/integration/test_replay_tool.py). A forced
    metadata refresh fills it in. False if it did not within ``timeout_s`` (the write
    then fails as before, loudly)."""
    import asyncio
    import time

    name = getattr(table, "changelog_topic_name", None)
    consumer = getattr(app, "consumer", None)
    if name is None or consumer is None or not hasattr(consumer, "topic_partitions"):
        return True  # a dict in unit tests
    deadline = time.monotonic() + timeout_s
    while consumer.topic_partitions(name) == 0:
        if time.monotonic() > deadline:
            log.warning("analyser: no partitions known for %s after %.0f s", name, timeout_s)
            return False
        with contextlib.suppress(AttributeError):  # AttributeError: a test double
            await faust_adapter.refresh_metadata(consumer)
        await asyncio.sleep(0.2)
    return True


def attach(app: Any, runtime: Runtime) -> Any:
    settings = runtime.settings
    table = declare_table(app, settings.kafka.topic_partitions)
    counts = DeadLetterCounts(
        table,
        bucket_s=settings.observability.analyser_bucket_s,
        retention_s=settings.observability.analyser_retention_s,
        bounds=LabelBounds.from_settings(settings),  # keys and labels from a bounded set
    )
    if hasattr(table, "on_recover"):  # a Faust table (unit tests pass a dict)

        async def reindex() -> None:  # Faust awaits recover callbacks
            counts.reset_index()

        table.on_recover(reindex)
    analyser = Analyser(counts, settings)
    app.spillway_analyser = analyser

    async def analyse(stream: Any) -> None:
        await runtime.start()
        await changelog_known(app, table)
        async for event in stream.events():
            with crash_on_error("analyser"):
                try:
                    dl = await runtime.serde.decode(event.value, "dead_letter")
                except Exception as exc:  # not ours to fix, and nowhere to send it
                    analyser.unreadable += 1
                    m = event.message
                    log.warning("analyser: %s:%s:%s unreadable: %s", m.topic, m.partition,
                                m.offset, exc)  # fmt: skip
                    continue
                counts.add(dl, event.message.partition)

    agent = app.agent(runtime.topology.topics[DEAD], name="analyser", concurrency=1)(analyse)

    @app.page("/dead-letters/summary")
    async def summary(web: Any, request: Any) -> Any:
        try:
            doc = analyser.query(request.query)
        except ValueError as exc:
            return web.json({"error": str(exc)}, status=400)
        dead_topic = runtime.topology.name(DEAD)
        try:
            assigned = app.consumer.assignment()
        except Exception:  # not started yet
            assigned = set()
        doc["partitions"] = sorted(tp.partition for tp in assigned if tp.topic == dead_topic)
        return web.json(doc)

    @app.timer(settings.observability.analyser_metrics_every_s, name="dead-letter-analyser-metrics")
    async def refresh() -> None:
        now = now_ms()
        summaries = {w: analyser.summary(analyser.window_s(w), now) for w in analyser.windows}
        alert = analyser.alert(now)
        runtime.metrics.dead_letter_window(summaries, alert)  # app.observability
        if alert["firing"] != analyser.firing:
            analyser.firing = alert["firing"]
            (log.warning if analyser.firing else log.info)(
                "dead-letter alert %s: %s", "FIRING" if analyser.firing else "resolved", alert
            )

    return agent
