"""The flash-sale benchmark: one burst of mixed events through Spillway and through
the peers a Python team would otherwise pick, side by side in one run.

    python -m bench.flash_sale --preset smoke|quick|full \
        [--systems spillway,bare,celery,pgqueue,spillway-3dispatch] [--quota 0,N]
        [--workers K] [--late N]

Presets: smoke 3,000 events, quick 30,000, full 300,000 (5% critical password
resets, 60% normal order confirmations with order lines, 35% bulk newsletters; the
mix of harness/burst.py). Systems run one after another on the same machine and
local Kafka, each against a fresh provider simulator of its own (unlimited, or
``--quota`` requests/s; ``--quota 0,1000`` runs every system unlimited, then every
system at 1000/s). ``spillway-<N>dispatch`` is Spillway with N dispatch workers.
Needs the local stack (``python3 scripts/stack up``), ``redis-server`` and PostgreSQL 15
from Debian (``scripts/setup`` installs them).

Writes ``bench/results/flash-sale-<preset>-<quota>-<utc time>.json``, one per provider
setting; render the report with ``python -m bench.report``.
"""

from __future__ import annotations

import argparse
import asyncio
import functools
import json
import math
import os
import platform
import random
import re
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Callable
from contextlib import ExitStack
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import psutil
from confluent_kafka import Producer
from confluent_kafka.admin import AdminClient, NewTopic

from app.models import PRIORITIES
from app.runtime import registry_client
from app.serde import Serde
from app.settings import PROJECT_ROOT, Settings
from app.templating import TemplateStore
from app.topology import DEAD, RAW, RAW_LANES, SENT, topic_name, topic_schemas
from bench.infra import (
    Postgres,
    Profiler,
    Redis,
    Sampler,
    Simulator,
    Usage,
    broker_pid,
    spawn,
    stop,
)
from harness import burst
from harness.observe import Observer
from harness.workers import Workers, one_host_env, wait_until

PRESETS = {"smoke": 3_000, "quick": 30_000, "full": 300_000}
SYSTEMS = ("spillway", "bare", "celery", "pgqueue")
RESULTS_DIR = PROJECT_ROOT / "bench" / "results"
PARTITIONS = 4  # Spillway's default topic_partitions; the bare loop's raw topic too


# --- workload ------------------------------------------------------------------


def workload(n: int, samples: dict[str, Any], prefix: str, seed: int = 7) -> list[dict[str, Any]]:
    """The events of harness.burst.events() (same mix, same seed) as dicts, so the
    peers that take JSON get exactly what Spillway gets."""
    rng = random.Random(seed)
    weights = [w for _, _, w in burst.MIX]
    out = []
    for i in range(n):
        priority, template, _ = rng.choices(burst.MIX, weights=weights)[0]
        out.append(
            {
                "event_id": f"{prefix}-{i}",
                "template": template,
                "priority": priority,
                "to": f"user{i}@example.com",
                "data": burst.template_data(template, rng, i, samples),
                "source": "flash-sale",
            }
        )
    return out


# --- results -----------------------------------------------------------------------


def pct(values: list[float], q: float) -> float | None:
    if not values:
        return None
    ordered = sorted(values)
    return ordered[max(0, math.ceil(q / 100 * len(ordered)) - 1)]


@dataclass
class Intake:
    how: str
    events_per_s: float
    ack_p50_ms: float | None
    ack_p99_ms: float | None
    ack_max_ms: float | None


@dataclass
class SystemResult:
    system: str
    config: str
    produced: int
    sent: int = 0
    dead: int = 0
    missing: int = 0
    duplicates: int = 0
    duplicate_requests: int = 0
    drain_s: float | None = None
    send_rate_per_s: float | None = None
    intake: Intake | None = None
    time_to_send_ms: dict[str, dict[str, float | int | None]] = field(default_factory=dict)
    resources: dict[str, dict[str, float]] = field(default_factory=dict)
    series: dict[str, list[float]] = field(default_factory=dict)
    correct: bool = False
    notes: list[str] = field(default_factory=list)
    run_s: float | None = None  # wall time of the system's whole run, start-up to stop


def intake_of(how: str, n: int, elapsed: float, latencies_s: list[float]) -> Intake:
    ms = [x * 1000 for x in latencies_s]
    return Intake(
        how, n / elapsed if elapsed > 0 else 0.0, pct(ms, 50), pct(ms, 99), max(ms) if ms else None
    )


