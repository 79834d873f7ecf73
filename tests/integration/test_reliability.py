"""Retries, poison, crashes, replays and double intake: nothing lost, nothing sent twice."""

from __future__ import annotations

import os
import random
import signal
import time
from collections import Counter
from typing import Any

import pytest
from confluent_kafka import ConsumerGroupTopicPartitions, TopicPartition
from confluent_kafka.admin import AdminClient

from harness import burst
from harness.observe import end_offsets
from harness.workers import wait_until
from tests.plugins.providers import MODES, consumed, lane_partition, provider
from tests.plugins.stack import Env
from tests.plugins.traffic import PARTITIONS, produce, providers_env

pytestmark = pytest.mark.integration


@pytest.mark.parametrize("mode", MODES)
def test_retries_back_off_without_blocking_the_partition(
    env: Env, own_sim: Any, mode: str
) -> None:
    prov = provider(
        env,
        own_sim,
        mode,
        fail_rules=[
            {"regex": "^twice@", "times": 2, "status": 500},
            {"regex": "^always@", "times": None, "status": 503},
        ],
    )
    env.workers.add("render")
    env.workers.add("route")
    env.workers.add(
        "dispatch",
        **providers_env(
            prov.policy(
                "sim",
                breaker_min_requests=10_000,
                retry_backoff_base_s=2.0,
                retry_backoff_cap_s=4.0,
                retry_min_failing_s=0,  # dead after 3 attempts (default: 15 min of failing)
            )
        ),
    )
    assert env.workers.wait_ready(env.settings.kafka.bootstrap, env.ns)
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
    records = prov.records()
    by_key: dict[str, list[dict[str, Any]]] = {}
    for r in records:
        by_key.setdefault(r["key"], []).append(r)
    assert [r["status"] for r in by_key[special[0]]] == [500, 500, 202]
    assert [r["status"] for r in by_key[special[1]]] == [503, 503, 503]
    # The partition was not blocked while "twice" waited for its retries: messages of
    # its lane partition were sent between its first failure and its final attempt.
    # (A worker that held the partition for the backoff sends none of them.)
    first_fail, final = by_key[special[0]][0]["seq"], by_key[special[0]][-1]["seq"]
    part = lane_partition(special[0], PARTITIONS)
    same = {o for o in others if lane_partition(o, PARTITIONS) == part}
    between = [
        r
        for r in records
        if r["key"] in same and r["outcome"] == "accepted" and first_fail < r["seq"] < final
    ]
    print(
        f"{mode}: {len(between)} of the {len(same)} others of lane partition {part} sent "
        "while the retried one backed off"
    )
    assert between, f"partition {part} sent nothing while a message of it backed off"
    report = prov.check_sent_once(set(others) | {special[0]})
    print(report.describe())
    report.assert_clean()
    assert set(report.requests) == set(others) | set(special)
    assert all(report.requests[o] == 1 for o in others)


def test_one_percent_of_each_poison_leaves_the_good_unaffected(env: Env) -> None:
    for stage in ("render", "route", "dispatch"):
        env.workers.add(stage)
    assert env.workers.wait_ready(env.settings.kafka.bootstrap, env.ns)
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


LANES = [f"email.dispatch.{p}" for p in ("critical", "normal", "bulk")]


def wait_pipeline_consumed(env: Env, stages: tuple[str, ...], timeout: float = 120) -> None:
    """Wait (with a deadline) until each stage's group committed the end of its inputs,
    in pipeline order: every copy has been read and acted on."""
    by_priority = ("critical", "normal", "bulk")  # issue 14: a topic per priority too
    inputs = {
        "render": ["email.raw-events", *(f"email.raw-events.{p}" for p in by_priority)],
        "route": ["email.rendered", *(f"email.rendered.{p}" for p in by_priority)],
        "dispatch": LANES,
    }
    for stage in stages:
        topics = [env.topic(t) for t in inputs[stage]]
        group = env.settings.app_id(stage)

        def done(g: str = group, t: list[str] = topics) -> bool:
            return consumed(env, g, t, PARTITIONS)

        assert wait_until(done, timeout, interval=0.5), f"{stage} did not consume its input"


