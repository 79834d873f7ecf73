"""Retries, poison, crashes, replays and double intake: nothing lost, nothing sent twice."""

from __future__ import annotations

import random
import signal
import time
from collections import Counter
from typing import Any

import pytest
from confluent_kafka import ConsumerGroupTopicPartitions, TopicPartition
from confluent_kafka.admin import AdminClient

from app.tools import burst
from app.tools.workers import wait_until
from tests.integration.conftest import Env
from tests.integration.test_pressure import PARTITIONS, fill_lanes, policy, produce, providers_env

pytestmark = pytest.mark.integration


def test_retries_back_off_without_blocking_the_partition(env: Env, own_sim: Any) -> None:
    sim = own_sim(
        fail_rules=[
            {"regex": "^twice@", "times": 2, "status": 500},
            {"regex": "^always@", "times": None, "status": 503},
        ]
    )
    env.workers.add("render")
    env.workers.add("route")
    env.workers.add(
        "dispatch",
        **providers_env(
            policy(
                "sim",
                sim.url,
                breaker_min_requests=10_000,
                retry_backoff_base_s=2.0,
                retry_backoff_cap_s=4.0,
            )
        ),
    )
    assert env.workers.wait_ready(env.settings.kafka_bootstrap, env.ns)
    observer = env.observe()
    special = []
    for who in ("twice", "always"):
        event_id = f"{env.ns}-{who}"
        special.append(event_id)
        env.produce(
            event_id.encode(),
            burst.encode(
                "good",
                {
                    "event_id": event_id,
                    "template": "password_reset",
                    "priority": "normal",
                    "to": f"{who}@example.com",
                    "data": env.samples["password_reset"],
                    "source": "t",
                },
                env.serde,
                env.topic("email.raw-events"),
                use_avro=False,
            ),
        )
    others = produce(env, 300, "normal", "o")
    tally = observer.wait_for(302, timeout=120, check=env.workers.check_alive)
    assert tally.done == 302
    twice = tally.sent[special[0]]
    assert twice.attempts == 3  # two failed attempts, then the send
    always = tally.dead[special[1]]
    assert len(always.history) == 3 and always.reason == "provider_unavailable"
    assert [a.retriable for a in always.history] == [True, True, True]
    assert sim.client.stats(series=False)["by_status"].get("500") == 2
    assert sim.client.stats(series=False)["by_status"].get("503") == 3
    # the rest of the partition did not wait for the backoff (>= 2 s + >= 1 s)
    slowest_other = max(tally.sent[o].time_to_send_ms for o in others)
    print(f"slowest other {slowest_other:.0f} ms, retried one {twice.time_to_send_ms:.0f} ms")
    assert slowest_other < twice.time_to_send_ms
    assert Counter(e["key"] for e in sim.entries())[special[0]] == 1


def test_one_percent_of_each_poison_leaves_the_good_unaffected(env: Env) -> None:
    for stage in ("render", "route", "dispatch"):
        env.workers.add(stage)
    assert env.workers.wait_ready(env.settings.kafka_bootstrap, env.ns)
    observer = env.observe()
    n = 2800  # every 14th event bad: 7 kinds, each 1% of the run
    events = list(
        burst.events(
            n, env.serde, env.topic("email.raw-events"), env.samples, prefix=env.ns, bad_every=14
        )
    )
    started = time.monotonic()
    for e in events:
        env.produce(e.key, e.value)
    env.producer.flush(30)
    tally = observer.wait_for(n, timeout=180, check=env.workers.check_alive)
    elapsed = time.monotonic() - started
    assert tally.done == n
    twice = {
        i: (tally.dead[i].stage, tally.dead[i].reason) for i, c in tally.dead_seen.items() if c > 1
    }
    assert tally.dead_records == len(tally.dead), f"dead letters written twice: {twice}"
    kinds = Counter(e.kind for e in events if e.kind != "good")
    assert set(kinds) == set(burst.BAD_KINDS) and min(kinds.values()) >= n // 100 - 1
    for e in events:
        if e.kind == "good":
            assert e.event_id in tally.sent
            continue
        dl = tally.dead[e.event_id]
        assert dl.reason == e.expect and dl.message and dl.error_class
        assert dl.original_offset >= 0 and dl.dead_at > 0 and dl.payload
        if e.kind not in ("undecodable", "unknown_schema_id", "schema_violation"):
            assert dl.template and dl.source == "demo-shop"
        if e.kind == "provider_rejection":
            assert dl.provider and len(dl.history) == 1 and not dl.retriable
    good = sum(1 for e in events if e.kind == "good")
    print(
        f"{good} good events delivered in {elapsed:.1f} s ({good / elapsed:.0f}/s) "
        f"beside {n - good} poison ones"
    )