def analyse(
    result: SystemResult,
    produced_at: dict[str, float],
    entries: list[dict[str, Any]],
    duplicates: dict[str, Any],
) -> None:
    """Drain, time-to-send per priority and the backlog series, from the simulator's
    ledger (accepted_at) against each event's produce time; correctness counts."""
    mine = [e for e in entries if e["key"] in produced_at]
    t0 = min(produced_at.values())
    result.sent = len({e["key"] for e in mine})
    result.missing = max(0, result.produced - result.sent - result.dead)
    result.duplicates = int(duplicates.get("count", 0))
    result.duplicate_requests = int(duplicates.get("duplicate_requests", 0))
    result.correct = result.sent + result.dead == result.produced and result.duplicates == 0
    if not mine:
        return
    last = max(e["accepted_at"] for e in mine)
    # drain and send rate: the burst's (late critical resets are a trickle that may
    # arrive after the burst in a short run; they have their own time-to-send)
    burst_sent = [e for e in mine if LATE not in e["key"]]
    if burst_sent:
        result.drain_s = max(e["accepted_at"] for e in burst_sent) - t0
        if result.drain_s > 0:
            result.send_rate_per_s = len(burst_sent) / result.drain_s
    by_priority: dict[str, list[float]] = {p: [] for p in PRIORITIES}
    for e in mine:
        p = "critical_late" if LATE in e["key"] else e["custom_args"].get("priority", "normal")
        by_priority.setdefault(p, []).append((e["accepted_at"] - produced_at[e["key"]]) * 1000)
    result.time_to_send_ms = {
        p: {"count": len(v), "p50": pct(v, 50), "p99": pct(v, 99), "max": max(v, default=None)}
        for p, v in by_priority.items()
    }
    seconds = int(last - t0) + 1
    produced_per_s = [0] * seconds
    sent_per_s = [0] * seconds
    for t in produced_at.values():
        produced_per_s[min(seconds - 1, int(t - t0))] += 1
    for e in mine:
        sent_per_s[min(seconds - 1, int(e["accepted_at"] - t0))] += 1
    backlog, p_sum, s_sum = [], 0, 0
    for p_n, s_n in zip(produced_per_s, sent_per_s, strict=True):
        p_sum, s_sum = p_sum + p_n, s_sum + s_n
        backlog.append(p_sum - s_sum)
    result.series = {
        "second": list(range(seconds)),
        "produced_per_s": [float(x) for x in produced_per_s],
        "sent_per_s": [float(x) for x in sent_per_s],
        "backlog": [float(x) for x in backlog],
    }


def usage_dict(usage: dict[str, Usage]) -> dict[str, dict[str, float]]:
    return {
        k: {"peak_rss_mb": round(u.peak_rss_mb, 1), "cpu_s": round(u.cpu_s, 2)}
        for k, u in usage.items()
    }


def wait_drained(
    progress: Callable[[], int], n: int, *, stall_s: float, check: Callable[[], None]
) -> bool:
    """Wait until ``progress() >= n``; give up after ``stall_s`` without progress."""
    last, last_change = -1, time.monotonic()
    while True:
        check()
        done = progress()
        if done >= n:
            return True
        if done != last:
            last, last_change = done, time.monotonic()
        elif time.monotonic() - last_change > stall_s:
            return False
        time.sleep(0.25)


# --- Kafka producing (Spillway and the bare loop) --------------------------------------


def produce_burst(
    bootstrap: str,
    topic: str,
    records: list[tuple[bytes, bytes, str]],
    produced_at: dict[str, float],
    topics: list[str] | None = None,
) -> Intake:
    """As fast as one confluent-kafka producer can (acks=all); ack latency from the
    delivery callbacks. ``topics[i]``: record i's topic (default ``topic``)."""
    producer = Producer(
        {
            "bootstrap.servers": bootstrap,
            "linger.ms": 5,
            "acks": "all",
            "queue.buffering.max.messages": 1_000_000,
        }
    )
    latencies: list[float] = []
    errors = 0
    last_ack = [0.0]

    def on_delivery(err: Any, _msg: Any, *, t: float) -> None:
        nonlocal errors
        now = time.perf_counter()
        last_ack[0] = now
        if err is not None:
            errors += 1
        latencies.append(now - t)

    start = time.perf_counter()
    for i, (key, value, event_id) in enumerate(records):
        produced_at[event_id] = time.time()
        t = time.perf_counter()
        to = topics[i] if topics else topic
        while True:
            try:
                producer.produce(
                    to, key=key, value=value, on_delivery=functools.partial(on_delivery, t=t)
                )
                break
            except BufferError:
                producer.poll(0.01)
        producer.poll(0)
    producer.flush(60)
    if errors:
        raise RuntimeError(f"{errors} produce errors")
    return intake_of(
        "confluent-kafka producer, acks=all, linger 5 ms",
        len(records),
        last_ack[0] - start,
        latencies,
    )