@pytest.mark.parametrize("mode", MODES)
def test_double_intake_sends_once(env: Env, own_sim: Any, mode: str) -> None:
    prov = provider(env, own_sim, mode)
    env.workers.add("render")
    env.workers.add("route")
    env.workers.add("dispatch", **prov.worker_env())
    observer = env.observe()
    events = list(
        burst.events(1000, env.serde, env.topic("email.raw-events"), env.samples, prefix=env.ns)
    )
    for _ in range(2):
        for e in events:
            env.produce(e.key, e.value)
    env.producer.flush(30)
    tally = observer.wait_for(1000, timeout=120, check=env.workers.check_alive)
    assert end_offsets(env.settings.kafka.bootstrap, env.topic("email.raw-events"), 4) == 2000
    wait_pipeline_consumed(env, ("render", "route", "dispatch"))  # the second copies too
    assert len(tally.sent) == 1000
    report = prov.check_sent_once({e.event_id for e in events})
    print(f"{mode}: {report.describe()}")
    report.assert_clean()
    assert set(report.requests.values()) == {1}  # the second copy never reached the provider


def reset_to_earliest(env: Env, group: str, topics: list[str]) -> None:
    admin = AdminClient({"bootstrap.servers": env.settings.kafka.bootstrap})
    tps = [TopicPartition(t, p, 0) for t in topics for p in range(PARTITIONS)]
    for future in admin.alter_consumer_group_offsets(
        [ConsumerGroupTopicPartitions(group, tps)]
    ).values():
        future.result(timeout=30)


REPLAYED = 400  # messages in the lanes, all sent once, then read again from the start


