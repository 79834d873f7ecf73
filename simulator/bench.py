"""Quick throughput check of the provider simulator.

Run::

    python -m simulator.bench [-n 5000] [-c 50] [--client httpx|aiohttp] [--url URL]

Without ``--url`` it starts ``python -m simulator.provider`` on a free port in a
subprocess (so client and server get a core each), fires ``-n`` distinct Mail Send
requests over a pool of ``-c`` connections, then prints requests/s, latency
percentiles, statuses and the simulator's own accepted count.

With ``--client httpx`` the client, not the simulator, is the bottleneck: httpcore
1.0.9's pool spends O(connections) per request in ``_assign_requests_to_connections``,
so throughput falls as ``-c`` grows. ``--client aiohttp`` shows the server's capacity.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import os
import socket
import statistics
import subprocess
import sys
import time
from collections import Counter
from collections.abc import Awaitable, Callable, Iterator, Sequence
from pathlib import Path

import aiohttp
import httpx

from simulator.client import SimulatorClient, provider_command

Sender = Callable[[dict[str, object]], Awaitable[int]]


def _body(i: int) -> dict[str, object]:
    return {
        "personalizations": [{"to": [{"email": f"user{i}@example.com"}]}],
        "from": {"email": "no-reply@shop.example"},
        "subject": f"Order {i} confirmed",
        "content": [
            {"type": "text/plain", "value": f"Order {i} is on its way."},
            {"type": "text/html", "value": f"<p>Order <b>{i}</b> is on its way.</p>"},
        ],
        "custom_args": {
            "event_id": f"bench-{os.getpid()}-{i}",
            "priority": "high",
            "source": "bench",
            "created_at_ms": str(int(time.time() * 1000)),
        },
    }


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@contextlib.contextmanager
def _provider_process() -> Iterator[str]:
    port = _free_port()
    root = Path(__file__).resolve().parent.parent
    proc = subprocess.Popen(
        provider_command(port),
        cwd=root,
    )
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        proc.terminate()
        proc.wait(10)


async def _fire(send: Sender, n: int, concurrency: int) -> tuple[float, list[float], Counter[int]]:
    latencies: list[float] = []
    statuses: Counter[int] = Counter()
    next_i = iter(range(n))

    async def worker() -> None:
        for i in next_i:  # shared iterator: workers take the next request number
            t0 = time.perf_counter()
            status = await send(_body(i))
            latencies.append(time.perf_counter() - t0)
            statuses[status] += 1

    start = time.perf_counter()
    await asyncio.gather(*(worker() for _ in range(concurrency)))
    return time.perf_counter() - start, latencies, statuses


async def run(url: str, n: int, concurrency: int, client: str) -> None:
    headers = {"Authorization": "Bearer bench-key"}
    control = SimulatorClient(url)
    await control.wait_ready()
    await control.reset()
    send_url = url + "/v3/mail/send"
    if client == "httpx":
        limits = httpx.Limits(max_connections=concurrency, max_keepalive_connections=concurrency)
        async with httpx.AsyncClient(limits=limits, headers=headers, timeout=30) as http:

            async def send(body: dict[str, object]) -> int:
                return (await http.post(send_url, json=body)).status_code

            elapsed, latencies, statuses = await _fire(send, n, concurrency)
    else:
        conn = aiohttp.TCPConnector(limit=concurrency)
        async with aiohttp.ClientSession(connector=conn, headers=headers) as session:

            async def send(body: dict[str, object]) -> int:
                async with session.post(send_url, json=body) as resp:
                    await resp.read()
                    return resp.status

            elapsed, latencies, statuses = await _fire(send, n, concurrency)
    stats = await control.stats(series=False)
    await control.aclose()
    q = statistics.quantiles(latencies, n=100)
    print(
        f"client={client} n={n} concurrency={concurrency}: {n / elapsed:,.0f} requests/s "
        f"({elapsed:.2f} s); latency p50={q[49] * 1000:.1f} ms p99={q[98] * 1000:.1f} ms; "
        f"statuses={dict(statuses)}; simulator accepted={stats['accepted']}"
    )


def main(argv: Sequence[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m simulator.bench", description=__doc__)
    p.add_argument("-n", type=int, default=5000, help="requests")
    p.add_argument("-c", type=int, default=50, help="connections / concurrent requests")
    p.add_argument("--client", choices=("httpx", "aiohttp"), default="httpx")
    p.add_argument("--url", help="an already running simulator (default: start one)")
    args = p.parse_args(argv)
    with contextlib.ExitStack() as stack:
        url = args.url or stack.enter_context(_provider_process())
        asyncio.run(run(url, args.n, args.c, args.client))
    return 0


if __name__ == "__main__":
    sys.exit(main())
