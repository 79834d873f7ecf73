"""The Celery + Redis peer: one queue with Celery's Redis message priorities, one task
that renders and sends.

    BENCH_REDIS_URL=redis://127.0.0.1:N/0 BENCH_PROVIDER_URL=... \
    celery -A bench.peers.celery_app worker -P threads -c 64 --prefetch-multiplier 1 \
        --without-gossip --without-mingle --without-heartbeat -Q flash

Configured for throughput as Celery's docs advise for many short I/O-bound tasks:
results ignored (no result backend), a thread pool sized for concurrent HTTP calls,
acks at receipt (the default), gossip/mingle/heartbeat events off.

Priorities: Celery's own feature for the Redis broker (docs, "Routing Tasks" ->
"Redis Message Priorities"): the transport keeps one Redis list per priority step
(``flash``, ``flash:5``, ``flash:9``) and BRPOPs them in priority order, lowest number
first. Each event goes with ``priority=PRIORITY[event priority]`` (critical 0, normal
5, bulk 9). The worker only sees the broker's order for what it has not fetched yet, so
prefetch is kept at the docs' advice for priorities: multiplier 1 (64 reserved tasks
per worker, one per thread), not the x16 of a FIFO queue.

Render uses the same TemplateStore, the send is the same SendGrid-shaped request with
the same Idempotency-Key (httpx, thread-safe pooled client).
"""

from __future__ import annotations

import os
import threading
from typing import Any

from celery import Celery

from bench.work import Renderer, send_sync, sync_client

QUEUE = "flash"
REDIS_URL = os.environ.get("BENCH_REDIS_URL", "redis://127.0.0.1:6379/0")
#: Redis priorities: 0 is served first (the reverse of RabbitMQ's).
PRIORITY = {"critical": 0, "normal": 5, "bulk": 9}
PREFETCH_MULTIPLIER = 1
TRANSPORT_OPTIONS = {
    "queue_order_strategy": "priority",
    "priority_steps": list(range(10)),
    "sep": ":",
}
#: for the result's config string
DESCRIPTION = (
    "Redis message priorities (broker_transport_options queue_order_strategy=priority, "
    "priority_steps 0-9, sep ':'; apply_async priority critical 0 / normal 5 / bulk 9), "
    f"prefetch x{PREFETCH_MULTIPLIER}"
)

TASK = "flash.send_email"
CONFIG: dict[str, Any] = {
    "task_ignore_result": True,
    "task_default_queue": QUEUE,
    "task_serializer": "json",
    "accept_content": ["json"],
    "worker_prefetch_multiplier": PREFETCH_MULTIPLIER,
    "broker_transport_options": TRANSPORT_OPTIONS,
    "broker_connection_retry_on_startup": True,
    "worker_hijack_root_logger": False,
}

app = Celery("flash_sale", broker=REDIS_URL)
app.conf.update(CONFIG)

_work_lock = threading.Lock()
_shared: tuple[Renderer, Any] | None = None


def _work() -> tuple[Renderer, Any]:
    """One renderer and one pooled HTTP client per worker process (threads share them)."""
    global _shared
    with _work_lock:
        if _shared is None:
            _shared = (Renderer(), sync_client(int(os.environ.get("BENCH_CONCURRENCY", "64"))))
        return _shared


@app.task(name=TASK)
def send_email(event: dict[str, Any]) -> None:
    renderer, client = _work()
    send_sync(client, renderer.outbound(event))


def producer_app(broker_url: str) -> Celery:
    """The harness's own producing app for one run's Redis (a fresh one per run: a
    Celery app keeps its broker connection pools, so one app cannot follow a run's
    Redis to the next run's)."""
    client = Celery("flash_sale_producer", broker=broker_url)
    client.conf.update(CONFIG)
    return client


def enqueue(client: Celery, event: dict[str, Any]) -> None:
    """One event, at its priority (see the module doc): ``Task.apply_async`` by name."""
    client.send_task(
        TASK,
        args=(event,),
        queue=QUEUE,
        priority=PRIORITY.get(event.get("priority", "normal"), PRIORITY["normal"]),
    )
