"""The pressure board's decisions, exactly, on a virtual clock: which meters a lane
pays, what a low Remaining costs, how long a 429 pauses, what is persisted and
restored, and that one lane's wait never holds another lane (written to kill the
mutants scripts/mutation found surviving in app/stages/pressure.py)."""

from __future__ import annotations

import asyncio
import math
from typing import Any

import pytest

from app.settings import ProviderPolicy
from app.stages.pressure import Gcra, PressureBoard
from app.tables.pressure import key_for

NOW = 1_000.0


class Clock:
    def __init__(self) -> None:
        self.now = NOW
        self.sleeps: list[float] = []

    def __call__(self) -> float:
        return self.now

    async def sleep(self, seconds: float) -> None:
        self.sleeps.append(seconds)
        self.now += max(seconds, 1e-6)  # a real sleep always lets some time pass
        await asyncio.sleep(0)


class Gate:
    def __init__(self) -> None:
        self.lanes: list[str] = []

    async def wait_turn(self, lane: str) -> None:
        self.lanes.append(lane)


def board(clock: Clock, quota: float | None = 100.0, partitions: int = 1) -> PressureBoard:
    policy = ProviderPolicy(
        name="p",
        quota_per_s=quota,
        target_utilisation=0.5,
        critical_reserve=0.1,
        remaining_threshold=100,
        retry_backoff_base_s=4.0,
        retry_backoff_cap_s=64.0,
    )
    store: dict[bytes, Any] = {}
    return PressureBoard({"p": policy}, partitions, store, key_for, clock=clock, sleep=clock.sleep)


def low_remaining(b: PressureBoard, reset_in: float = 10.0, remaining: int = 10) -> None:
    """Remaining under the threshold and, at our pace (50/s), gone before the reset."""
    b.observe("p", 1000, remaining, NOW + reset_in)


# --- the meter --------------------------------------------------------------------------


def test_gcra_waits_exactly() -> None:
    meter = Gcra(10.0)  # interval 0.1
    assert meter.wait(NOW) == 0.0 and meter.tokens(0.0) == 1.0  # a fresh meter: tat 0
    meter.take(NOW)
    assert meter.tat == pytest.approx(NOW + 0.1)
    assert meter.wait(NOW) == pytest.approx(0.1)
    assert meter.wait(NOW, cost=2.0) == pytest.approx(0.2)  # a double cost waits longer
    assert meter.tokens(NOW) == pytest.approx(0.0)
    burst = Gcra(10.0, burst=3.0, tat=NOW + 0.1)  # tolerates two intervals ahead
    assert burst.wait(NOW) == 0.0
    assert burst.wait(NOW + 0.0, cost=4.0) == pytest.approx(0.2)
    burst.tat = NOW + 0.5
    assert burst.wait(NOW) == pytest.approx(0.3)
    assert burst.tokens(NOW) == pytest.approx(0.0)
    assert burst.tokens(NOW + 1.0) == pytest.approx(8.0)


def test_gcra_slow_and_stopped_rates() -> None:
    slow = Gcra(0.5)  # one per 2 s: a positive rate below 1 is still a rate
    assert slow.wait(NOW) == 0.0 and slow.tokens(NOW) > 0
    slow.take(NOW)
    assert slow.wait(NOW) == pytest.approx(2.0)
    stopped = Gcra(0.0)
    assert stopped.wait(NOW) == math.inf and stopped.tokens(NOW) == 0.0
    assert stopped.interval == math.inf


# --- which meters a lane pays -------------------------------------------------------------


def test_unlimited_provider_waits_only_for_a_pause() -> None:
    clock = Clock()
    b = board(clock, quota=None)
    assert b.wait_s("p", 0, "normal") == 0.0
    b.views["p"].paused_until = NOW + 0.5
    assert b.wait_s("p", 0, "normal") == pytest.approx(0.5)
    assert b.wait_s("p", 0, "critical") == pytest.approx(0.5)


def test_critical_pays_only_the_total_meter() -> None:
    clock = Clock()
    b = board(clock)
    st = b.state("p", 0)
    st.non_critical.tat = NOW + 5.0  # normal and bulk have used their share
    assert b.wait_s("p", 0, "critical") == 0.0
    assert b.wait_s("p", 0, "normal") == pytest.approx(st.non_critical.wait(NOW))
    assert st.non_critical.wait(NOW) > 4
    assert b.wait_s("p", 0, "bulk") == pytest.approx(st.non_critical.wait(NOW))


def test_normal_pays_double_while_remaining_is_low() -> None:
    clock = Clock()
    b = board(clock)
    st = b.state("p", 0)
    st.non_critical.tat = NOW + 1.0
    st.total.tat = NOW + 1.0
    plain = b.wait_s("p", 0, "normal")
    assert plain == pytest.approx(max(st.total.wait(NOW), st.non_critical.wait(NOW)))
    low_remaining(b)
    double = max(st.total.wait(NOW, 2.0), st.non_critical.wait(NOW, 2.0))
    assert b.wait_s("p", 0, "normal") == pytest.approx(double)
    assert double > plain + 0.01
    assert b.wait_s("p", 0, "critical") == pytest.approx(st.total.wait(NOW))  # cost 1


