"""Intake latency at a fixed offered load: the HTTP intake endpoint and a Kafka producer.

    python -m bench.intake [--rate 1250] [--batch-rate 20000] [--batch 100] [--seconds 10]

Open loop: requests (events) are started on a fixed schedule whatever the answers, and
latency counts from the scheduled moment, so a stall (of the intake, the broker or this
generator itself) shows up in the figures instead of slowing the offered load down.
Bodies are encoded before the clock starts, so the generator spends its CPU on the
requests only, and the generator does not collect garbage while it measures (its own
pauses would count as the intake's latency).

- HTTP single: ``POST /v1/events``, one JSON event per request, at ``--rate``
  requests/s against an intake worker of its own; 202 only after the broker's acks=all.
- HTTP batch: ``POST /v1/events/batch``, ``--batch`` events per request, at
  ``--batch-rate`` events/s; an event's latency is its request's.
- Kafka: one confluent-kafka producer, acks=all, ``linger.ms`` 1, at ``--rate``; ack
  latency from the delivery callback.

Requests carry an API key (``--auth key``, the production setting: the integration's
name replaces each event's ``source``, so every event is re-encoded). The intake's
per-integration rate limit is off (``SPILLWAY_INTAKE_RATE_PER_S=0``): its default,
2,000 events/s, would answer the batch load 429 by design. Each phase records the CPU
seconds of the intake worker and of this generator, and the load average before and
after it. ``--phases http`` runs only the single-event phase (likewise ``http_batch``,
``kafka``). Writes ``bench/results/intake-<utc time>.json``; ``bench.report`` renders
the newest one.
"""

from __future__ import annotations

import argparse
import asyncio
import functools
import gc
import json
import os
import resource
import secrets
import time
import uuid
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from datetime import UTC, datetime
from typing import Any

import aiohttp
import psutil
from confluent_kafka import Producer

from app.settings import PROJECT_ROOT, Settings
from app.topology import RAW, topic_name
from bench.flash_sale import RESULTS_DIR, machine, pct
from harness.workers import Workers, wait_until

HTTP_CONNECTIONS = 64
#: A request not answered within this long counts as an error (and does not stall the run).
REQUEST_TIMEOUT_S = 60.0
#: The integration the benchmark's requests authenticate as (``--auth key``).
INTEGRATION = "bench"


def summary(latencies_ms: list[float], errors: int, offered: int, elapsed: float) -> dict[str, Any]:
    return {
        "offered": offered,
        "answered": len(latencies_ms),
        "errors": errors,
        "achieved_per_s": round(len(latencies_ms) / elapsed, 1) if elapsed > 0 else None,
        "p50_ms": pct(latencies_ms, 50),
        "p99_ms": pct(latencies_ms, 99),
        "max_ms": max(latencies_ms, default=None),
    }


def event(prefix: str, i: int) -> dict[str, Any]:
    return {
        "event_id": f"{prefix}-{i}",
        "template": "password_reset",
        "priority": "critical",
        "to": f"user{i}@example.com",
        "source": "bench-intake",
        "data": {
            "name": f"User {i}",
            "reset_url": f"https://shop.example/reset/{i}",
            "expires_minutes": 30,
        },
    }


def cpu_seconds(pids: list[int]) -> float:
    """CPU seconds (user + system) used so far by these processes and their children."""
    total = 0.0
    for pid in pids:
        try:
            proc = psutil.Process(pid)
            for p in [proc, *proc.children(recursive=True)]:
                t = p.cpu_times()
                total += t.user + t.system
        except psutil.NoSuchProcess:
            continue
    return total


def own_cpu_seconds() -> float:
    r = resource.getrusage(resource.RUSAGE_SELF)
    return r.ru_utime + r.ru_stime


@contextmanager
def measured(doc: dict[str, Any], pids: list[int]) -> Iterator[None]:
    """Adds to ``doc``: the phase's wall time, the CPU seconds of ``pids`` (the intake)
    and of this process (the generator), and the load average before and after."""
    load0, cpu0, own0, t0 = os.getloadavg(), cpu_seconds(pids), own_cpu_seconds(), time.time()
    yield
    wall = time.time() - t0
    intake_cpu, own = cpu_seconds(pids) - cpu0, own_cpu_seconds() - own0
    doc["wall_s"] = round(wall, 2)
    doc["intake_cpu_s"] = round(intake_cpu, 2)
    doc["generator_cpu_s"] = round(own, 2)
    doc["load_avg_before"] = [round(x, 2) for x in load0]
    doc["load_avg_after"] = [round(x, 2) for x in os.getloadavg()]