def kafka_sender(bootstrap: str, topic: str, serde: Serde) -> Callable[[dict[str, Any]], None]:
    """One event at a time (Avro), each waited for: for LateCritical."""
    producer = Producer({"bootstrap.servers": bootstrap, "acks": "all"})

    def send(e: dict[str, Any]) -> None:
        producer.produce(
            topic,
            key=e["event_id"].encode(),
            value=burst.encode("good", e, serde, topic, use_avro=True),
        )
        if producer.flush(10):
            raise RuntimeError("late event not acknowledged in 10 s")

    return send


def encode_all(
    events: list[dict[str, Any]], serde: Serde, raw_topic: str, topics: list[str] | None = None
) -> list[tuple[bytes, bytes, str]]:
    """Half Avro (framed for the record's topic: ``topics[i]`` or ``raw_topic``), half JSON."""
    return [
        (
            e["event_id"].encode(),
            burst.encode("good", e, serde, topics[i] if topics else raw_topic, use_avro=i % 2 == 0),
            e["event_id"],
        )
        for i, e in enumerate(events)
    ]


def group_stable(bootstrap: str, group: str, members: int, timeout: float) -> bool:
    from confluent_kafka import ConsumerGroupState

    admin = AdminClient({"bootstrap.servers": bootstrap})

    def ready() -> bool:
        try:
            desc = admin.describe_consumer_groups([group], request_timeout=5)[group].result()
        except Exception:
            return False
        return bool(desc.state == ConsumerGroupState.STABLE and len(desc.members) >= members)

    return wait_until(ready, timeout, interval=0.5)


# --- the systems ------------------------------------------------------------------------

LATE = "-late-"  # in the event ids of LateCritical's password resets
LATE_RATE_PER_S = 5.0


class LateCritical:
    """Password resets arriving while the burst drains: once half the burst is accepted
    by the provider (with a quota, bulk is saturating it by then), send ``events`` at
    LATE_RATE_PER_S through the system's own intake. Their time-to-send is what a
    user waiting for a reset sees during a flash sale."""

    def __init__(
        self,
        events: list[dict[str, Any]],
        burst_n: int,
        sim: Simulator,
        send: Callable[[dict[str, Any]], None],
        produced_at: dict[str, float],
    ) -> None:
        self.events, self.burst_n, self.sim = events, burst_n, sim
        self.send, self.produced_at = send, produced_at
        self.error: BaseException | None = None
        self.thread = threading.Thread(target=self._run, name="late-critical", daemon=True)

    def start(self) -> LateCritical:
        self.thread.start()
        return self

    def _run(self) -> None:
        try:
            while self.sim.accepted() < self.burst_n // 2:
                time.sleep(0.2)
            for e in self.events:
                self.produced_at[e["event_id"]] = time.time()
                self.send(e)
                time.sleep(1 / LATE_RATE_PER_S)
        except BaseException as exc:  # reported by join()
            self.error = exc

    def join(self, timeout: float = 120.0) -> None:
        self.thread.join(timeout)
        if self.error is not None:
            raise RuntimeError(f"late critical events: {self.error!r}") from self.error


@dataclass
class Run:
    n: int
    quota: int | None
    workers: int
    log_dir: Path
    settings: Settings
    samples: dict[str, Any]
    stall_s: float = 60.0
    profile: bool = False  # py-spy on Spillway's workers, into <log_dir>/profile
    late: int = 0  # password resets sent while the burst drains (see LateCritical)

    def events(self, prefix: str) -> list[dict[str, Any]]:
        return workload(self.n, self.samples, prefix)

    def late_events(self, prefix: str) -> list[dict[str, Any]]:
        sample = self.samples["password_reset"]
        rng = random.Random(11)
        return [
            {
                "event_id": f"{prefix}{LATE}{i}",
                "template": "password_reset",
                "priority": "critical",
                "to": f"late{i}@example.com",
                "data": burst.template_data("password_reset", rng, i, self.samples)
                if sample
                else {},
                "source": "flash-sale-late",
            }
            for i in range(self.late)
        ]

    def probe(
        self,
        sim: Simulator,
        prefix: str,
        send: Callable[[dict[str, Any]], None],
        produced_at: dict[str, float],
    ) -> LateCritical | None:
        if not self.late:
            return None
        return LateCritical(self.late_events(prefix), self.n, sim, send, produced_at).start()

    def finish(
        self, result: SystemResult, sim: Simulator, sampler: Sampler, produced_at: dict[str, float]
    ) -> SystemResult:
        result.resources = usage_dict(sampler.stop())
        analyse(result, produced_at, sim.entries(), sim.client.duplicates())
        return result


