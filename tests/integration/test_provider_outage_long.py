"""A 2-minute provider outage while one email arrives every 5 s (issue 13): every email
is delivered and none is dead. Real Kafka, real render/route/dispatch workers with the
default provider policy (retries outlast outages: dead only after 15 min of failing),
the delayed retry topics, and a simulator of the test's own answering 503 to every
request for 120 s.

The same scenario runs on a virtual clock in the default suite
(tests/unit/stages/test_dispatch_outage.py); this one shows it end to end in real time.
Long (about four minutes): runs only with ``SPILLWAY_LONG_TESTS=1`` (scripts/test-long).
"""

from __future__ import annotations

import os
import time
from typing import Any

import pytest

from tests.plugins.stack import Env
from tests.plugins.traffic import policy, produce, providers_env

pytestmark = [
    pytest.mark.integration,
    pytest.mark.long,
    pytest.mark.skipif(
        not os.environ.get("SPILLWAY_LONG_TESTS"), reason="long suite: SPILLWAY_LONG_TESTS=1"
    ),
]

OUTAGE_S = 120.0
EVERY_S = 5.0
ARRIVALS_S = 180.0  # emails keep arriving a minute after the outage ends


def test_a_two_minute_outage_delivers_every_email_and_kills_none(
    env: Env, own_sim: Any
) -> None:
    sim = own_sim()
    env.workers.add("render")
    env.workers.add("route")
    env.workers.add("dispatch", **providers_env(policy("sim", sim.url)))  # default policy
    assert env.workers.wait_ready(env.settings.kafka.bootstrap, env.ns)
    observer = env.observe()
    ids = produce(env, 1, "normal", "warm")
    assert observer.wait_for(1, timeout=60, check=env.workers.check_alive).sent
    outage = sim.client.outage(duration_s=OUTAGE_S, status=503, rate=1.0)
    start = time.monotonic()
    i = 0
    while i * EVERY_S <= ARRIVALS_S:
        due = start + i * EVERY_S
        while (left := due - time.monotonic()) > 0:  # pacing the arrivals, not a wait
            time.sleep(min(left, 0.5))
            env.workers.check_alive()
        ids += produce(env, 1, "normal", f"o{i}-")
        i += 1
    tally = observer.wait_for(len(ids), timeout=600, check=env.workers.check_alive)
    records = sim.client.requests()
    failed = [r for r in records if r["status"] == 503]
    waits = [(r.sent_at - r.accepted_at) / 1000.0 for r in tally.sent.values()]
    print(
        f"\nprovider outage {OUTAGE_S:.0f} s (503), one email every {EVERY_S:.0f} s: "
        f"{len(ids)} emails, {len(tally.sent)} sent, {len(tally.dead)} dead; "
        f"{len(records)} requests ({len(failed)} answered 503); most attempts "
        f"{max(r.attempts for r in tally.sent.values())}; longest accepted->sent "
        f"{max(waits):.1f} s; outage {outage}"
    )
    assert not tally.dead, tally.reasons()
    assert set(tally.sent) == set(ids)
    assert failed, "the outage never hit a request"
    delivered = {e["key"] for e in sim.entries()}
    assert delivered >= set(ids)
