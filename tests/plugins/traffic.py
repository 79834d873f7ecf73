"""Traffic for the integration tier: provider policies for a worker's environment, and
events produced through render and route into the dispatch lanes."""

from __future__ import annotations

import json
from typing import Any

from harness import burst
from harness.observe import end_offsets
from harness.workers import wait_until
from tests.plugins.stack import Env

PARTITIONS = 4


def policy(name: str, url: str, **over: Any) -> dict[str, Any]:
    # these simulators run in their default mode, which honours idempotency keys (24 h)
    return {"name": name, "url": url, "idempotency_ttl_s": 86_400, **over}


def providers_env(*policies: dict[str, Any]) -> dict[str, str]:
    return {"SPILLWAY_PROVIDERS": json.dumps(list(policies))}


def produce(env: Env, n: int, priority: str, prefix: str) -> list[str]:
    template = {"critical": "password_reset", "normal": "order_confirmation", "bulk": "newsletter"}[
        priority
    ]
    ids = []
    for i in range(n):
        event_id = f"{env.ns}-{prefix}{i}"
        value = burst.encode(
            "good",
            {
                "event_id": event_id,
                "template": template,
                "priority": priority,
                "to": f"{prefix}{i}@example.com",
                "data": env.samples[template],
                "source": "t",
            },
            env.serde,
            env.topic("email.raw-events"),
            use_avro=True,
        )
        env.produce(event_id.encode(), value)
        ids.append(event_id)
    env.producer.flush(30)
    return ids


def fill_lanes(env: Env, counts: dict[str, int]) -> dict[str, list[str]]:
    """Render and route a backlog into the lanes before any dispatch worker runs."""
    env.workers.add("render")
    env.workers.add("route")
    ids = {p: produce(env, n, p, p[0]) for p, n in counts.items()}
    boot = env.settings.kafka.bootstrap
    assert wait_until(
        lambda: all(
            end_offsets(boot, env.topic(f"email.dispatch.{p}"), PARTITIONS) >= n
            for p, n in counts.items()
        ),
        timeout=120,
        interval=0.5,
    ), "the lanes did not fill"
    return ids
