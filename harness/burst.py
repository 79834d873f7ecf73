"""A mixed burst of raw events, with known-bad ones of every kind, and what should
become of each: used by the demo, the integration tests and the benchmark.

Mix: 5% critical password resets, 60% normal order confirmations (with order
lines), 35% bulk newsletters; half Avro (Confluent framing), half JSON.
"""

from __future__ import annotations

import json
import random
import struct
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

from app.models import RawEvent
from app.serde import Serde

MIX = (
    ("critical", "password_reset", 0.05),
    ("normal", "order_confirmation", 0.60),
    ("bulk", "newsletter", 0.35),
)

#: kind of bad event -> the dead letter reason it must produce
BAD_KINDS: dict[str, str] = {
    "undecodable": "undecodable",
    "unknown_schema_id": "undecodable",
    "schema_violation": "schema_violation",
    "unknown_template": "unknown_template",
    "invalid_address": "invalid_field",
    "missing_variable": "render_error",
    "provider_rejection": "provider_rejected",  # the simulator rejects reject*@ addresses
}


@dataclass(frozen=True, slots=True)
class BurstEvent:
    event_id: str
    key: bytes
    value: bytes
    priority: str
    expect: str  # "sent" or the dead letter reason
    kind: str  # "good" or a BAD_KINDS key


def order_data(rng: random.Random, n: int) -> dict[str, Any]:
    lines: list[dict[str, Any]] = [
        {
            "sku": f"SKU-{rng.randint(1000, 9999)}",
            "name": f"Item {j + 1}",
            "qty": rng.randint(1, 4),
            "unit_price": round(rng.uniform(2, 80), 2),
        }
        for j in range(rng.randint(1, 5))
    ]
    total = round(sum(line["qty"] * line["unit_price"] for line in lines), 2)
    return {
        "customer": {"name": f"Customer {n}"},
        "order": {
            "id": f"SO-{n}",
            "lines": lines,
            "currency": "EUR",
            "total": total,
            "shipping_address": {"lines": [f"{n} Main Street", "10115 Berlin"]},
        },
        "shop": {"name": "Spillway Shop", "url": "https://shop.example"},
    }


def template_data(template: str, rng: random.Random, n: int, samples: dict[str, Any]) -> Any:
    if template == "order_confirmation":
        return order_data(rng, n)
    return samples[template]


def events(
    n: int,
    serde: Serde,
    raw_topic: str,
    samples: dict[str, dict[str, Any]],
    *,
    prefix: str = "ev",
    bad_every: int = 0,
    seed: int = 7,
    recipient_domain: str = "example.com",
) -> Iterator[BurstEvent]:
    """``n`` events; every ``bad_every``-th one is bad (cycling through BAD_KINDS)."""
    rng = random.Random(seed)
    bad_kinds = list(BAD_KINDS)
    bad_seen = 0
    weights = [w for _, _, w in MIX]
    for i in range(n):
        priority, template, _ = rng.choices(MIX, weights=weights)[0]
        event_id = f"{prefix}-{i}"
        data = template_data(template, rng, i, samples)
        event = {
            "event_id": event_id,
            "template": template,
            "priority": priority,
            "to": f"user{i}@{recipient_domain}",
            "data": data,
            "source": "demo-shop",
        }
        kind = "good"
        if bad_every and i % bad_every == bad_every - 1:
            kind = bad_kinds[bad_seen % len(bad_kinds)]
            bad_seen += 1
        value = encode(kind, event, serde, raw_topic, use_avro=i % 2 == 0)
        expect = "sent" if kind == "good" else BAD_KINDS[kind]
        yield BurstEvent(event_id, event_id.encode(), value, priority, expect, kind)


def encode(
    kind: str, event: dict[str, Any], serde: Serde, raw_topic: str, *, use_avro: bool
) -> bytes:
    if kind == "undecodable":
        return b"\x7f not an event " + event["event_id"].encode()
    if kind == "unknown_schema_id":
        return struct.pack(">bI", 0, 987_654) + b"\x02x"
    if kind == "schema_violation":
        event = {k: v for k, v in event.items() if k != "template"}
        return json.dumps(event).encode()
    if kind == "unknown_template":
        event = {**event, "template": "no_such_template"}
    elif kind == "invalid_address":
        event = {**event, "to": "not-an-address"}
    elif kind == "missing_variable":
        event = {**event, "data": {}}
    elif kind == "provider_rejection":
        event = {**event, "to": f"reject-{event['event_id']}@example.com"}
    if use_avro:
        return serde.encode(raw_topic, RawEvent(**event))
    return json.dumps(event).encode()
