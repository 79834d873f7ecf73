"""Dispatch under pressure, against simulators of the test's own: quota held across
workers, priority under saturation, shedding, breaker, failover, restarts.
Durations are scaled down by configuration."""

from __future__ import annotations

import signal
import time
import urllib.request
from collections import Counter
from typing import Any

import pytest
from prometheus_client.parser import text_string_to_metric_families

from harness.observe import end_offsets
from harness.workers import Worker, wait_until
from simulator.client import requests_after_acceptance
from tests.plugins.stack import Env
from tests.plugins.traffic import PARTITIONS, fill_lanes, policy, produce, providers_env

pytestmark = pytest.mark.integration

def requests_per_second(sim: Any) -> dict[int, int]:
    return {row["second"]: row["requests"] for row in sim.per_second()}


def breaker_code(worker: Worker, provider: str) -> float | None:
    """The worker's ``spillway_provider_breaker_state_code`` for a provider (0 closed,
    1 open, 2 half_open), scraped from its /metrics; None if not (yet) there."""
    try:
        with urllib.request.urlopen(f"{worker.web_url}/metrics", timeout=5) as resp:
            text = resp.read().decode()
    except OSError:
        return None
    for family in text_string_to_metric_families(text):
        if family.name == "spillway_provider_breaker_state_code":
            for sample in family.samples:
                if sample.labels.get("provider") == provider:
                    return float(sample.value)
    return None


def wait_breaker(worker: Worker, provider: str, code: float, timeout: float = 60) -> None:
    assert wait_until(lambda: breaker_code(worker, provider) == code, timeout, interval=0.2), (
        f"breaker of {provider} not in state {code} after {timeout} s "
        f"(now {breaker_code(worker, provider)})"
    )


def rate(records: list[dict[str, Any]], start: float, end: float) -> float:
    """Requests per second that arrived in [start, end), by the simulator's clock."""
    return sum(1 for r in records if start <= r["received_at"] < end) / (end - start)


def test_quota_holds_across_two_workers(env: Env, own_sim: Any) -> None:
    sim = own_sim(quota=200)
    env_over = providers_env(policy("sim", sim.url, quota_per_s=200))
    env.workers.add("dispatch", **env_over)
    env.workers.add("dispatch", **env_over)
    assert env.workers.wait_ready(env.settings.kafka.bootstrap, env.ns)  # both in the group
    observer = env.observe()
    fill_lanes(env, {"bulk": 3000})  # some 15 s at the quota: 15 seconds to check
    tally = observer.wait_for(3000, timeout=120, check=env.workers.check_alive)
    assert len(tally.sent) == 3000 and not tally.dead
    per_second = requests_per_second(sim)
    stats = sim.client.stats(series=False)
    assert stats["by_status"].get("429", 0) == 0, stats["by_status"]
    assert max(per_second.values()) <= 200, sorted(per_second.items())
    entries = sim.entries()
    span = max(e["received_at"] for e in entries) - min(e["received_at"] for e in entries)
    achieved = len(entries) / span  # by the simulator's clock
    print(f"quota 200/s: achieved {achieved:.1f}/s, per second {sorted(per_second.items())}")
    # Generous: the figure belongs to the benchmarks. Above half the quota still proves
    # both workers sent (a worker left out of the share would halve it).
    assert achieved > 110, f"achieved {achieved:.1f}/s of a 200/s quota"


def test_critical_overtakes_a_saturating_bulk_backlog(env: Env, own_sim: Any) -> None:
    sim = own_sim(quota=100)
    fill_lanes(env, {"bulk": 1000}, pipeline=True)  # critical and late bulk come raw
    env.workers.add("dispatch", **providers_env(policy("sim", sim.url, quota_per_s=100)))
    observer = env.observe()
    assert wait_until(lambda: len(sim.entries()) >= 200, timeout=60, interval=0.5)
    injected_after = sim.client.requests()[-1]["seq"]  # the log's position, not a clock
    critical = produce(env, 40, "critical", "c")
    later_bulk = produce(env, 100, "bulk", "late")
    tally = observer.wait_for(1140, timeout=120, check=env.workers.check_alive)
    assert len(tally.sent) == 1140
    seq = {r["key"]: r["seq"] for r in sim.client.requests() if r["outcome"] == "accepted"}
    last_critical = max(seq[c] for c in critical)
    backlog_before = sum(
        1
        for k, n in seq.items()
        if injected_after < n < last_critical and k not in critical and k not in later_bulk
    )
    backlog_after = sum(1 for k, n in seq.items() if n > last_critical and k not in later_bulk)
    print(
        f"critical under saturation: {backlog_before} backlog sends between the injection "
        f"and the last critical send, {backlog_after} backlog sends after it"
    )
    # Critical overtook the backlog: it did not wait for it to drain, and fewer backlog
    # messages went first than a few seconds at the quota (about 200 with a healthy
    # pipeline; 800 if critical waited behind the backlog).
    assert backlog_after > 0 and backlog_before < 500, (backlog_before, backlog_after)
    assert last_critical < min(seq[b] for b in later_bulk)