def run_spillway(
    run: Run, sim: Simulator, dispatch_workers: int = 1, system: str = "spillway"
) -> SystemResult:
    """One worker per stage, or ``dispatch_workers`` dispatch workers in one group."""
    ns = f"bench{uuid.uuid4().hex[:6]}"
    policy: dict[str, Any] = {"name": "sim", "url": sim.url}
    if run.quota:
        policy["quota_per_s"] = run.quota
    overrides = {
        "SPILLWAY_TOPIC_NAMESPACE": f"{ns}.",
        "SPILLWAY_APP_ID_PREFIX": ns,
        "SPILLWAY_PROVIDERS": json.dumps([policy]),
    }
    settings = Settings(topic_namespace=f"{ns}.", app_id_prefix=ns)
    registry = registry_client(settings)
    serde = Serde(registry, topic_schemas(settings))
    serde.register()
    raw_topic = topic_name(RAW, settings)
    events = run.events(ns)
    # a priority-aware producer (issue 14): each event to its priority's raw topic
    topics = [topic_name(RAW_LANES[e.get("priority", "normal")], settings) for e in events]
    records = encode_all(events, serde, raw_topic, topics)
    dispatch = "dispatch" if dispatch_workers == 1 else f"{dispatch_workers} dispatch workers"
    result = SystemResult(
        system,
        f"one faust worker per stage: render, route, {dispatch} (render and route at "
        "SPILLWAY_WORKER_NICE=10); each event produced to its priority's raw topic",
        run.n + run.late,
    )
    workers = Workers(overrides, run.log_dir / system)
    observer: Observer | None = None
    try:
        for stage in ("render", "route", *["dispatch"] * dispatch_workers):
            workers.add(stage, **one_host_env(stage))
        if not workers.wait_ready(settings.kafka.bootstrap, ns, timeout=120):
            result.notes.append("workers were not all in their groups after 120 s")
        observer = Observer(
            settings.kafka.bootstrap,
            serde,
            topic_name(SENT, settings),
            topic_name(DEAD, settings),
        ).start()
        pids = {}
        for w in workers.workers:
            if w.proc:
                many = sum(x.stage == w.stage for x in workers.workers) > 1
                name = f"spillway-{w.stage}"
                pids[f"{name}-{w.log_path.stem.rsplit('-', 1)[1]}" if many else name] = w.proc.pid
        if (bpid := broker_pid()) is not None:
            pids["kafka-broker"] = bpid
        sampler = Sampler(pids).start()
        profiler = (
            Profiler(
                {k: v for k, v in pids.items() if k != "kafka-broker"}, run.log_dir / "profile"
            )
            if run.profile
            else None
        )
        produced_at: dict[str, float] = {}
        result.intake = produce_burst(
            settings.kafka.bootstrap, raw_topic, records, produced_at, topics
        )
        critical_topic = topic_name(RAW_LANES["critical"], settings)
        probe = run.probe(
            sim, ns, kafka_sender(settings.kafka.bootstrap, critical_topic, serde), produced_at
        )
        obs = observer
        if not wait_drained(
            lambda: obs.snapshot().done,
            run.n + run.late,
            stall_s=run.stall_s,
            check=workers.check_alive,
        ):
            result.notes.append(f"stalled: no progress for {run.stall_s:.0f} s")
        if probe:
            probe.join()
        if profiler:
            profiled = [str(p.relative_to(PROJECT_ROOT)) for p in profiler.stop()]
            result.notes.append(f"profiled: {', '.join(profiled)}")
        tally = observer.snapshot()
        result.dead = len(tally.dead) + len(tally.dead_without_id)
        if tally.sent_records != len(tally.sent):
            result.notes.append(
                f"email.sent holds {tally.sent_records} records for {len(tally.sent)} events"
            )
        return run.finish(result, sim, sampler, produced_at)
    finally:
        if observer:
            observer.stop()
        workers.stop()
        registry.close()


def count_dead(logs: list[Path], marker: str = "dead: ") -> int:
    """Events a peer gave up on, from its workers' logs (``marker`` starts or is in a line)."""
    return sum(
        sum(1 for line in log.read_text(errors="replace").splitlines() if marker in line)
        for log in logs
        if log.exists()
    )


