"""The spine end to end: real Kafka, real registry, one worker process per stage."""

from __future__ import annotations

import time
from collections import Counter

import pytest
from confluent_kafka.schema_registry.avro import AvroSerializer
from confluent_kafka.serialization import MessageField, SerializationContext

from app.serde import SCHEMAS_DIR, wrap_json
from harness import burst
from harness.observe import end_offsets
from harness.workers import wait_until
from tests.plugins.stack import Env

pytestmark = pytest.mark.integration


def test_thousand_mixed_events_end_in_sent_or_dead(env: Env) -> None:
    for stage in ("render", "route", "dispatch"):
        env.workers.add(stage)
    observer = env.observe()
    events = list(
        burst.events(
            1000, env.serde, env.topic("email.raw-events"), env.samples, prefix=env.ns, bad_every=40
        )
    )
    bad = [e for e in events if e.kind != "good"]
    assert len(bad) >= 20 and len({e.kind for e in bad}) == len(burst.BAD_KINDS)
    for e in events:
        env.produce(e.key, e.value)
    env.producer.flush(30)

    tally = observer.wait_for(1000, timeout=180, check=env.workers.check_alive)
    assert tally.done == 1000, f"only {tally.done} of 1000 events ended (sent+dead)"
    assert not tally.dead_without_id
    assert not set(tally.sent) & set(tally.dead), "an event is both sent and dead"
    assert tally.sent_records == len(tally.sent), "an event was sent twice"
    for e in events:
        if e.expect == "sent":
            assert e.event_id in tally.sent, f"{e.event_id} was not sent"
        else:
            dl = tally.dead[e.event_id]
            assert dl.reason == e.expect, f"{e.kind}: {dl.reason}: {dl.message}"
            assert dl.message
            if e.kind == "provider_rejection":
                assert dl.stage == "dispatch" and dl.provider == "sim-http"
                assert dl.original_topic.startswith(env.topic("email.dispatch."))
            else:
                assert dl.stage == "render"
                assert dl.original_topic == env.topic("email.raw-events")
                assert dl.payload == e.value
    ledger = env.ledger()
    assert len(ledger) == len(tally.sent)
    assert all(entry["requests"] == 1 for entry in ledger), "the simulator saw a duplicate"
    assert all(r.time_to_send_ms > 0 for r in tally.sent.values())


def test_critical_overtakes_earlier_bulk(env: Env) -> None:
    env.workers.add("render")
    env.workers.add("route")
    observer = env.observe()
    bulk = [(f"{env.ns}-b{i}", "bulk", "newsletter") for i in range(800)]
    critical = [(f"{env.ns}-c{i}", "critical", "password_reset") for i in range(50)]
    for event_id, priority, template in bulk + critical:  # bulk first, then critical
        value = burst.encode(
            "good",
            {
                "event_id": event_id,
                "template": template,
                "priority": priority,
                "to": f"{event_id}@example.com",
                "data": env.samples[template],
                "source": "t",
            },
            env.serde,
            env.topic("email.raw-events"),
            use_avro=True,
        )
        env.produce(event_id.encode(), value)
    env.producer.flush(30)
    lanes = {p: env.topic(f"email.dispatch.{p}") for p in ("bulk", "critical")}
    assert wait_until(
        lambda: (
            end_offsets(env.settings.kafka.bootstrap, lanes["bulk"], 4) == 800
            and end_offsets(env.settings.kafka.bootstrap, lanes["critical"], 4) == 50
        ),
        timeout=120,
    ), "the lanes did not fill"
    env.workers.add("dispatch")  # a backlog in both lanes, bulk's older
    tally = observer.wait_for(850, timeout=180, check=env.workers.check_alive)
    assert tally.done == 850
    order = sorted(env.ledger(), key=lambda e: e["received_at"])
    last_critical = max(i for i, e in enumerate(order) if "-c" in e["key"])
    bulk_before = sum(1 for e in order[:last_critical] if "-b" in e["key"])
    assert bulk_before <= 5, f"{bulk_before} bulk emails went out before the last critical one"


def test_confluent_serializer_producer_reaches_the_provider(env: Env) -> None:
    """As a producer in another language would: the stock Confluent Avro serializer."""
    env.workers.add("all")
    topic = env.topic("email.raw-events")
    serializer = AvroSerializer(env.serde.registry, (SCHEMAS_DIR / "raw_event.avsc").read_text())
    event_id = f"{env.ns}-confluent"
    value = serializer(
        {
            "event_id": event_id,
            "template": "password_reset",
            "to": "eve@example.com",
            "priority": "critical",
            "data": {k: wrap_json(v) for k, v in env.samples["password_reset"].items()},
            "data_json": None,
            "source": "java-shop",
            "template_version": None,
            "locale": None,
            "from_address": None,
            "created_at": int(time.time() * 1000),
        },
        SerializationContext(topic, MessageField.VALUE),
    )
    env.produce(event_id.encode(), value)
    env.producer.flush(10)
    assert wait_until(
        lambda: any(e["key"] == event_id for e in env.ledger()), timeout=90, interval=0.5
    ), "the email did not reach the simulator"
    [entry] = [e for e in env.ledger() if e["key"] == event_id]
    assert entry["to"] == "eve@example.com" and entry["custom_args"]["source"] == "java-shop"


def test_smtp_adapter_delivers_to_the_sink(env: Env) -> None:
    env.workers.add("all", SPILLWAY_PROVIDER="smtp", SPILLWAY_PROVIDER_NAME="sink-smtp")
    observer = env.observe()
    events = list(
        burst.events(30, env.serde, env.topic("email.raw-events"), env.samples, prefix=env.ns)
    )
    for e in events:
        env.produce(e.key, e.value)
    env.producer.flush(10)
    tally = observer.wait_for(30, timeout=120, check=env.workers.check_alive)
    assert len(tally.sent) == 30
    assert Counter(r.provider for r in tally.sent.values()) == {"sink-smtp": 30}
    received = [
        e for e in env.sink.ledger(limit=100_000)["entries"] if str(e["key"]).startswith(env.ns)
    ]
    assert len(received) == 30 and all(e["count"] == 1 for e in received)