def test_double_intake_sends_once(env: Env) -> None:
    for stage in ("render", "route", "dispatch"):
        env.workers.add(stage)
    observer = env.observe()
    events = list(
        burst.events(1000, env.serde, env.topic("email.raw-events"), env.samples, prefix=env.ns)
    )
    for _ in range(2):
        for e in events:
            env.produce(e.key, e.value)
    env.producer.flush(30)
    tally = observer.wait_for(1000, timeout=120, check=env.workers.check_alive)
    assert wait_until(lambda: env.workers.workers and True, 1)
    time.sleep(3)  # let the second copies pass the ledger
    assert len(tally.sent) == 1000
    entries = env.ledger()
    assert len(entries) == 1000 and all(e["requests"] == 1 for e in entries)


def reset_to_earliest(env: Env, group: str, topics: list[str]) -> None:
    admin = AdminClient({"bootstrap.servers": env.settings.kafka_bootstrap})
    tps = [TopicPartition(t, p, 0) for t in topics for p in range(PARTITIONS)]
    for future in admin.alter_consumer_group_offsets(
        [ConsumerGroupTopicPartitions(group, tps)]
    ).values():
        future.result(timeout=30)


def test_replay_from_earliest_calls_no_provider(env: Env) -> None:
    ids = fill_lanes(env, {"normal": 500, "bulk": 500})
    worker = env.workers.add("dispatch")
    observer = env.observe()
    tally = observer.wait_for(1000, timeout=120, check=env.workers.check_alive)
    assert len(tally.sent) == 1000
    time.sleep(4)  # offsets and the ledger's changelog committed
    before = sum(e["requests"] for e in env.ledger())
    worker.stop()
    lanes = [env.topic(f"email.dispatch.{p}") for p in ("critical", "normal", "bulk")]
    reset_to_earliest(env, f"{env.ns}-dispatch", lanes)
    env.workers.add("dispatch")
    assert env.workers.wait_ready(env.settings.kafka_bootstrap, env.ns)
    time.sleep(10)  # time to re-read all 1000 messages
    after = sum(e["requests"] for e in env.ledger())
    print(f"provider requests before the replay {before}, after {after}")
    assert after == before == 1000
    assert len(ids["normal"]) + len(ids["bulk"]) == 1000


def test_sigkill_during_a_run_loses_nothing_and_duplicates_no_email(env: Env) -> None:
    n = 20_000
    env.workers.add("render")
    env.workers.add("route")
    worker = env.workers.add("dispatch")
    observer = env.observe()
    events = list(
        burst.events(
            n, env.serde, env.topic("email.raw-events"), env.samples, prefix=env.ns, bad_every=500
        )
    )
    for e in events:
        env.produce(e.key, e.value)
    env.producer.flush(60)
    rng = random.Random(5)
    for kill in range(5):
        target = (kill + 1) * n // 7 + rng.randint(0, n // 20)
        wait_until(lambda t=target: observer.snapshot().done >= t, timeout=120, interval=0.1)
        worker.stop(signal.SIGKILL)
        worker = env.workers.add("dispatch")
    tally = observer.wait_for(n, timeout=240, check=env.workers.check_alive)
    assert tally.done == n, f"{n - tally.done} events neither sent nor dead"
    assert not set(tally.sent) & set(tally.dead)
    entries = env.ledger()
    keys = Counter(e["key"] for e in entries)
    assert all(c == 1 for c in keys.values())  # one accepted email per event id
    re_requests = sum(e["requests"] - 1 for e in entries)
    print(
        f"20,000 events, 5 SIGKILLs: {len(tally.sent)} sent, {len(tally.dead)} dead, "
        f"{tally.sent_records - len(tally.sent)} duplicate results, {re_requests} "
        "idempotent re-requests (same key, deduplicated by the provider)"
    )
    assert len(entries) == len(tally.sent)