def run_bare(run: Run, sim: Simulator) -> SystemResult:
    ns = f"benchbare{uuid.uuid4().hex[:6]}"
    settings = run.settings
    topic = f"{ns}.{topic_name(RAW)}"
    admin = AdminClient({"bootstrap.servers": settings.kafka.bootstrap})
    for f in admin.create_topics([NewTopic(topic, PARTITIONS, 1)]).values():
        f.result()
    registry = registry_client(settings)
    serde = Serde(registry, {topic: "raw_event"})
    serde.register()
    records = encode_all(run.events(ns), serde, topic)
    result = SystemResult(
        "bare",
        f"{run.workers} confluent-kafka consume loop process(es), 64 sends in flight each",
        run.n + run.late,
    )
    env = {**os.environ, "BENCH_TOPIC": topic, "BENCH_GROUP": ns, "BENCH_PROVIDER_URL": sim.url}
    logs = [run.log_dir / "bare" / f"bare-{i}.log" for i in range(run.workers)]
    procs = [spawn([sys.executable, "-m", "bench.peers.bare"], log, env) for log in logs]
    try:
        if not group_stable(settings.kafka.bootstrap, ns, run.workers, 60):
            result.notes.append("bare consumers not stable after 60 s")
        pids = {f"bare-{i}": p.pid for i, p in enumerate(procs)}
        if (bpid := broker_pid()) is not None:
            pids["kafka-broker"] = bpid
        sampler = Sampler(pids).start()
        produced_at: dict[str, float] = {}
        result.intake = produce_burst(settings.kafka.bootstrap, topic, records, produced_at)
        probe = run.probe(
            sim, ns, kafka_sender(settings.kafka.bootstrap, topic, serde), produced_at
        )
        if not wait_drained(
            lambda: sim.accepted() + count_dead(logs),
            run.n + run.late,
            stall_s=run.stall_s,
            check=lambda: check_procs(procs, logs),
        ):
            result.notes.append(f"stalled: no progress for {run.stall_s:.0f} s")
        if probe:
            probe.join()
        result.dead = count_dead(logs)
        return run.finish(result, sim, sampler, produced_at)
    finally:
        for p in procs:
            stop(p)
        registry.close()


def check_procs(procs: list[Any], logs: list[Path]) -> None:
    for p, log in zip(procs, logs, strict=True):
        if p.poll() is not None:
            tail = log.read_text(errors="replace")[-2000:]
            raise RuntimeError(f"{log.name}: exited with {p.returncode}:\n{tail}")


def run_celery(run: Run, sim: Simulator) -> SystemResult:
    from bench.peers import celery_app

    result = SystemResult(
        "celery",
        f"{run.workers} worker process(es), -P threads -c 64, no results, one Redis queue "
        f"with {celery_app.DESCRIPTION}",
        run.n + run.late,
    )
    with ExitStack() as stack:
        redis_srv = Redis(run.log_dir / "celery")
        stack.callback(redis_srv.close)
        env = {**os.environ, "BENCH_REDIS_URL": redis_srv.url, "BENCH_PROVIDER_URL": sim.url}
        logs = [run.log_dir / "celery" / f"celery-{i}.log" for i in range(run.workers)]
        procs = [
            spawn(
                [
                    sys.executable,
                    "-m",
                    "celery",
                    "-A",
                    "bench.peers.celery_app",
                    "worker",
                    "-P",
                    "threads",
                    "-c",
                    "64",
                    "--prefetch-multiplier",
                    str(celery_app.PREFETCH_MULTIPLIER),
                    "--without-gossip",
                    "--without-mingle",
                    "--without-heartbeat",
                    "-Q",
                    "flash",
                    "-n",
                    f"w{i}@%h",
                    "-l",
                    "info",
                ],
                log,
                env,
            )
            for i, log in enumerate(logs)
        ]
        for p in procs:
            stack.callback(stop, p)
        if not wait_until(
            lambda: all(
                " ready." in log.read_text(errors="replace") for log in logs if log.exists()
            ),
            60,
        ):
            result.notes.append("celery workers not ready after 60 s")
        producer = celery_app.producer_app(redis_srv.url)
        stack.callback(producer.close)

        def enqueue(e: dict[str, Any]) -> None:
            celery_app.enqueue(producer, e)

        prefix = f"benchcel{uuid.uuid4().hex[:6]}"
        events = run.events(prefix)
        pids = {f"celery-{i}": p.pid for i, p in enumerate(procs)}
        pids["redis-server"] = redis_srv.proc.pid
        sampler = Sampler(pids).start()
        produced_at: dict[str, float] = {}
        latencies = []
        start = time.perf_counter()
        for e in events:
            produced_at[e["event_id"]] = time.time()
            t = time.perf_counter()
            enqueue(e)
            latencies.append(time.perf_counter() - t)
        elapsed = time.perf_counter() - start
        result.intake = intake_of(
            "Celery.send_task with the event's priority (one LPUSH per event)",
            run.n,
            elapsed,
            latencies,
        )
        probe = run.probe(sim, prefix, enqueue, produced_at)
        marker = "raised unexpected"
        if not wait_drained(
            lambda: sim.accepted() + count_dead(logs, marker),
            run.n + run.late,
            stall_s=run.stall_s,
            check=lambda: check_procs(procs, logs),
        ):
            result.notes.append(f"stalled: no progress for {run.stall_s:.0f} s")
        if probe:
            probe.join()
        result.dead = count_dead(logs, marker)
        return run.finish(result, sim, sampler, produced_at)
    raise AssertionError("unreachable")


