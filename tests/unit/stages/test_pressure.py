from __future__ import annotations

import itertools
import random
import time

from app.settings import ProviderPolicy
from app.stages.lanes import LaneGate
from app.stages.pressure import Breaker, Gcra, PressureBoard, Share, backoff_s
from app.tables.pressure import key_for


def test_gcra_spaces_requests_at_the_rate() -> None:
    meter = Gcra(rate=10.0)
    t, sent = 100.0, []
    while t < 102.0:  # two seconds of eager callers, 1 ms apart
        if meter.wait(t) == 0:
            meter.take(t)
            sent.append(t)
        t += 0.001
    assert 20 <= len(sent) <= 21
    assert all(b - a >= 0.0999 for a, b in itertools.pairwise(sent))


def test_shares_add_up_to_the_target_rate() -> None:
    policy = ProviderPolicy(name="p", quota_per_s=200)
    shares = [Share(policy, 4, owned) for owned in (1, 3)]  # two workers
    # normal and bulk: 0.85 of the quota; critical may use the 0.1 reserve above it
    assert abs(sum(s.non_critical.rate for s in shares) - 170.0) < 1e-9
    assert abs(sum(s.total.rate for s in shares) - 190.0) < 1e-9
    shares[0].resize(4)  # the other worker left
    assert abs(shares[0].non_critical.rate - 170.0) < 1e-9


def test_snapshot_restore_never_sends_early() -> None:
    policy = ProviderPolicy(name="p", quota_per_s=100)
    st = Share(policy, 1)
    for i in range(50):  # saturate
        now = 10.0 + i * st.total.interval
        st.total.take(now)
    snap = st.snapshot(now, flush_every_s=0.5)
    # the worker dies right after the snapshot; its successor starts from it
    fresh = Share(policy, 1)
    fresh.restore(snap)
    assert fresh.total.wait(now) >= st.total.wait(now)
    assert fresh.total.wait(now) <= 0.5 + 2 * st.total.interval  # idles at most a flush


def test_breaker_opens_probes_and_closes() -> None:
    policy = ProviderPolicy(
        name="p",
        breaker_min_requests=10,
        breaker_error_threshold=0.05,
        breaker_window_s=5,
        breaker_cooldown_s=2,
        breaker_half_open_probes=2,
    )
    b = Breaker(policy)
    for i in range(9):
        b.record(True, i * 0.1)
    b.record(False, 1.0)  # 1 of 10 = 10% > 5%
    assert b.state == "open"
    assert b.admit(2.0) > 0  # cooling down
    assert b.peek(3.1) == 0 and b.state == "open"  # peeking takes no probe
    assert b.admit(3.1) == 0 and b.state == "half_open"  # probe 1
    assert b.admit(3.1) == 0  # probe 2
    assert b.admit(3.1) > 0  # no more probes until they answer
    b.record(True, 3.2)
    b.record(True, 3.2)
    assert b.state == "closed"


def test_error_rate_slides_with_the_window() -> None:
    policy = ProviderPolicy(name="p", breaker_min_requests=100, breaker_window_s=5)
    b = Breaker(policy)
    for i in range(10):
        b.record(i % 2 == 0, float(i))  # failures at 1, 3, 5, 7, 9
    assert b.error_rate(9.0) == (3 / 6, 6)  # t = 4..9 is inside the window
    assert b.error_rate(20.0) == (0.0, 0)
    b.record(True, 20.0)
    assert b.error_rate(20.0) == (0.0, 1)


def test_failed_probe_reopens() -> None:
    policy = ProviderPolicy(name="p", breaker_min_requests=1, breaker_cooldown_s=1)
    b = Breaker(policy)
    b.record(False, 0.0)
    assert b.admit(1.5) == 0
    b.record(False, 1.6)
    assert b.state == "open" and b.opened_at == 1.6


def test_breaker_survives_a_restart() -> None:
    policy = ProviderPolicy(name="p", breaker_min_requests=1)
    st = Share(policy, 1)
    st.breaker.record(False, 5.0)
    fresh = Share(policy, 1)
    fresh.restore(st.snapshot(6.0, 0.5))
    assert fresh.breaker.state == "open" and fresh.breaker.opened_at == 5.0


def test_low_remaining_holds_bulk_not_critical() -> None:
    clock = [100.0]
    policies = {"p": ProviderPolicy(name="p", remaining_threshold=100)}
    board = PressureBoard(policies, 4, {}, key_for, clock=lambda: clock[0])
    board.observe("p", limit=1000, remaining=50, reset_at=110.0)
    assert board.wait_s("p", 0, "critical") == 0
    assert board.wait_s("p", 0, "bulk") >= 9.9
    clock[0] = 111.0  # the window reset
    assert board.wait_s("p", 0, "bulk") == 0


