"""A poison corpus on the real ``email.raw-events`` (issue 13): each poison record ends
as exactly one dead letter with its reason while the good records around it are
delivered, and no worker stops.

The corpus holds every record that used to halt a stage: a tombstone (crash-looped
the render worker), ``created_at`` of 10**20, a lone surrogate, a rendered email
larger than a Kafka record, header values a provider refuses, an Avro record nesting
10,000 arrays (a segmentation fault in fastavro's C reader) and a 900 kB sender of
blanks (hours in a quadratic regex).
"""

from __future__ import annotations

import json
import struct
import time
from collections import Counter
from typing import Any

import pytest

from app.models import RawEvent
from harness.observe import end_offsets
from harness.workers import wait_until
from tests.plugins.providers import consumed
from tests.plugins.stack import Env
from tests.plugins.traffic import PARTITIONS

pytestmark = pytest.mark.integration


def deep_avro(schema_id: int, event_id: str, depth: int) -> bytes:
    """A framed raw event whose data nests ``depth`` arrays (3 bytes per level)."""

    def s(t: str) -> bytes:
        b = t.encode()
        return bytes([len(b) * 2]) + b

    body = s(event_id) + s("password_reset") + s("a@b.example") + b"\x02"
    body += b"\x02" + s("x") + b"\x0a\x02" * depth + b"\x00" + b"\x00" * depth + b"\x00"
    body += b"\x00" + s("t") + b"\x00" * 4
    return struct.pack(">bI", 0, schema_id) + body


def poison_corpus(env: Env) -> list[tuple[str, bytes, bytes | None, str]]:
    """(event id the dead letter carries, key, value, expected reason)."""
    raw_topic = env.topic("email.raw-events")
    raw_id = env.serde.subjects[raw_topic].schema_id
    reset = env.samples["password_reset"]
    order = env.samples["order_confirmation"]

    def event(i: int, **over: Any) -> dict[str, Any]:
        e = {
            "event_id": f"{env.ns}-p{i}",
            "template": "password_reset",
            "to": "ann@example.com",
            "priority": "critical",
            "data": reset,
            "source": "poison",
        }
        e.update(over)
        return e

    def js(e: dict[str, Any]) -> bytes:
        return json.dumps(e, allow_nan=True).encode()

    big = dict(order)
    big["order"] = dict(order["order"])
    line = order["order"]["lines"][0]
    big["order"]["lines"] = [dict(line, name="x" * 2000) for _ in range(250)]
    cases: list[tuple[bytes | None, str, dict[str, Any] | None]] = [
        (None, "empty_value", None),
        (b"", "empty_value", None),
        (js(event(2, created_at=10**20)), "schema_violation", None),
        (js(event(3, data={**reset, "user": {"name": "\ud800"}})), "invalid_field", None),
        (js(event(4, template="order_confirmation", data=big)), "too_large", None),
        (deep_avro(raw_id, f"{env.ns}-p5", 10_000), "undecodable", None),
        (b'{"data": ' + b"[" * 100_000 + b"]" * 100_000 + b"}", "undecodable", None),
        (js(event(7, event_id=f"é-{env.ns}-p7")), "invalid_header", {"id": f"é-{env.ns}-p7"}),
        (js(event(8, from_address="Jane\u2028Doe <j@example.com>")), "invalid_header", None),
        (struct.pack(">bI", 0, 987_654) + b"\x02x", "undecodable", None),
        (b"\x7f garbage", "undecodable", None),
        (js(event(11, to="jörg@example.com")), "invalid_header", None),
        (b'{"event_id": "x", "created_at": NaN}', "schema_violation", None),
        (js(event(13, to=42)), "schema_violation", None),
        (js(event(14, data={}, data_json='{"user": "\\ud800"}')), "invalid_field", None),
        (js(event(15, event_id="e\r\nBcc: x@example.com")), "invalid_header", {
            "id": "e\r\nBcc: x@example.com"
        }),
        (js(event(16, from_address="a" + " " * 900_000 + "x")), "invalid_field", None),
    ]
    corpus = []
    for i, (value, reason, extra) in enumerate(cases):
        key = f"{env.ns}-p{i}".encode()
        dead_id = (extra or {}).get("id", key.decode())
        corpus.append((dead_id, key, value, reason))
    return corpus


#: render's input topics (issue 14: one raw topic per priority besides email.raw-events)
RENDER_INPUTS = [
    "email.raw-events",
    *(f"email.raw-events.{p}" for p in ("critical", "normal", "bulk")),
]


def test_each_poison_record_is_one_dead_letter_and_the_good_ones_are_delivered(
    env: Env,
) -> None:
    for stage in ("render", "route", "dispatch"):
        env.workers.add(stage)
    assert env.workers.wait_ready(env.settings.kafka.bootstrap, env.ns)
    observer = env.observe()
    raw_topic = env.topic("email.raw-events")
    poison = poison_corpus(env)
    good: list[str] = []
    n_good_between = 10
    for i, (_, key, value, _) in enumerate(poison):
        for j in range(n_good_between):
            event_id = f"{env.ns}-g{i}-{j}"
            good.append(event_id)
            record = RawEvent(
                event_id=event_id,
                template="password_reset",
                to="ann@example.com",
                priority="critical",
                data=env.samples["password_reset"],
                source="good",
            )
            value_good = (
                env.serde.encode(raw_topic, record)
                if j % 2
                else json.dumps(record.asdict()).encode()
            )
            env.produce(event_id.encode(), value_good)
        env.produce(key, value)  # type: ignore[arg-type]
    env.producer.flush(30)
    total = len(good) + len(poison)
    started = time.monotonic()
    tally = observer.wait_for(total, timeout=180, check=env.workers.check_alive)
    elapsed = time.monotonic() - started
    # A second dead letter for the same record would come from render handling it again:
    # once render's group committed the end of its inputs (it flushes its output first)
    # and the observer read email.dead to its end, every dead letter there is counted.
    boot = env.settings.kafka.bootstrap
    inputs = [env.topic(t) for t in RENDER_INPUTS]
    assert wait_until(
        lambda: consumed(env, env.settings.app_id("render"), inputs, PARTITIONS),
        timeout=60,
        interval=0.5,
    ), "render did not commit the end of its input"
    dead_end = end_offsets(boot, env.topic("email.dead"), PARTITIONS)
    assert wait_until(lambda: observer.snapshot().dead_records >= dead_end, timeout=30)
    tally = observer.snapshot()
    env.workers.check_alive()  # no worker stopped (a crash exits with 70)
    assert all(w.alive() for w in env.workers.workers)

    missing = [g for g in good if g not in tally.sent]
    assert not missing, f"{len(missing)} good events not delivered: {missing[:5]}"
    got = {
        dead_id: (tally.dead[dead_id].reason if dead_id in tally.dead else None)
        for dead_id, _, _, _ in poison
    }
    want = {dead_id: reason for dead_id, _, _, reason in poison}
    assert got == want
    assert tally.dead_records == len(poison), f"dead letters: {tally.reasons()}"
    assert all(c == 1 for c in tally.dead_seen.values())
    for dead_id, _, value, _ in poison:
        dl = tally.dead[dead_id]
        assert dl.stage == "render" and dl.payload == (value or b"")
    print(
        f"poison corpus: {len(poison)} poison records -> {tally.dead_records} dead letters "
        f"({dict(Counter(d.reason for d in tally.dead.values()))}); {len(tally.sent)} of "
        f"{len(good)} good events delivered in {elapsed:.1f} s; workers alive"
    )