async def pg_enqueue(
    dsn: str, events: list[dict[str, Any]], produced_at: dict[str, float], batch: int
) -> tuple[float, list[float]]:
    import psycopg
    from pgqueuer import PsycopgDriver, Queries

    from bench.peers.pgq import ENTRYPOINT, PRIORITY

    conn = await psycopg.AsyncConnection.connect(dsn, autocommit=True)
    try:
        queries = Queries(PsycopgDriver(conn))
        latencies: list[float] = []
        start = time.perf_counter()
        for i in range(0, len(events), batch):
            chunk = events[i : i + batch]
            now = time.time()
            for e in chunk:
                produced_at[e["event_id"]] = now
            t = time.perf_counter()
            await queries.enqueue(
                [ENTRYPOINT] * len(chunk),
                [json.dumps(e).encode() for e in chunk],
                [PRIORITY[e["priority"]] for e in chunk],
            )
            latencies.append(time.perf_counter() - t)
        return time.perf_counter() - start, latencies
    finally:
        await conn.close()


async def pg_install(dsn: str) -> None:
    import psycopg
    from pgqueuer import PsycopgDriver, Queries

    conn = await psycopg.AsyncConnection.connect(dsn, autocommit=True)
    try:
        await Queries(PsycopgDriver(conn)).install()
    finally:
        await conn.close()


PG_ENQUEUE_BATCH = 100


def run_pgqueue(run: Run, sim: Simulator) -> SystemResult:
    result = SystemResult(
        "pgqueue",
        f"pgqueuer, {run.workers} worker process(es), dequeue batch 32, 64 HTTP connections each, "
        f"enqueue in batches of {PG_ENQUEUE_BATCH}",
        run.n + run.late,
    )
    with ExitStack() as stack:
        pg = Postgres(run.log_dir / "pgqueue")
        stack.callback(pg.close)
        asyncio.run(pg_install(pg.dsn))
        env = {**os.environ, "BENCH_PG_DSN": pg.dsn, "BENCH_PROVIDER_URL": sim.url}
        logs = [run.log_dir / "pgqueue" / f"pgq-{i}.log" for i in range(run.workers)]
        procs = [spawn([sys.executable, "-m", "bench.peers.pgq"], log, env) for log in logs]
        for p in procs:
            stack.callback(stop, p)
        if not wait_until(
            lambda: all("ready" in log.read_text(errors="replace") for log in logs if log.exists()),
            60,
        ):
            result.notes.append("pgqueuer workers not ready after 60 s")
        prefix = f"benchpg{uuid.uuid4().hex[:6]}"
        events = run.events(prefix)
        pids = {f"pgq-{i}": p.pid for i, p in enumerate(procs)}
        pids["postgres"] = pg.server_pid()
        sampler = Sampler(pids).start()
        produced_at: dict[str, float] = {}
        elapsed, latencies = asyncio.run(pg_enqueue(pg.dsn, events, produced_at, PG_ENQUEUE_BATCH))
        result.intake = intake_of(
            f"Queries.enqueue, batches of {PG_ENQUEUE_BATCH} (latency per batch)",
            run.n,
            elapsed,
            latencies,
        )
        dsn = pg.dsn
        probe = run.probe(
            sim, prefix, lambda e: asyncio.run(pg_enqueue(dsn, [e], {}, 1)) and None, produced_at
        )
        if not wait_drained(
            lambda: sim.accepted() + count_dead(logs),
            run.n + run.late,
            stall_s=run.stall_s,
            check=lambda: check_procs(procs, logs),
        ):
            result.notes.append(f"stalled: no progress for {run.stall_s:.0f} s")
        if probe:
            probe.join()
        result.dead = count_dead(logs)
        return run.finish(result, sim, sampler, produced_at)
    raise AssertionError("unreachable")