@pytest.mark.parametrize("mode", MODES)
def test_replay_from_earliest_calls_no_provider(env: Env, own_sim: Any, mode: str) -> None:
    prov = provider(env, own_sim, mode)
    env.workers.add("render")
    env.workers.add("route")
    worker = env.workers.add("dispatch", **prov.worker_env())
    assert env.workers.wait_ready(env.settings.kafka.bootstrap, env.ns)  # all start at once
    observer = env.observe()
    ids = {p: produce(env, REPLAYED // 2, p, p[0]) for p in ("normal", "bulk")}
    tally = observer.wait_for(REPLAYED, timeout=120, check=env.workers.check_alive)
    assert len(tally.sent) == REPLAYED
    wait_pipeline_consumed(env, ("dispatch",))  # offsets (after the ledger's marks) committed
    before = prov.records()
    worker.stop()
    lanes = [env.topic(t) for t in LANES]
    group = env.settings.app_id("dispatch")
    reset_to_earliest(env, group, lanes)
    assert not consumed(env, group, lanes, PARTITIONS)  # the reset took
    env.workers.add("dispatch", **prov.worker_env())
    # the new worker re-read all the messages: its group committed their end again
    wait_pipeline_consumed(env, ("dispatch",))
    after = prov.records()
    print(f"{mode}: provider requests before the replay {len(before)}, after {len(after)}")
    assert len(before) == REPLAYED
    assert after == before  # not one request during the replay
    report = prov.check_sent_once(set(ids["normal"]) | set(ids["bulk"]))
    report.assert_clean()


KILLS = 5
STALL_S = 120.0  # no event done for this long: the run is stuck


def until_progress_stops(count: Any, target: int, stall_s: float) -> bool:
    """Wait until ``count()`` reaches ``target`` (True), or has not moved for
    ``stall_s`` (False)."""
    last = count()
    while last < target:
        if not wait_until(lambda seen=last: count() != seen, timeout=stall_s, interval=0.2):
            return False
        last = count()
    return True


def sigkill_run(
    env: Env,
    own_sim: Any,
    mode: str,
    n: int = 20_000,
    kills: int = KILLS,
    dispatch_env: dict[str, str] | None = None,
) -> tuple[Any, Any, int]:
    """``n`` events, the dispatch worker SIGKILLed ``kills`` times; the observer's tally
    and the simulator's request log once every event is sent or dead. ``dispatch_env``:
    more settings of the dispatch workers."""
    prov = provider(env, own_sim, mode)
    env.workers.add("render")
    env.workers.add("route")
    extra = {**UNRECORDED_ENV, **(dispatch_env or {})}
    worker = env.workers.add("dispatch", **prov.worker_env(), **extra)
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
    for kill in range(kills):
        target = (kill + 1) * n // (kills + 2) + rng.randint(0, n // 20)
        # a deadline on progress, not on the run: the machine may be shared
        assert until_progress_stops(lambda: observer.snapshot().done, target, STALL_S)
        worker.stop(signal.SIGKILL)
        worker = env.workers.add("dispatch", **prov.worker_env(), **extra)
    until_progress_stops(lambda: observer.snapshot().done, n, STALL_S)
    tally = observer.wait_for(n, timeout=60, check=env.workers.check_alive)
    report = prov.check_sent_once()
    both = set(tally.sent) & set(tally.dead)
    print(
        f"{mode}, {n} events, {kills} SIGKILLs: {len(tally.sent)} sent, {len(tally.dead)} dead, "
        f"{len(both)} both sent and dead (reasons "
        f"{dict(Counter((tally.dead[i].stage, tally.dead[i].reason) for i in both))}), "
        f"{tally.sent_records - len(tally.sent)} duplicate results; {report.describe()}"
    )
    return tally, report, n


#: The default run's dispatch workers: a killed worker's partitions move after the
#: session timeout, 6 s (the broker's minimum) instead of 10 s; the long runs keep 10 s.
SHORT_SESSION_ENV = {"SPILLWAY_SESSION_TIMEOUT_S": "6"}

#: max_unrecorded of the dispatch workers in the SIGKILL runs (the default is 256): the
#: bound on requests after acceptance per kill that the keyed runs assert
UNRECORDED = 64
UNRECORDED_ENV = {"SPILLWAY_DISPATCH_MAX_UNRECORDED": str(UNRECORDED)}


def check_idempotent_run(
    env: Env, own_sim: Any, n: int, kills: int, dispatch_env: dict[str, str] | None = None
) -> None:
    """Provider with idempotency keys: what was in flight at a kill is resent with the same
    key, so nothing is lost and no email is delivered twice, and those requests after
    acceptance stay within the honest bound (at most max_in_flight per kill: the window
    between the provider's acceptance and Kafka's ack of the ledger's ``accepted`` mark)."""
    tally, report, n = sigkill_run(env, own_sim, "idempotent", n, kills, dispatch_env)
    both = set(tally.sent) & set(tally.dead)
    assert not both, f"{len(both)} events both sent and dead"
    assert tally.done == n, f"{n - tally.done} events neither sent nor dead"
    assert not report.twice_delivered, report.describe()  # one delivered email per event id
    assert set(report.deliveries) == set(tally.sent)
    # The honest bound (docs/guarantees.md): a request after acceptance only for an email
    # the provider accepted whose acceptance Kafka had not acknowledged at a kill; the
    # worker holds an ``unrecorded`` place until then, so at most max_unrecorded per kill.
    bound = kills * UNRECORDED
    assert report.after_count <= bound, report.describe()


@pytest.mark.timeout(1200)
def test_sigkill_during_a_run_loses_nothing_and_delivers_no_email_twice(
    env: Env, own_sim: Any
) -> None:
    """The default run's size (8,000 events, 3 SIGKILLs; the full 20,000 x 5 is in the
    long suite, it takes 7 to 12 min on a loaded 2-core machine). The full run passed
    twice in a row (114 and 124 requests after acceptance, bound 320) once the lanes'
    commits advance (lane admission, issue 12) and the ledger records the acceptance
    before the SendResult; it had lost 94 of 20,000 once."""
    check_idempotent_run(env, own_sim, 8_000, 3, SHORT_SESSION_ENV)


@pytest.mark.long
@pytest.mark.timeout(2400)
@pytest.mark.skipif(
    not os.environ.get("SPILLWAY_LONG_TESTS"), reason="long suite: SPILLWAY_LONG_TESTS=1"
)
def test_sigkill_full_run_loses_nothing_and_delivers_no_email_twice(
    env: Env, own_sim: Any
) -> None:
    """20,000 events, 5 SIGKILLs (long suite)."""
    check_idempotent_run(env, own_sim, 20_000, KILLS)


@pytest.mark.long
@pytest.mark.timeout(2400)
@pytest.mark.skipif(
    not os.environ.get("SPILLWAY_LONG_TESTS"), reason="long suite: SPILLWAY_LONG_TESTS=1"
)
@pytest.mark.parametrize("mode", MODES)
def test_sigkill_makes_no_request_for_an_accepted_email(
    env: Env, own_sim: Any, mode: str
) -> None:
    """Issue 17's strict target: 0 requests after acceptance in both modes (long suite).

    Without keys it passes (two runs: 0 delivered twice, 0 both sent and parked, 0
    requests after acceptance; before: 117 delivered twice, 273 both). With keys it cannot
    reach 0 without a transaction spanning the provider: a request on the wire at a kill
    (or answered less than one broker round trip before it) is sent again with its key:
    114 and 124 in two runs; the bound is asserted in the default-run test above
    (docs/guarantees.md)."""
    tally, report, n = sigkill_run(env, own_sim, mode)
    assert tally.done == n, f"{n - tally.done} events neither sent nor dead"
    assert not report.twice_delivered, report.describe()
    assert report.after_count == 0, report.describe()
    if mode == "no_idempotency":
        # what was in flight at a kill may be parked as ambiguous, never sent as well
        both = set(tally.sent) & set(tally.dead)
        assert not both, f"{len(both)} events both sent and dead"
