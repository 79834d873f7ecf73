"""The PostgreSQL SKIP LOCKED peer, on pgqueuer (psycopg driver).

    BENCH_PG_DSN='host=/tmp/x port=N user=postgres dbname=postgres' \
    BENCH_PROVIDER_URL=... python -m bench.peers.pgq

One entrypoint ``send_email``; a job's payload is the event's JSON, its priority
follows the event's (critical 10 > normal 5 > bulk 0). Tuned as pgqueuer's docs
suggest for throughput: batched dequeue (``batch_size``), LISTEN/NOTIFY wake-ups,
no worker-wide job cap (see below). The same render and send work as the other
peers (TemplateStore, HttpProvider). SIGTERM stops it.
"""

from __future__ import annotations

import asyncio
import os
import signal
import sys

import psycopg
from pgqueuer import Job, PsycopgDriver, Queries, QueueManager

from bench.work import Renderer, decode_event, http_provider, send_async

ENTRYPOINT = "send_email"
PRIORITY = {"critical": 10, "normal": 5, "bulk": 0}


async def main() -> int:
    concurrency = int(os.environ.get("BENCH_CONCURRENCY", "64"))
    batch = int(os.environ.get("BENCH_BATCH", "32"))
    conn = await psycopg.AsyncConnection.connect(os.environ["BENCH_PG_DSN"], autocommit=True)
    qm = QueueManager(Queries(PsycopgDriver(conn)))
    renderer = Renderer()
    provider = http_provider(concurrency)
    failed = 0

    @qm.entrypoint(ENTRYPOINT)
    async def send_email(job: Job) -> None:
        nonlocal failed
        assert job.payload is not None
        try:
            await send_async(provider, renderer.outbound(decode_event(job.payload)))
        except Exception as exc:
            failed += 1
            print(f"dead: {type(exc).__name__}: {exc}", file=sys.stderr)

    loop = asyncio.get_running_loop()
    loop.add_signal_handler(signal.SIGTERM, qm.shutdown.set)
    print("ready", flush=True)
    # max_concurrent_tasks unset (0: no worker-wide cap): the cap is enforced in the
    # dequeue query against picked jobs whose completion is still buffered, which
    # throttled this workload to ~64 jobs/s per worker; HTTP concurrency stays capped
    # by the provider client's connection pool.
    max_tasks = int(os.environ.get("BENCH_PG_MAX_TASKS", "0"))
    await qm.run(batch_size=batch, max_concurrent_tasks=max_tasks or None)
    await provider.aclose()
    await conn.close()
    print(f"dead={failed}", flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(asyncio.run(main()))