RUNNERS: dict[str, Callable[[Run, Simulator], SystemResult]] = {
    "spillway": run_spillway,
    "bare": run_bare,
    "celery": run_celery,
    "pgqueue": run_pgqueue,
}
#: Spillway with N dispatch workers in one consumer group (its own row, e.g.
#: ``spillway-3dispatch``); render and route keep one worker each.
SPILLWAY_DISPATCH = re.compile(r"spillway-([1-9][0-9]?)dispatch")


def runner(system: str) -> Callable[[Run, Simulator], SystemResult]:
    """The run function of a system name (KeyError for an unknown one)."""
    if system in RUNNERS:
        return RUNNERS[system]
    m = SPILLWAY_DISPATCH.fullmatch(system)
    if m is None:
        raise KeyError(system)
    return functools.partial(run_spillway, dispatch_workers=int(m.group(1)), system=system)


def parse_quotas(text: str | None) -> list[int | None]:
    """``--quota``: one provider setting or several, comma-separated; 0 or "none" is
    unlimited. ``"0,1000"`` -> ``[None, 1000]``."""
    if text is None:
        return [None]
    out: list[int | None] = []
    for part in text.split(","):
        part = part.strip().lower()
        if part in ("0", "none", "unlimited"):
            value = None
        elif re.fullmatch(r"[0-9]{1,9}", part):
            value = int(part)
        else:
            raise ValueError(f"quota {part!r}: an integer requests/s, or 0 for none")
        if value in out:
            raise ValueError(f"quota {part!r} given twice")
        out.append(value)
    return out


# --- machine and versions ---------------------------------------------------------------


def git_commit() -> str | None:
    """The checkout's commit, with ``+dirty`` when the code differs from it."""
    try:
        head = subprocess.run(
            ["git", "rev-parse", "--short", "HEAD"],
            cwd=PROJECT_ROOT,
            capture_output=True,
            text=True,
            check=True,
        ).stdout.strip()
        dirty = subprocess.run(
            ["git", "status", "--porcelain", "--", "app", "bench", "simulator", "templates"],
            cwd=PROJECT_ROOT,
            capture_output=True,
            text=True,
        ).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return None
    return head + ("+dirty" if dirty else "")


def machine() -> dict[str, Any]:
    model = ""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    return {
        "cores": os.cpu_count(),
        "memory_gb": round(psutil.virtual_memory().total / 2**30, 1),
        "cpu_model": model,
        "os": platform.platform(),
        "python": platform.python_version(),
        "load_avg_at_start": list(os.getloadavg()),
    }


def versions() -> dict[str, str]:
    from importlib.metadata import PackageNotFoundError, version

    import confluent_kafka

    out = {"librdkafka": confluent_kafka.libversion()[0]}
    for pkg in (
        "faust-streaming",
        "aiokafka",
        "confluent-kafka",
        "celery",
        "kombu",
        "redis",
        "pgqueuer",
        "psycopg",
        "jinja2",
        "httpx",
    ):
        try:
            out[pkg] = version(pkg)
        except PackageNotFoundError:
            out[pkg] = "missing"
    out["kafka"] = "4.1.1 (scripts/stack)"
    for name, cmd in (
        ("redis-server", ["redis-server", "--version"]),
        ("postgresql", ["/usr/lib/postgresql/15/bin/postgres", "--version"]),
    ):
        try:
            import subprocess

            out[name] = subprocess.run(cmd, capture_output=True, text=True).stdout.strip()
        except OSError:
            out[name] = "missing"
    return out


# --- main ---------------------------------------------------------------------------------


def run_all(
    preset: str,
    systems: list[str],
    quota: int | None,
    workers: int,
    n: int | None = None,
    log: Callable[[str], None] = print,
    stall_s: float = 60.0,
    profile: bool = False,
    late: int | None = None,
) -> dict[str, Any]:
    """Run ``systems`` one after another; the result document (see :func:`save`)."""
    n = n or PRESETS[preset]
    stamp = datetime.now(UTC).strftime("%Y%m%dT%H%M%SZ")
    log_dir = PROJECT_ROOT / "var" / f"bench-{stamp}"
    settings = Settings()
    store = TemplateStore(settings.templates_dir)
    samples = {name: store.sample_data(name) for name in store.names()}
    late = (50 if quota else 0) if late is None else late
    run = Run(n, quota, workers, log_dir, settings, samples, stall_s, profile, late)
    doc: dict[str, Any] = {
        "benchmark": "flash-sale",
        "preset": preset,
        "events": n,
        "quota_per_s": quota,
        "late_critical": late,
        "late_rate_per_s": LATE_RATE_PER_S,
        "peer_workers": workers,
        "started_at": stamp,
        "commit": git_commit(),
        "machine": machine(),
        "versions": versions(),
        "logs": str(log_dir.relative_to(PROJECT_ROOT)),
        "systems": [],
    }
    if log is print:
        log = functools.partial(print, flush=True)  # progress shows when piped to a file
    for system in systems:
        provider = f"quota {quota}/s" if quota else "unlimited"
        log(f"[{system}] {n} events, provider {provider}, late critical {late}")
        started = time.monotonic()
        sim = Simulator(log_dir, quota)
        try:
            result = runner(system)(run, sim)
        finally:
            sim.close()
        result.run_s = round(time.monotonic() - started, 1)
        log(summary_line(result))
        doc["systems"].append(asdict(result))
    return doc