def test_bulk_is_held_until_the_reset_or_a_longer_pause() -> None:
    clock = Clock()
    b = board(clock)
    low_remaining(b, reset_in=10.0)
    assert b.wait_s("p", 0, "bulk") == pytest.approx(10.0)
    assert b.blocked("p", "bulk") and not b.blocked("p", "normal")
    b.views["p"].paused_until = NOW + 20.0
    assert b.wait_s("p", 0, "bulk") == pytest.approx(20.0)
    b.views["p"].paused_until = 0.0
    low_remaining(b, reset_in=0.01, remaining=0)
    assert b.wait_s("p", 0, "bulk") == pytest.approx(0.05)  # never a busy loop


def test_low_remaining_is_judged_at_our_pace() -> None:
    """90 left under a threshold of 100, reset in 1 s: at 50/s we use 50 of them, so
    nothing is held; with 10 s to the reset it is."""
    clock = Clock()
    b = board(clock)
    b.observe("p", 1000, 90, NOW + 1.0)
    assert not b.blocked("p", "bulk")
    assert b.wait_s("p", 0, "bulk") == 0.0
    b.observe("p", 1000, 90, NOW + 10.0)
    assert b.blocked("p", "bulk")


def test_a_limited_meter_waits_even_without_a_pause() -> None:
    clock = Clock()
    b = board(clock)
    st = b.state("p", 0)
    st.total.tat = st.non_critical.tat = NOW + 3.0
    assert b.wait_s("p", 0, "critical") > 2.0


# --- acquire ----------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("lane", "low", "cost_nc"),
    [("normal", False, 1), ("normal", True, 2), ("bulk", False, 1), ("critical", True, 0)],
)
async def test_acquire_takes_the_lane_cost(lane: str, low: bool, cost_nc: int) -> None:
    clock = Clock()
    b = board(clock)
    if low:
        b.observe("p", 1000, 10, NOW + 1000.0)  # low, but bulk is not asked here
    st = b.state("p", 0)
    gate = Gate()
    await b.acquire("p", 0, lane, gate)
    # priority is decided before a message is taken (LaneGate.may_take), never here
    assert gate.lanes == [] and clock.sleeps == []
    cost = 2 if lane == "normal" and low else 1
    assert st.total.tat == pytest.approx(NOW + cost * st.total.interval)
    expected_nc = NOW + cost_nc * st.non_critical.interval if cost_nc else 0.0
    assert st.non_critical.tat == pytest.approx(expected_nc)


async def test_acquire_polls_in_short_steps_until_the_slot() -> None:
    clock = Clock()
    b = board(clock)
    st = b.state("p", 0)
    st.total.tat = st.non_critical.tat = NOW + 1.0
    gate = Gate()
    await b.acquire("p", 0, "normal", gate)
    assert clock.sleeps and max(clock.sleeps) <= 0.25
    assert clock.now >= NOW + 1.0 - st.non_critical.burst * st.non_critical.interval
    assert gate.lanes == []  # a taken message never waits for another lane


async def test_acquire_waits_for_a_short_pause_too() -> None:
    clock = Clock()
    b = board(clock, quota=None)
    b.views["p"].paused_until = NOW + 0.5
    await b.acquire("p", 0, "critical", Gate())
    assert clock.now >= NOW + 0.5 and clock.sleeps


async def test_a_held_lane_does_not_hold_another() -> None:
    clock = Clock()
    b = board(clock)
    low_remaining(b, reset_in=10.0)
    done: dict[str, float] = {}

    async def go(lane: str) -> None:
        await b.acquire("p", 0, lane, Gate())
        done[lane] = clock.now

    bulk = asyncio.create_task(go("bulk"))
    await asyncio.sleep(0)  # bulk is waiting for the reset
    await go("critical")
    assert done["critical"] < NOW + 1.0  # not behind bulk's 10 s
    await bulk
    assert done["bulk"] >= NOW + 10.0


# --- state, persistence, 429s -------------------------------------------------------------


def test_a_share_is_sized_by_the_partitions_owned_and_restored_from_the_store() -> None:
    clock = Clock()
    b = board(clock, partitions=4)
    b.store[key_for("p", 1, 4)] = {"breaker": "open", "opened_at": NOW - 1.0, "tat": NOW + 9.0}
    st = b.state("p", 1)
    assert b.owned == {1}
    assert st.non_critical.rate == pytest.approx(100 * 0.5 / 4)
    assert st.breaker.state == "open" and st.breaker.opened_at == NOW - 1.0
    assert st.total.tat == pytest.approx(NOW + 9.0)