def test_bulk_is_held_while_remaining_is_low(env: Env, own_sim: Any) -> None:
    # The provider allows 300 per 4 s window; below 100 remaining, bulk waits for the
    # reset while critical keeps going. We never hit the wall (no 429).
    sim = own_sim(quota=300, window_s=4)
    fill_lanes(env, {"bulk": 700}, pipeline=True)  # the critical trickle comes raw
    env.workers.add(
        "dispatch",
        **providers_env(policy("sim", sim.url, remaining_threshold=100, max_in_flight=4)),
    )
    observer = env.observe()
    critical: list[str] = []

    def bulk_sent() -> int:
        return sum(1 for e in sim.entries() if e["custom_args"]["priority"] == "bulk")

    # a trickle of critical mail for as long as the bulk backlog lasts (a count, not a
    # duration: on a slow machine the backlog lasts longer and so does the trickle)
    deadline = time.monotonic() + 180
    while bulk_sent() < 700:
        assert time.monotonic() < deadline, f"bulk stuck at {bulk_sent()} of 700"
        env.workers.check_alive()
        critical += produce(env, 2, "critical", f"c{len(critical)}-")
        time.sleep(0.5)  # pacing of the trickle, not a wait for a result
    tally = observer.wait_for(700 + len(critical), timeout=120, check=env.workers.check_alive)
    assert len(tally.sent) == 700 + len(critical)
    stats = sim.client.stats(series=False)
    assert stats["by_status"].get("429", 0) == 0, stats["by_status"]
    windows: dict[int, Counter[str]] = {}
    for e in sim.entries():  # the provider's own quota windows, by its own clock
        w = int(e["received_at"] // 4)
        kind = "critical" if e["custom_args"]["priority"] == "critical" else "bulk"
        windows.setdefault(w, Counter())[kind] += 1
    print("per 4 s window:", sorted((w, dict(c)) for w, c in windows.items()))
    slack = 2 * 4  # requests in flight (max_in_flight 4) when Remaining dropped under 100,
    # doubled: a window may also see answers to requests made at the end of the last one
    assert all(c["bulk"] <= 300 - 100 + slack for c in windows.values())
    held = [c for c in windows.values() if c["bulk"] >= 200 - slack]
    assert held and all(c["critical"] > 0 for c in held[:-1]), "critical did not flow"


def breaker_policy(name: str, url: str, **over: Any) -> dict[str, Any]:
    return policy(
        name,
        url,
        quota_per_s=150,
        breaker_window_s=3,
        breaker_min_requests=10,
        breaker_cooldown_s=2,
        breaker_half_open_probes=5,
        retry_backoff_base_s=0.5,
        retry_backoff_cap_s=2,
        **over,
    )


def test_breaker_opens_probes_and_recovers_without_losing_mail(env: Env, own_sim: Any) -> None:
    sim = own_sim()
    fill_lanes(env, {"normal": 1100})  # about 500 left when the breaker closes again
    worker = env.workers.add("dispatch", **providers_env(breaker_policy("sim", sim.url)))
    observer = env.observe()
    assert wait_until(lambda: len(sim.entries()) >= 500, timeout=60, interval=0.2)
    wait_breaker(worker, "sim", 0)
    outage = sim.client.outage(duration_s=60, status=500, rate=0.2)
    wait_breaker(worker, "sim", 1)  # it opened (a state, not a sleep)
    opened = sim.client.stats(series=False)["now"]
    # stay in the outage for two cooldowns (2 s each), by the simulator's clock
    assert wait_until(lambda: sim.client.stats(series=False)["now"] >= opened + 4, 30)
    sim.client.end_outages()
    ended = sim.client.stats(series=False)["now"]
    wait_breaker(worker, "sim", 0)  # closed again: probes passed
    tally = observer.wait_for(1100, timeout=120, check=env.workers.check_alive)
    assert len(tally.sent) == 1100 and not tally.dead, tally.reasons()
    records = sim.client.requests()
    start = outage["start"]
    before = rate(records, start - 2, start)
    during = rate(records, opened, ended)
    print(f"requests/s (simulator clock) before {before:.0f}, while open {during:.0f}")
    # open: probes every cooldown; a probe round that happens to pass closes it and the
    # next errors reopen it, so a 20% outage cuts traffic to a trickle, not to zero.
    # Generous: half the rate before (it was 0.2 when measured on an idle machine).
    assert during <= 0.5 * before, (before, during)
    assert any(r["received_at"] >= ended and r["outcome"] == "accepted" for r in records)
    assert not requests_after_acceptance(records)  # failures retried, nothing sent twice
    assert {e["key"] for e in sim.entries()} >= set(tally.sent)


def test_failover_moves_traffic_within_a_window(env: Env, own_sim: Any) -> None:
    primary, fallback = own_sim(), own_sim()
    fill_lanes(env, {"normal": 1200})
    env.workers.add(
        "dispatch",
        **providers_env(
            breaker_policy("primary", primary.url, fallback="fallback"),
            breaker_policy("fallback", fallback.url),
        ),
    )
    observer = env.observe()
    assert wait_until(lambda: len(primary.entries()) >= 200, timeout=60, interval=0.2)
    outage = primary.client.outage(duration_s=30, status=503, rate=0.2)
    tally = observer.wait_for(1200, timeout=120, check=env.workers.check_alive)
    assert len(tally.sent) == 1200 and not tally.dead, tally.reasons()
    moved = sorted(e["received_at"] for e in fallback.entries())
    assert moved, "nothing went to the fallback"
    # Counted, not timed: the primary's requests between the outage's start and the
    # first fallback send, against one breaker window (3 s) at the quota (150/s).
    primary_before = sum(
        1 for r in primary.client.requests() if outage["start"] <= r["received_at"] < moved[0]
    )
    print(f"{primary_before} primary requests between the outage and the first fallback send")
    assert primary_before <= 150 * 3
    assert Counter(r.provider for r in tally.sent.values())["fallback"] == len(moved)


#: Workers this test SIGKILLs: the group moves a dead member's partitions after the
#: session timeout, 6 s (the broker's minimum) instead of 10 s, so a restarted worker
#: gets them sooner.
KILLED_ENV = {"SPILLWAY_SESSION_TIMEOUT_S": "6"}
BACKLOG = 1200  # at 100/s: still saturated after the second restart (about 700 left)


def test_restart_keeps_the_breaker_open_and_the_quota(env: Env, own_sim: Any) -> None:
    sim = own_sim(quota=100)
    fill_lanes(env, {"bulk": BACKLOG})
    over = providers_env(
        policy(
            "sim",
            sim.url,
            quota_per_s=100,
            breaker_window_s=3,
            breaker_min_requests=10,
            breaker_cooldown_s=8,
            breaker_half_open_probes=2,
        )
    )
    over.update(KILLED_ENV)
    worker = env.workers.add("dispatch", **over)
    observer = env.observe()
    assert wait_until(lambda: len(sim.entries()) >= 200, timeout=60, interval=0.2)
    # 1. kill under a saturated quota, restart: no burst above the quota
    worker.stop(signal.SIGKILL)
    worker = env.workers.add("dispatch", **over)
    assert wait_until(lambda: len(sim.entries()) >= 500, timeout=60, interval=0.2)
    # 2. open the breaker, kill, restart: it stays open (probes only) until its cooldown
    sim.client.outage(duration_s=120, status=500, rate=1.0)
    wait_breaker(worker, "sim", 1)  # it opened
    changelog = f"{env.settings.app_id('dispatch')}-dispatch-pressure-changelog"
    flushed = end_offsets(env.settings.kafka.bootstrap, changelog, PARTITIONS)
    assert wait_until(  # a state flush after it opened reached the changelog
        lambda: end_offsets(env.settings.kafka.bootstrap, changelog, PARTITIONS) > flushed, 30
    )
    worker.stop(signal.SIGKILL)
    last_before_kill = sim.client.requests()[-1]["seq"]
    worker = env.workers.add("dispatch", **over)
    # the restarted worker's first request, then one cooldown (8 s) of the simulator's
    # clock: a worker that restored the open breaker sends one probe round (2); one that
    # forgot it sends at the quota until 10 failures reopen it
    assert wait_until(lambda: sim.client.requests()[-1]["seq"] > last_before_kill, 60)
    first = next(r for r in sim.client.requests() if r["seq"] > last_before_kill)
    assert wait_until(lambda: sim.client.stats(series=False)["now"] >= first["received_at"] + 7, 30)
    after_restart = [
        r
        for r in sim.client.requests()
        if r["seq"] > last_before_kill and r["received_at"] < first["received_at"] + 7
    ]
    print(f"requests in the first cooldown after the restart: {len(after_restart)}")
    assert len(after_restart) <= 2 * 2, after_restart  # at most the probes (2), doubled
    sim.client.end_outages()
    seconds = requests_per_second(sim)
    # failed probes are attempts of their messages: those wait out their backoff (cap
    # 60 s) after the outage
    tally = observer.wait_for(BACKLOG, timeout=240, check=env.workers.check_alive)
    assert len(tally.sent) == BACKLOG, (tally.done, len(tally.dead), tally.reasons())
    assert max(seconds.values()) <= 100 and max(requests_per_second(sim).values()) <= 100