async def http_load(
    url: str,
    rate: float,
    seconds: float,
    prefix: str,
    batch: int = 1,
    headers: dict[str, str] | None = None,
) -> dict[str, Any]:
    """``rate`` events/s, one request per ``batch`` events (batch 1: ``/v1/events``)."""
    n = int(rate * seconds / batch)
    rate = rate / batch
    path = "/v1/events" if batch == 1 else "/v1/events/batch"
    headers = {"Content-Type": "application/json", **(headers or {})}

    def body(i: int) -> bytes:
        if batch == 1:
            return json.dumps(event(prefix, i)).encode()
        return json.dumps([event(prefix, i * batch + j) for j in range(batch)]).encode()

    bodies = [body(i) for i in range(n)]  # encoded before the clock starts
    latencies: list[float] = []
    errors: list[str] = []
    connector = aiohttp.TCPConnector(limit=HTTP_CONNECTIONS)
    timeout = aiohttp.ClientTimeout(total=REQUEST_TIMEOUT_S)
    async with aiohttp.ClientSession(connector=connector, timeout=timeout) as session:

        async def one(data: bytes, due: float) -> None:
            try:
                async with session.post(f"{url}{path}", data=data, headers=headers) as resp:
                    await resp.read()
                    if resp.status != 202:
                        errors.append(f"{resp.status}")
                        return
            except (aiohttp.ClientError, TimeoutError) as exc:
                errors.append(type(exc).__name__)
                return
            latencies.append((time.perf_counter() - due) * 1000)

        # warm-up: connections and the producer's metadata
        await asyncio.gather(*(one(body(-1 - i), time.perf_counter()) for i in range(20)))
        latencies.clear()
        errors.clear()
        # No garbage collection in the generator while it measures: a full collection
        # walks every pending request (1.4 s pauses seen when thousands were pending),
        # which would count as intake latency. The intake worker collects as usual.
        gc.collect()
        gc.freeze()
        gc.disable()
        try:
            start = time.perf_counter()
            tasks = []
            for i in range(n):
                due = start + i / rate
                delay = due - time.perf_counter()
                if delay > 0:
                    await asyncio.sleep(delay)
                # a late start is not forgiven: latency counts from ``due``
                tasks.append(asyncio.create_task(one(bodies[i], due)))
            await asyncio.gather(*tasks)
            elapsed = time.perf_counter() - start
        finally:
            gc.enable()
            gc.unfreeze()
    out = summary(latencies, len(errors), n, elapsed)
    out["error_kinds"] = sorted(set(errors))[:5]
    out["batch"] = batch
    out["offered_events_per_s"] = rate * batch
    out["events_per_s"] = round(len(latencies) * batch / elapsed, 1) if elapsed > 0 else None
    return out


def kafka_load(
    bootstrap: str, topic: str, rate: float, seconds: float, prefix: str
) -> dict[str, Any]:
    producer = Producer({"bootstrap.servers": bootstrap, "acks": "all", "linger.ms": 1})
    n = int(rate * seconds)
    latencies: list[float] = []
    errors = 0

    def on_delivery(err: Any, _msg: Any, due: float) -> None:
        nonlocal errors
        if err is not None:
            errors += 1
        else:
            latencies.append((time.perf_counter() - due) * 1000)

    for _ in range(20):  # warm-up
        producer.produce(topic, key=b"warm", value=b"{}")
    producer.flush(10)
    start = time.perf_counter()
    for i in range(n):
        due = start + i / rate
        while (delay := due - time.perf_counter()) > 0:
            producer.poll(min(delay, 0.001))
        body = json.dumps(event(prefix, i)).encode()
        producer.produce(
            topic,
            key=f"{prefix}-{i}".encode(),
            value=body,
            on_delivery=functools.partial(on_delivery, due=due),
        )
        producer.poll(0)
    producer.flush(30)
    return summary(latencies, errors, n, time.perf_counter() - start)


PHASES = ("http", "http_batch", "kafka")


