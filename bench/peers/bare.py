"""The ceiling: a bare confluent-kafka consume loop doing Spillway's render and send
work in one process, no Faust, no stages, no ledger, no lanes.

    BENCH_TOPIC=... BENCH_GROUP=... BENCH_PROVIDER_URL=... python -m bench.peers.bare

Consumes raw events (Avro or JSON, decoded by :class:`app.serde.Serde`), renders with
the same templates, sends with :class:`app.providers.http.HttpProvider` at most
``BENCH_CONCURRENCY`` (64) requests at once. Offsets are auto-committed (at-most-once
on a crash): the ceiling pays for none of Spillway's guarantees. SIGTERM stops it.
"""

from __future__ import annotations

import asyncio
import os
import signal
import sys

from confluent_kafka import Consumer

from app.runtime import registry_client
from app.serde import Serde
from app.settings import Settings
from app.templating import validate_address
from bench.work import Renderer, http_provider, send_async


async def main() -> int:
    settings = Settings()
    topic = os.environ["BENCH_TOPIC"]
    concurrency = int(os.environ.get("BENCH_CONCURRENCY", "64"))
    registry = registry_client(settings)
    serde = Serde(registry, {})
    renderer = Renderer()
    provider = http_provider(concurrency)
    consumer = Consumer(
        {
            **settings.kafka.client_config(),
            "group.id": os.environ["BENCH_GROUP"],
            "auto.offset.reset": "earliest",
            "enable.auto.commit": True,
            "fetch.wait.max.ms": 10,
        }
    )
    consumer.subscribe([topic])
    stop = asyncio.Event()
    asyncio.get_running_loop().add_signal_handler(signal.SIGTERM, stop.set)
    slots = asyncio.Semaphore(concurrency)
    tasks: set[asyncio.Task[None]] = set()
    failed = 0

    async def handle(payload: bytes) -> None:
        nonlocal failed
        try:
            event, _ = await serde.decode_raw(payload)
            email = renderer.outbound(
                {
                    "event_id": event.event_id,
                    "to": validate_address(event.to),
                    "template": event.template,
                    "data": dict(event.data or {}),
                    "priority": event.priority,
                    "source": event.source,
                    "from_address": event.from_address,
                    "template_version": event.template_version,
                    "locale": event.locale,
                }
            )
            await send_async(provider, email)
        except Exception as exc:
            failed += 1
            print(f"dead: {type(exc).__name__}: {exc}", file=sys.stderr)
        finally:
            slots.release()

    print("ready", flush=True)
    while not stop.is_set():
        msgs = consumer.consume(256, timeout=0)
        if not msgs:
            await asyncio.sleep(0.005)
            continue
        for msg in msgs:
            payload = msg.value()
            if msg.error() or payload is None:
                continue
            await slots.acquire()
            task = asyncio.create_task(handle(payload))
            tasks.add(task)
            task.add_done_callback(tasks.discard)
    if tasks:
        await asyncio.wait(tasks, timeout=10)
    consumer.close()
    await provider.aclose()
    registry.close()
    print(f"dead={failed}", flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(asyncio.run(main()))