def summary_line(r: SystemResult) -> str:
    tts = r.time_to_send_ms
    crit = tts.get("critical", {})
    intake = r.intake

    def f(v: float | int | None, spec: str = ".0f") -> str:
        return "-" if v is None else format(v, spec)

    late = tts.get("critical_late", {})
    bulk = tts.get("bulk", {})
    return (
        f"  {r.system:<9} intake {f(intake.events_per_s if intake else None)}/s "
        f"ack p99 {f(intake.ack_p99_ms if intake else None, '.1f')} ms | "
        f"drain {f(r.drain_s, '.1f')} s "
        f"({f(r.send_rate_per_s)}/s) | p50/p99 ms: critical {f(crit.get('p50'))}/"
        f"{f(crit.get('p99'))} bulk {f(bulk.get('p50'))}/{f(bulk.get('p99'))} "
        f"late critical {f(late.get('p50'))}/{f(late.get('p99'))} | "
        f"sent {r.sent} dead {r.dead} missing {r.missing} dups {r.duplicates} | "
        f"{'OK' if r.correct else 'INCORRECT'} {'; '.join(r.notes)}"
    )


def save(doc: dict[str, Any], results_dir: Path = RESULTS_DIR) -> Path:
    results_dir.mkdir(parents=True, exist_ok=True)
    quota = f"quota{doc['quota_per_s']}" if doc["quota_per_s"] else "unlimited"
    path = results_dir / f"flash-sale-{doc['preset']}-{quota}-{doc['started_at']}.json"
    path.write_text(json.dumps(doc, indent=1))
    return path


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=(__doc__ or "").split("\n")[0])
    parser.add_argument("--preset", choices=sorted(PRESETS), default="smoke")
    parser.add_argument("--events", type=int, help="override the preset's event count")
    parser.add_argument("--systems", default=",".join(SYSTEMS))
    parser.add_argument(
        "--quota",
        help="provider quota, requests/s (default: none); several settings comma-separated, "
        "0 for none: '0,1000' runs every system unlimited, then at 1000/s, one result file each",
    )
    parser.add_argument(
        "--workers",
        type=int,
        default=2,
        help="worker processes of each peer (bare, celery, pgqueue)",
    )
    parser.add_argument(
        "--late",
        type=int,
        help="password resets sent at 5/s once half the burst is accepted, in every "
        "provider setting (default: 50 with a quota, else 0)",
    )
    parser.add_argument(
        "--profile",
        action="store_true",
        help="record Spillway's workers with py-spy during the burst "
        "(var/bench-<time>/profile/*.top.txt)",
    )
    args = parser.parse_args(argv)
    systems = [s.strip() for s in args.systems.split(",") if s.strip()]
    unknown = [s for s in systems if s not in RUNNERS and not SPILLWAY_DISPATCH.fullmatch(s)]
    if unknown:
        parser.error(
            f"unknown systems {unknown}; known: {', '.join(SYSTEMS)}, spillway-<N>dispatch"
        )
    if len(set(systems)) != len(systems):
        parser.error("a system is listed twice")
    try:
        quotas = parse_quotas(args.quota)
    except ValueError as exc:
        parser.error(str(exc))
    ok = True
    for quota in quotas:  # one result file per provider setting, saved as soon as it is done
        doc = run_all(
            args.preset,
            systems,
            quota,
            args.workers,
            args.events,
            profile=args.profile,
            late=args.late,
        )
        path = save(doc)
        print(f"saved {path.relative_to(PROJECT_ROOT)}", flush=True)
        ok = ok and all(s["correct"] for s in doc["systems"])
    print("render with: python -m bench.report")
    return 0 if ok else 1


if __name__ == "__main__":
    raise SystemExit(main())