def run(
    rate: float,
    seconds: float,
    batch: int,
    batch_rate: float,
    auth: str = "key",
    phases: tuple[str, ...] = PHASES,
) -> dict[str, Any]:
    ns = f"benchin{uuid.uuid4().hex[:6]}"
    stamp = datetime.now(UTC).strftime("%Y%m%dT%H%M%SZ")
    settings = Settings(topic_namespace=f"{ns}.", app_id_prefix=ns)
    secret = secrets.token_urlsafe(32)
    env = {
        "SPILLWAY_TOPIC_NAMESPACE": f"{ns}.",
        "SPILLWAY_APP_ID_PREFIX": ns,
        "SPILLWAY_INTAKE_RATE_PER_S": "0",
    }
    if auth == "key":
        env["SPILLWAY_INTAKE_API_KEYS"] = json.dumps({INTEGRATION: secret})
        headers = {"Authorization": f"Bearer {secret}"}
    else:
        env["SPILLWAY_INTAKE_AUTH"] = "off"
        headers = {}
    workers = Workers(env, PROJECT_ROOT / "var" / f"bench-intake-{stamp}")
    doc: dict[str, Any] = {
        "benchmark": "intake",
        "started_at": stamp,
        "rate_per_s": rate,
        "batch_rate_per_s": batch_rate,
        "seconds": seconds,
        "machine": machine(),
        "intake_linger_ms": settings.intake.linger_ms,
        "intake_auth": "API key (Authorization: Bearer)" if auth == "key" else "off",
        "intake_rate_limit": "off (SPILLWAY_INTAKE_RATE_PER_S=0)",
    }
    try:
        worker = workers.add("intake")

        def healthy() -> bool:
            try:
                return httpx_get(f"{worker.web_url}/health") == 200
            except OSError:
                return False

        if not wait_until(healthy, 60):
            raise RuntimeError(f"intake worker did not start: see {worker.log_path}")
        assert worker.proc is not None
        pids = [worker.proc.pid]

        def phase(name: str, load: Callable[[], dict[str, Any]]) -> None:
            if name not in phases:
                return
            out: dict[str, Any] = {}
            with measured(out, pids):
                result = load()
            doc[name] = {**result, **out}

        phase(
            "http",
            lambda: asyncio.run(
                http_load(worker.web_url, rate, seconds, f"{ns}-h", headers=headers)
            ),
        )
        phase(
            "http_batch",
            lambda: asyncio.run(
                http_load(
                    worker.web_url, batch_rate, seconds, f"{ns}-b", batch=batch, headers=headers
                )
            ),
        )
        phase(
            "kafka",
            lambda: kafka_load(
                settings.kafka.bootstrap,
                topic_name(RAW, settings),
                rate,
                seconds,
                f"{ns}-k",
            ),
        )
    finally:
        workers.stop()
    return doc


def httpx_get(url: str) -> int:
    import httpx

    try:
        return httpx.get(url, timeout=1).status_code
    except httpx.HTTPError as exc:
        raise OSError(str(exc)) from exc


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=(__doc__ or "").split("\n")[0])
    parser.add_argument(
        "--rate", type=float, default=1250.0, help="offered single-event requests/s"
    )
    parser.add_argument(
        "--batch-rate", type=float, default=20000.0, help="offered events/s in batch requests"
    )
    parser.add_argument("--seconds", type=float, default=10.0)
    parser.add_argument("--batch", type=int, default=100, help="events per batch request")
    parser.add_argument(
        "--auth",
        choices=("key", "off"),
        default="key",
        help="key: requests carry an API key (production); off: SPILLWAY_INTAKE_AUTH=off",
    )
    parser.add_argument(
        "--phases",
        default=",".join(PHASES),
        help=f"which to run, comma-separated (default {','.join(PHASES)})",
    )
    args = parser.parse_args(argv)
    phases = tuple(p for p in args.phases.split(",") if p)
    if unknown := set(phases) - set(PHASES):
        parser.error(f"unknown phases: {', '.join(sorted(unknown))}")
    doc = run(args.rate, args.seconds, args.batch, args.batch_rate, args.auth, phases)
    RESULTS_DIR.mkdir(parents=True, exist_ok=True)
    path = RESULTS_DIR / f"intake-{doc['started_at']}.json"
    path.write_text(json.dumps(doc, indent=1))
    names = [name for name in PHASES if name in doc]
    for name in names:
        r = doc[name]
        offered = r.get("offered_events_per_s", args.rate)
        print(
            f"{name:<10} offered {offered:.0f} events/s: answered {r['answered']}/"
            f"{r['offered']} ({r['achieved_per_s']}/s, {r.get('events_per_s', '-')} "
            f"events/s), errors {r['errors']}, latency p50 {fmt_ms(r['p50_ms'])} p99 "
            f"{fmt_ms(r['p99_ms'])} max {fmt_ms(r['max_ms'])} ms; CPU s intake "
            f"{r['intake_cpu_s']} generator {r['generator_cpu_s']} in {r['wall_s']} s; "
            f"load {r['load_avg_before'][0]} -> {r['load_avg_after'][0]}"
        )
    print(f"saved {path.relative_to(PROJECT_ROOT)}")
    return 0 if all(doc[k]["errors"] == 0 for k in names) else 1


def fmt_ms(value: float | None) -> str:
    return "-" if value is None else f"{value:.1f}"


if __name__ == "__main__":
    raise SystemExit(main())
