"""Traffic for the integration tier: provider policies for a worker's environment, raw
events for the whole pipeline (``produce``), and a backlog written straight into the
dispatch lanes (``fill_lanes``)."""

from __future__ import annotations

import json
import time
from typing import Any

from confluent_kafka import Producer

from app.models import DispatchRequest
from app.stages.route import routing_headers
from app.templating import TemplateStore
from harness import burst
from harness.observe import end_offsets
from harness.topics import create_pipeline_topics
from tests.plugins.stack import Env

PARTITIONS = 4


def policy(name: str, url: str, **over: Any) -> dict[str, Any]:
    # these simulators run in their default mode, which honours idempotency keys (24 h)
    return {"name": name, "url": url, "idempotency_ttl_s": 86_400, **over}


def providers_env(*policies: dict[str, Any]) -> dict[str, str]:
    return {"SPILLWAY_PROVIDERS": json.dumps(list(policies))}


TEMPLATES = {"critical": "password_reset", "normal": "order_confirmation", "bulk": "newsletter"}


def produce(env: Env, n: int, priority: str, prefix: str) -> list[str]:
    template = TEMPLATES[priority]
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


def create_topics(env: Env) -> None:
    """The namespace's pipeline topics before any worker starts (as ``bench.chaos``
    does); a worker of the test's may have made some already."""
    settings = env.settings
    assert create_pipeline_topics(settings.kafka.bootstrap, settings, exist_ok=True)


def fill_lanes(
    env: Env, counts: dict[str, int], *, pipeline: bool = False
) -> dict[str, list[str]]:
    """A backlog in the dispatch lanes before any dispatch worker runs: dispatch requests
    written into each priority's lane as route writes them (the lane's schema, the
    routing headers, the key's murmur2 partition as aiokafka picks it), each template
    rendered by the product's TemplateStore from its sample data. Without render and
    route workers: their start-up (5-8 s) is not on the way. ``pipeline``: start render
    and route too, for raw events the test produces later (``produce``)."""
    create_topics(env)
    if pipeline:
        env.workers.add("render")
        env.workers.add("route")
    store = TemplateStore(env.settings.templates_dir)
    producer = Producer(
        {
            "bootstrap.servers": env.settings.kafka.bootstrap,
            "linger.ms": 5,
            "acks": "all",
            "partitioner": "murmur2_random",  # aiokafka's (and Java's) partitioner
        }
    )
    ids: dict[str, list[str]] = {}
    now = int(time.time() * 1000)
    for priority, n in counts.items():
        template = TEMPLATES[priority]
        parts = store.render(template, env.samples[template])
        lane = env.topic(f"email.dispatch.{priority}")
        ids[priority] = []
        for i in range(n):
            event_id = f"{env.ns}-{priority[0]}{i}"
            request = DispatchRequest(
                event_id=event_id,
                priority=priority,
                to=f"{priority[0]}{i}@example.com",
                from_address=env.settings.default_sender,
                subject=parts.subject,
                html=parts.html,
                text=parts.text,
                template=parts.template,
                template_version=parts.template_version,
                source="t",
                accepted_at=now,
                rendered_at=now,
            )
            value = env.serde.encode(lane, request)
            headers: list[tuple[str, str | bytes | None]] = list(
                routing_headers(priority, event_id, parts.template)
            )
            while True:
                try:
                    producer.produce(lane, key=event_id.encode(), value=value, headers=headers)
                    break
                except BufferError:
                    producer.poll(0.1)
            ids[priority].append(event_id)
    assert producer.flush(30) == 0, "the lanes were not written"
    boot = env.settings.kafka.bootstrap
    for priority, n in counts.items():
        assert end_offsets(boot, env.topic(f"email.dispatch.{priority}"), PARTITIONS) == n
    return ids
