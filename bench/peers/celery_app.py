"""The Celery + Redis peer: one queue, one task that renders and sends.

    BENCH_REDIS_URL=redis://127.0.0.1:N/0 BENCH_PROVIDER_URL=... \
    celery -A bench.peers.celery_app worker -P threads -c 64 --prefetch-multiplier 16 \
        --without-gossip --without-mingle --without-heartbeat -Q flash

Configured for throughput as Celery's docs advise for many short I/O-bound tasks:
results ignored (no result backend), a thread pool sized for concurrent HTTP calls,
a prefetch multiplier above 1 for short tasks, acks at receipt (the default),
gossip/mingle/heartbeat events off. Render uses the same TemplateStore, the send is
the same SendGrid-shaped request with the same Idempotency-Key (httpx, thread-safe
pooled client).
"""

from __future__ import annotations

import os
import threading
from typing import Any

from celery import Celery

from bench.work import Renderer, send_sync, sync_client

QUEUE = "flash"
REDIS_URL = os.environ.get("BENCH_REDIS_URL", "redis://127.0.0.1:6379/0")

app = Celery("flash_sale", broker=REDIS_URL)
app.conf.update(
    task_ignore_result=True,
    task_default_queue=QUEUE,
    task_serializer="json",
    accept_content=["json"],
    worker_prefetch_multiplier=16,
    broker_connection_retry_on_startup=True,
    worker_hijack_root_logger=False,
)

_work_lock = threading.Lock()
_shared: tuple[Renderer, Any] | None = None


def _work() -> tuple[Renderer, Any]:
    """One renderer and one pooled HTTP client per worker process (threads share them)."""
    global _shared
    with _work_lock:
        if _shared is None:
            _shared = (Renderer(), sync_client(int(os.environ.get("BENCH_CONCURRENCY", "64"))))
        return _shared


@app.task(name="flash.send_email")
def send_email(event: dict[str, Any]) -> None:
    renderer, client = _work()
    send_sync(client, renderer.outbound(event))