def test_flush_writes_every_owned_partition_and_counts_them() -> None:
    clock = Clock()
    b = board(clock, partitions=4)
    b.own({0, 2, 3})
    st = b.state("p")
    assert b.flush(1.0) == 3
    assert set(b.store) == {key_for("p", p, 4) for p in (0, 2, 3)}
    st.breaker._open(NOW)
    b.store.clear()
    b.persist_breaker("p", 2, 1.0)
    assert {k: v["breaker"] for k, v in b.store.items()} == {
        key_for("p", p, 4): "open" for p in (0, 2, 3)
    }
    assert all(v["opened_at"] == NOW and v["at"] == NOW for v in b.store.values())


def test_observe_keeps_a_sane_view_and_ends_a_run_of_429s() -> None:
    clock = Clock()
    b = board(clock)
    b.pause("p", None)
    b.pause("p", None)
    view = b.views["p"]
    assert view.throttles == 2
    clock.now += 1.0
    b.observe("p", 100, 50, clock.now)  # a reset "now" is already past
    assert view.reset_at is None and view.seen_at == clock.now and view.throttles == 0
    b.observe("p", 100, 50, clock.now + 10_000.0)  # pulled in to retry_after_max_s
    assert view.reset_at == clock.now + b.policies["p"].retry_after_max_s
    b.pause("p", None)
    b.succeeded("p")
    assert view.throttles == 0


def test_a_pause_without_retry_after_backs_off_by_the_run_of_429s() -> None:
    clock = Clock()
    b = board(clock)  # backoff base 4 s: attempt n waits in [2, 4] * 2**(n-1)
    first = b.pause_s("p", None)
    assert 2.0 <= first <= 4.0
    b.views["p"].throttles = 3
    assert 8.0 <= b.pause_s("p", None) <= 16.0
    assert b.pause_s("p", 30.0) == 30.0  # a usable Retry-After wins
    assert b.pause("p", 30.0) == 30.0 and b.views["p"].paused_until == NOW + 30.0


# --- the send window ------------------------------------------------------------------------


def test_send_window_keeps_at_most_the_limit_in_any_window() -> None:
    from app.stages.pressure import SendWindow

    w = SendWindow()
    for i in range(3):
        assert w.wait(NOW + i * 0.1, limit=3, window_s=1.0) == 0.0
        w.take(NOW + i * 0.1)
    assert w.wait(NOW + 0.2, limit=3, window_s=1.0) == pytest.approx(0.8)  # the first leaves
    assert w.wait(NOW + 1.0, limit=3, window_s=1.0) == 0.0  # exactly one window later
    # a smaller limit (fewer partitions owned) waits for more of them to leave
    assert w.wait(NOW + 0.5, limit=1, window_s=1.0) == pytest.approx(0.7)
    assert w.wait(NOW + 0.5, limit=0, window_s=1.0) == 1.0


def test_send_limit_is_the_share_of_the_whole_quota_rounded_down() -> None:
    clock = Clock()
    b = board(clock, quota=50.0, partitions=4)
    b.own({0, 1, 2, 3})
    assert b.send_limit("p") == 50
    b.own({0})
    assert b.send_limit("p") == 12  # 12.5 rounded down: all workers' limits add to 50 at most
    b.own({0, 1, 2})
    assert b.send_limit("p") == 37
    assert board(clock, quota=None).send_limit("p") is None


async def test_on_wire_spreads_a_bunch_of_requests_over_the_window() -> None:
    """Requests that passed the meters at their pace but reach the last step together
    (a late ack, a busy loop) leave no more than the share in any send window: what a
    provider with one-second windows sees stays within its quota."""
    from app.stages.pressure import SEND_WINDOW_S

    clock = Clock()
    b = board(clock, quota=10.0)
    b.own({0})
    sent: list[float] = []
    for _ in range(35):  # a bunch, all at once
        await b.on_wire("p")
        sent.append(clock.now)
    assert len(sent) == 35
    for i, t in enumerate(sent):  # any window of SEND_WINDOW_S holds at most 10
        assert sum(1 for u in sent[i:] if u < t + SEND_WINDOW_S) <= 10
    assert sent[9] == NOW and sent[10] >= NOW + SEND_WINDOW_S  # ten at once, then a window
    assert max(clock.sleeps) <= 0.25


async def test_on_wire_never_waits_without_a_quota() -> None:
    clock = Clock()
    b = board(clock, quota=None)
    for _ in range(1_000):
        await b.on_wire("p")
    assert clock.sleeps == []


async def test_a_paced_provider_waits_for_the_window_then_sends() -> None:
    from app.stages.pressure import PacedProvider

    clock = Clock()
    b = board(clock, quota=2.0)
    b.own({0})
    calls: list[tuple[str, float]] = []

    class Inner:
        name = "inner"

        async def send(self, email: str) -> str:
            calls.append((email, clock.now))
            return "ok"

    paced = PacedProvider(Inner(), b, "p")
    assert paced.name == "inner"  # everything else is the provider's
    for i in range(3):
        assert await paced.send(f"m{i}") == "ok"
    assert [c[0] for c in calls] == ["m0", "m1", "m2"]
    assert calls[1][1] == NOW and calls[2][1] >= NOW + 1.0  # the third waits for a window
