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

_renderer: Renderer | None = None
_client: Any = None


def _work() -> tuple[Renderer, Any]:
    global _renderer, _client
    if _renderer is None:
        _renderer = Renderer()
        _client = sync_client(int(os.environ.get("BENCH_CONCURRENCY", "64")))
    return _renderer, _client


@app.task(name="flash.send_email")  # type: ignore[untyped-decorator]
def send_email(event: dict[str, Any]) -> None:
    renderer, client = _work()
    send_sync(client, renderer.outbound(event))