async def test_acquire_takes_from_both_meters_for_bulk() -> None:
    policies = {"p": ProviderPolicy(name="p", quota_per_s=100, target_utilisation=1.0)}
    board = PressureBoard(policies, 1, {}, key_for, clock=time.time)
    gate = LaneGate()
    started = time.time()
    await board.acquire("p", 0, "bulk", gate)
    st = board.state("p", 0)
    assert st.total.tat > started and st.non_critical.tat > started
    await board.acquire("p", 0, "critical", gate)  # waits one interval (10 ms)
    assert st.non_critical.tat < st.total.tat  # critical used only the total meter


def test_state_is_restored_from_the_store() -> None:
    policies = {"p": ProviderPolicy(name="p", quota_per_s=10)}
    store: dict[bytes, dict[str, object]] = {}
    board = PressureBoard(policies, 4, store, key_for, clock=lambda: 10.0)
    board.own({2, 3})
    board.state("p").total.take(10.0)
    board.flush(0.5)
    assert {key_for("p", 2, 4), key_for("p", 3, 4)} <= set(store)
    again = PressureBoard(policies, 4, store, key_for, clock=lambda: 10.0)
    again.own({0, 1})
    assert again.state("p").total.tat < board.state("p").total.tat  # nothing of 2, 3 yet
    again.own({0, 1, 2})  # a rebalance hands it partition 2
    assert again.state("p").total.tat >= board.state("p").total.tat


def test_backoff_grows_and_is_capped() -> None:
    rng = random.Random(1)
    assert 0.5 <= backoff_s(1, 1.0, 60, rng) <= 1.0
    assert 2.0 <= backoff_s(3, 1.0, 60, rng) <= 4.0
    assert 30.0 <= backoff_s(20, 1.0, 60, rng) <= 60.0


# --- issue 13: throttled probes, bounded pauses -------------------------------------------


def half_open_breaker() -> Breaker:
    b = Breaker(ProviderPolicy(name="p", breaker_min_requests=1, breaker_cooldown_s=5))
    b.record(False, 0.0)  # opens
    assert b.admit(10.0) == 0 and b.state == "half_open"  # a probe goes out
    return b


def test_a_throttled_probe_reopens_the_breaker_for_a_cooldown() -> None:
    b = half_open_breaker()
    b.throttled(10.0)
    assert b.state == "open" and b.opened_at == 10.0
    assert b.peek(12.0) == 3.0  # waits its cooldown, then probes again
    assert b.admit(15.0) == 0 and b.state == "half_open"


def test_a_throttle_while_closed_is_not_a_breaker_matter() -> None:
    b = Breaker(ProviderPolicy(name="p", breaker_min_requests=1))
    b.throttled(1.0)
    assert b.state == "closed" and len(b.window) == 0


def test_a_probe_that_never_reached_the_provider_gives_its_slot_back() -> None:
    policy = ProviderPolicy(name="p", breaker_min_requests=1, breaker_half_open_probes=1)
    b = Breaker(policy)
    b.record(False, 0.0)
    assert b.admit(100.0) == 0 and b.peek(100.0) > 0  # the only probe slot is taken
    b.release_probe()
    assert b.peek(100.0) == 0  # not half-open forever


def board(clock: list[float], **over: object) -> PressureBoard:
    policy = ProviderPolicy(name="p", retry_backoff_base_s=2, retry_backoff_cap_s=8, **over)  # type: ignore[arg-type]
    return PressureBoard({"p": policy}, 4, {}, key_for, clock=lambda: clock[0])


def test_pauses_are_clamped_to_the_policy_range() -> None:
    clock = [1000.0]
    b = board(clock, retry_after_min_s=1, retry_after_max_s=900)
    assert b.pause("p", 0.0) == 1.0  # Retry-After 0: no 1,000 requests/s loop
    assert b.pause("p", 1e15) == 900.0  # huge: at most the maximum
    assert b.views["p"].paused_until == 1900.0
    b.views["p"].paused_until = 0.0
    for bad in (float("nan"), float("inf"), -1.0, None):
        got = b.pause("p", bad)
        assert 1.0 <= got <= 8.0, bad  # the policy's backoff instead
    assert b.blocked("p", "critical") and b.wait_s("p", 0, "critical") <= 900.0


def test_a_pause_is_kept_until_it_ends() -> None:
    clock = [0.0]
    b = board(clock)
    b.pause("p", 5.0)
    clock[0] = 4.9
    assert b.blocked("p", "critical")
    clock[0] = 5.0
    assert not b.blocked("p", "critical")


def test_a_far_rate_limit_reset_holds_bulk_at_most_the_maximum() -> None:
    clock = [1000.0]
    b = board(clock, quota_per_s=10, retry_after_max_s=60)
    b.observe("p", 100, 0, 1e12)  # reset in 30,000 years
    assert b.views["p"].reset_at == 1060.0
    assert b.blocked("p", "bulk") and not b.blocked("p", "critical")
    clock[0] = 1060.0
    assert not b.blocked("p", "bulk")
    b.observe("p", 100, 0, float("inf"))
    assert b.views["p"].reset_at is None
    b.observe("p", 100, 0, 10.0)  # in the past
    assert b.views["p"].reset_at is None
