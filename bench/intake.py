"""Intake latency at a fixed offered load: the HTTP intake endpoint and a Kafka producer.

    python -m bench.intake [--rate 1250] [--seconds 10]

Open loop: requests (events) are started on a fixed schedule whatever the answers, and
latency counts from the scheduled moment, so a stall shows up in the figures instead of
slowing the offered load down. HTTP: ``POST /v1/events`` (one JSON event per request, 202
only after the broker's acks=all) against an intake worker of its own, then the same
events ``--batch`` at a time through ``POST /v1/events/batch`` (latency of an event: that
of its request). Kafka: one
confluent-kafka producer, acks=all, ``linger.ms`` 1, ack latency from the delivery
callback. Writes ``bench/results/intake-<utc time>.json``; ``bench.report`` renders the
newest one.
"""

from __future__ import annotations

import argparse
import asyncio
import functools
import json
import time
import uuid
from datetime import UTC, datetime
from typing import Any

import aiohttp
from confluent_kafka import Producer

from app.settings import PROJECT_ROOT, Settings
from bench.flash_sale import RESULTS_DIR, machine, pct
from harness.workers import Workers, wait_until

HTTP_CONNECTIONS = 64


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


async def http_load(
    url: str, rate: float, seconds: float, prefix: str, batch: int = 1
) -> dict[str, Any]:
    """``rate`` events/s, one request per ``batch`` events (batch 1: ``/v1/events``)."""
    n = int(rate * seconds / batch)
    rate = rate / batch
    latencies: list[float] = []
    errors: list[str] = []
    connector = aiohttp.TCPConnector(limit=HTTP_CONNECTIONS)
    async with aiohttp.ClientSession(connector=connector) as session:

        async def one(i: int, due: float) -> None:
            if batch == 1:
                path, body = "/v1/events", event(prefix, i)
            else:
                path = "/v1/events/batch"
                body = [event(prefix, i * batch + j) for j in range(batch)]  # type: ignore[assignment]
            try:
                async with session.post(f"{url}{path}", json=body) as resp:
                    await resp.read()
                    if resp.status != 202:
                        errors.append(f"{resp.status}")
                        return
            except aiohttp.ClientError as exc:
                errors.append(type(exc).__name__)
                return
            latencies.append((time.perf_counter() - due) * 1000)

        # warm-up: connections and the producer's metadata
        await asyncio.gather(*(one(-1 - i, time.perf_counter()) for i in range(20)))
        latencies.clear()
        errors.clear()
        start = time.perf_counter()
        tasks = []
        for i in range(n):
            due = start + i / rate
            delay = due - time.perf_counter()
            if delay > 0:
                await asyncio.sleep(delay)
            tasks.append(asyncio.create_task(one(i, due)))
        await asyncio.gather(*tasks)
        elapsed = time.perf_counter() - start
    out = summary(latencies, len(errors), n, elapsed)
    out["error_kinds"] = sorted(set(errors))[:5]
    out["batch"] = batch
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


def run(rate: float, seconds: float, batch: int) -> dict[str, Any]:
    ns = f"benchin{uuid.uuid4().hex[:6]}"
    stamp = datetime.now(UTC).strftime("%Y%m%dT%H%M%SZ")
    settings = Settings(topic_namespace=f"{ns}.", app_id_prefix=ns)
    workers = Workers(
        {
            "SPILLWAY_TOPIC_NAMESPACE": f"{ns}.",
            "SPILLWAY_APP_ID_PREFIX": ns,
            "SPILLWAY_INTAKE_AUTH": "off",
        },
        PROJECT_ROOT / "var" / f"bench-intake-{stamp}",
    )
    doc: dict[str, Any] = {
        "benchmark": "intake",
        "started_at": stamp,
        "rate_per_s": rate,
        "seconds": seconds,
        "machine": machine(),
        "intake_linger_ms": settings.intake.linger_ms,
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
        doc["http"] = asyncio.run(http_load(worker.web_url, rate, seconds, f"{ns}-h"))
        doc["http_batch"] = asyncio.run(
            http_load(worker.web_url, rate, seconds, f"{ns}-b", batch=batch)
        )
        doc["kafka"] = kafka_load(
            settings.kafka.bootstrap, settings.topic("email.raw-events"), rate, seconds, f"{ns}-k"
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
    parser.add_argument("--rate", type=float, default=1250.0, help="offered events/s")
    parser.add_argument("--seconds", type=float, default=10.0)
    parser.add_argument("--batch", type=int, default=25, help="events per batch request")
    args = parser.parse_args(argv)
    doc = run(args.rate, args.seconds, args.batch)
    RESULTS_DIR.mkdir(parents=True, exist_ok=True)
    path = RESULTS_DIR / f"intake-{doc['started_at']}.json"
    path.write_text(json.dumps(doc, indent=1))
    names = ("http", "http_batch", "kafka")
    for name in names:
        r = doc[name]
        print(
            f"{name:<10} offered {args.rate:.0f} events/s: answered {r['answered']}/"
            f"{r['offered']} ({r['achieved_per_s']}/s), errors {r['errors']}, latency p50 "
            f"{r['p50_ms']:.1f} p99 {r['p99_ms']:.1f} max {r['max_ms']:.1f} ms"
        )
    print(f"saved {path.relative_to(PROJECT_ROOT)}")
    return 0 if all(doc[k]["errors"] == 0 for k in names) else 1


if __name__ == "__main__":
    raise SystemExit(main())
