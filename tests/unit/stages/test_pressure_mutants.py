"""Breaker, rate-limit view and share decisions at their edges, exactly (issue 17 pt 5:
survivors of the mutation run of app/stages/pressure.py): thresholds are strict where
the docs say "passes" / "under", a probe slot is given back once, a late answer never
moves an open breaker, a snapshot round-trips, and a share never bursts past the
quota."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest

from app.settings import ProviderPolicy
from app.stages.lanes import LaneGate
from app.stages.pressure import Breaker, PressureBoard, RateLimitView, Share
from app.tables.pressure import key_for


def policy(**over: Any) -> ProviderPolicy:
    fields: dict[str, Any] = {
        "name": "p",
        "breaker_error_threshold": 0.5,
        "breaker_window_s": 60.0,
        "breaker_min_requests": 2,
        "breaker_cooldown_s": 30.0,
        "breaker_half_open_probes": 2,
    }
    fields.update(over)
    return ProviderPolicy(**fields)


def opened(b: Breaker, at: float = 100.0) -> Breaker:
    for _ in range(b.policy.breaker_min_requests):
        b.record(False, at)
    assert b.state == "open" and b.opened_at == at
    return b


def half_open(b: Breaker, at: float = 100.0) -> float:
    """Open at ``at``, cooled down; returns the time the first probe may go."""
    opened(b, at)
    return at + b.policy.breaker_cooldown_s


# -- Breaker ----------------------------------------------------------------------------


def test_error_threshold_must_be_passed_not_reached() -> None:
    b = Breaker(policy())
    b.record(False, 1.0)
    b.record(True, 2.0)  # 1 of 2 = 0.5: at the threshold, not past it
    assert b.state == "closed"
    b.record(False, 3.0)  # 2 of 3
    assert b.state == "open"


def test_a_failure_leaving_the_window_stops_counting() -> None:
    b = Breaker(policy(breaker_min_requests=5))
    b.record(False, 0.0)
    b.record(True, 61.0)  # the failure at 0 left the 60 s window
    assert b.error_rate(61.0) == (0.0, 1)
    assert b.errors == 0


def test_a_success_leaving_the_window_keeps_the_failures() -> None:
    b = Breaker(policy(breaker_min_requests=5))
    b.record(True, 0.0)
    b.record(False, 61.0)
    assert b.error_rate(61.0) == (1.0, 1)


def test_a_late_answer_never_moves_an_open_breaker() -> None:
    b = opened(Breaker(policy(breaker_min_requests=1)), at=100.0)
    b.record(False, 110.0)  # an answer to a request sent before the trip
    b.record(True, 111.0)
    assert b.state == "open" and b.opened_at == 100.0
    assert b.error_rate(111.0) == (0.0, 0)


def test_half_open_closes_after_exactly_the_configured_probes() -> None:
    b = Breaker(policy(breaker_half_open_probes=2))
    t = half_open(b)
    assert b.admit(t) == 0.0 and b.state == "half_open"
    b.record(True, t)
    assert b.state == "half_open" and b.probes_ok == 1  # one of two
    assert b.admit(t) == 0.0
    b.record(True, t)
    assert b.state == "closed"


def test_half_open_probes_count_from_zero_each_time() -> None:
    b = Breaker(policy(breaker_half_open_probes=2))
    t = half_open(b)
    b.admit(t)
    b.record(True, t)  # one good probe, then a failed one reopens
    b.admit(t)
    b.record(False, t + 1)
    assert b.state == "open" and b.opened_at == t + 1
    t2 = t + 1 + 30.0
    b.admit(t2)
    assert b.state == "half_open" and (b.probes_sent, b.probes_ok) == (1, 0)
    b.record(True, t2)
    assert b.state == "half_open"  # the earlier good probe does not count again


def test_after_closing_the_window_starts_empty() -> None:
    b = Breaker(policy(breaker_half_open_probes=1, breaker_min_requests=4,
                       breaker_error_threshold=0.2))  # fmt: skip
    t = half_open(b)
    b.admit(t)
    b.record(True, t)
    assert b.state == "closed" and b.errors == 0 and b.error_rate(t) == (0.0, 0)
    for i in range(4):
        b.record(True, t + i)
    assert b.state == "closed" and b.error_rate(t + 3) == (0.0, 4)


def test_probes_in_flight_hold_others_only_briefly() -> None:
    b = Breaker(policy(breaker_half_open_probes=1))
    t = half_open(b)
    assert b.admit(t) == 0.0
    wait = b.peek(t)
    assert 0.0 < wait <= 0.1  # a short poll for the probe's answer, not a cooldown
    assert b.admit(t) == wait and b.probes_sent == 1


def test_a_released_probe_slot_is_given_back_once() -> None:
    b = Breaker(policy(breaker_half_open_probes=2))
    t = half_open(b)
    assert b.admit(t) == 0.0 and b.admit(t) == 0.0
    assert b.peek(t) > 0  # both slots taken
    b.release_probe()
    assert b.probes_sent == 1
    assert b.admit(t) == 0.0  # the one slot given back
    assert b.peek(t) > 0
    b.release_probe()
    b.release_probe()
    b.release_probe()  # more releases than probes: never below zero
    assert b.probes_sent == 0
    assert b.admit(t) == 0.0 and b.admit(t) == 0.0
    assert b.admit(t) > 0  # still only two probes


# -- RateLimitView.low --------------------------------------------------------------------


@pytest.mark.parametrize(
    ("remaining", "reset_at", "now", "pace", "low"),
    [
        (None, 110.0, 100.0, None, False),  # no Remaining
        (10, None, 100.0, None, False),  # no reset time
        (10, 100.0, 100.0, None, False),  # the reset is now
        (10, 99.0, 100.0, None, False),  # the reset passed
        (100, 110.0, 100.0, None, False),  # at the threshold: not under it
        (5000, 110.0, 100.0, None, False),
        (99, 110.0, 100.0, None, True),  # under it, no pace: low
        (50, 101.0, 100.0, 50.0, False),  # 50 left, 50 needed at our pace: enough
        (49, 101.0, 100.0, 50.0, True),  # one short
    ],
)
def test_low_remaining(
    remaining: int | None, reset_at: float | None, now: float, pace: float | None, low: bool
) -> None:
    view = RateLimitView(remaining=remaining, reset_at=reset_at)
    assert view.low(100, now, pace) is low


# -- Share -------------------------------------------------------------------------------


def limited(**over: Any) -> ProviderPolicy:
    fields: dict[str, Any] = {"quota_per_s": 100.0, "target_utilisation": 0.5,
                              "critical_reserve": 0.1}  # fmt: skip
    fields.update(over)
    return policy(**fields)


def test_a_share_of_no_partitions_sends_nothing() -> None:
    share = Share(limited(), partitions=4, owned=0)
    assert share.owned == 0
    assert share.total.rate == 0.0 and share.non_critical.rate == 0.0
    assert share.total.wait(0.0) == float("inf")
    full = Share(limited(), partitions=4)  # -1: all of them
    assert full.owned == 4 and full.total.rate == pytest.approx(60.0)
    full.resize(2)
    assert full.owned == 2 and full.total.rate == pytest.approx(30.0)


def test_critical_never_passes_the_whole_quota() -> None:
    share = Share(limited(target_utilisation=0.9, critical_reserve=0.3), partitions=1)
    assert share.total.rate == pytest.approx(100.0)  # min(1, 1.2) of the quota
    assert share.non_critical.rate == pytest.approx(90.0)


def test_burst_is_a_tenth_of_the_rate_at_most_and_one_at_least() -> None:
    big = Share(limited(quota_per_s=1000.0), partitions=1)  # rates 600 and 500
    assert big.total.burst == pytest.approx(60.0)
    assert big.non_critical.burst == pytest.approx(50.0)
    small = Share(limited(quota_per_s=5.0), partitions=1)  # rates 3 and 2.5
    assert small.total.burst == 1.0 and small.non_critical.burst == 1.0
    # a second request right away waits one interval: no burst at a small rate
    small.non_critical.take(0.0)
    assert small.non_critical.wait(0.0) == pytest.approx(1 / 2.5)


def test_no_burst_when_the_meter_runs_at_the_whole_quota() -> None:
    # total = quota x min(1, 0.5 + 0.5): a burst on top would pass the quota
    share = Share(limited(quota_per_s=1000.0, critical_reserve=0.5), partitions=1)
    assert share.total.rate == pytest.approx(1000.0)
    assert share.total.burst == 1.0


def test_snapshot_pushes_meter_times_one_flush_and_one_interval_ahead() -> None:
    share = Share(limited(), partitions=1)  # total 60/s, non-critical 50/s
    share.total.tat, share.non_critical.tat = 1000.5, 999.0
    snap = share.snapshot(1000.0, flush_every_s=0.5)
    ahead = 0.5 + 1 / 60
    assert snap["tat"] == pytest.approx(1000.5 + ahead)
    assert snap["tat_nc"] == pytest.approx(1000.0 + ahead)  # max(tat, now)
    assert snap["breaker"] == "closed" and snap["at"] == 1000.0


def test_snapshot_of_an_unlimited_provider_holds_no_meter_times() -> None:
    share = Share(policy(), partitions=1)
    share.total.tat = share.non_critical.tat = 5.0
    snap = share.snapshot(1000.0, 0.5)
    assert (snap["tat"], snap["tat_nc"]) == (0.0, 0.0)


def test_a_snapshot_round_trips_into_a_new_share() -> None:
    old = Share(limited(), partitions=1)
    old.total.tat, old.non_critical.tat = 2000.0, 1500.0
    snap = old.snapshot(1000.0, 0.5)
    new = Share(limited(), partitions=1)
    new.restore(snap)
    assert new.total.tat == snap["tat"] and new.non_critical.tat == snap["tat_nc"]
    assert new.non_critical.tat != new.total.tat


def test_restore_of_an_empty_or_partial_snapshot_changes_nothing() -> None:
    share = Share(limited(), partitions=1)
    share.restore({})
    assert (share.total.tat, share.non_critical.tat) == (0.0, 0.0)
    assert share.breaker.state == "closed" and share.breaker.opened_at == 0.0
    share.restore({"tat": 7.0})
    assert (share.total.tat, share.non_critical.tat) == (7.0, 0.0)
    share.restore({"breaker": "closed", "opened_at": 9.0})
    assert share.breaker.state == "closed" and share.breaker.opened_at == 0.0


def test_restore_of_an_open_breaker_without_a_time() -> None:
    share = Share(limited(), partitions=1)
    share.restore({"breaker": "open"})
    assert share.breaker.state == "open" and share.breaker.opened_at == 0.0


def test_a_half_open_snapshot_restarts_as_open() -> None:
    share = Share(limited(), partitions=1)
    share.restore({"breaker": "half_open", "opened_at": 50.0})
    assert share.breaker.state == "open" and share.breaker.opened_at == 50.0


def test_a_stored_open_breaker_opens_a_closed_one_whatever_its_time() -> None:
    share = Share(limited(), partitions=1)
    share.breaker.opened_at = 500.0  # it was open once, and closed again
    share.restore({"breaker": "open", "opened_at": 400.0})
    assert share.breaker.state == "open" and share.breaker.opened_at == 400.0


def test_an_older_stored_trip_does_not_move_an_open_breaker() -> None:
    share = Share(limited(), partitions=1)
    share.breaker.state, share.breaker.opened_at = "open", 500.0
    share.restore({"breaker": "open", "opened_at": 400.0})
    assert share.breaker.opened_at == 500.0
    share.restore({"breaker": "open", "opened_at": 600.0})  # a later trip wins
    assert share.breaker.opened_at == 600.0


def test_a_half_open_breaker_is_not_reopened_by_the_snapshot_of_its_own_trip() -> None:
    share = Share(limited(), partitions=1)
    share.breaker.state, share.breaker.opened_at = "half_open", 500.0
    share.restore({"breaker": "open", "opened_at": 500.0})
    assert share.breaker.state == "half_open"


# -- PressureBoard ------------------------------------------------------------------------


def test_persist_breaker_writes_under_the_messages_partition() -> None:
    store: dict[bytes, Any] = {}
    board = PressureBoard({"p": limited()}, 4, store, key_for, clock=lambda: 1000.0)
    board.persist_breaker("p", 3, 0.5)  # before the assignment named partition 3
    assert board.owned == {3}
    assert list(store) == [key_for("p", 3, 4)]
    assert store[key_for("p", 3, 4)]["at"] == 1000.0


async def test_normal_pays_once_when_remaining_lasts_at_our_pace() -> None:
    # Remaining (10) is under the threshold (100), but at our pace (50/s) only 5 are
    # needed before the reset 0.1 s away: normal pays its plain cost.
    now = 1000.0
    board = PressureBoard({"p": limited()}, 1, {}, key_for, clock=lambda: now)
    board.observe("p", 1000, 10, now + 0.1)
    await asyncio.wait_for(board.acquire("p", 0, "normal", LaneGate()), 5)
    share = board.state("p", 0)
    assert share.non_critical.tat == pytest.approx(now + 1 / 50)
    assert share.total.tat == pytest.approx(now + 1 / 60)
    # and when it does not last, normal pays double
    board.observe("p", 1000, 1, now + 0.1)
    share.total.tat = share.non_critical.tat = 0.0
    await asyncio.wait_for(board.acquire("p", 0, "normal", LaneGate()), 5)
    assert share.non_critical.tat == pytest.approx(now + 2 / 50)


# -- the send window (PressureBoard.on_wire; survivors of the 18:32 run) -----------------------


def test_a_request_exactly_one_window_old_no_longer_counts() -> None:
    from app.stages.pressure import SendWindow

    # a time at which (now - w) + w - now is one ulp above 0 in floats: a request
    # exactly one window old that still counted would make this wait 1e-16 s
    now, window_s = 0.9424876140084605, 0.3
    w = SendWindow()
    w.take(now - window_s)
    assert w.wait(now, limit=1, window_s=window_s) == 0.0
    assert list(w.sent) == []


def test_a_worker_with_a_sliver_of_the_quota_may_still_send_one() -> None:
    b = PressureBoard({"p": policy(quota_per_s=1.0)}, 4, {}, key_for, clock=lambda: 0.0)
    b.own({0})
    assert b.send_limit("p") == 1  # 1/4 of one request per window, rounded down, is 0
    b.own({0, 1, 2, 3})
    assert b.send_limit("p") == 1


async def test_each_provider_has_its_own_send_window_and_waits_alone() -> None:
    now = [100.0]
    sleeps: list[tuple[str, float]] = []
    waiting = asyncio.Event()
    release = asyncio.Event()

    async def sleep(s: float) -> None:
        sleeps.append(("sleep", s))
        waiting.set()
        await release.wait()
        now[0] += 5.0

    pols = {"a": policy(name="a", quota_per_s=2.0), "b": policy(name="b", quota_per_s=2.0)}
    b = PressureBoard(pols, 1, {}, key_for, clock=lambda: now[0], sleep=sleep)
    b.own({0})
    for _ in range(2):
        await b.on_wire("a")
    stuck = asyncio.create_task(b.on_wire("a"))  # a's window is full: waits
    await asyncio.wait_for(waiting.wait(), 5)
    # b has sent nothing: its window is its own, and a's wait does not hold it
    for _ in range(2):
        await asyncio.wait_for(b.on_wire("b"), 5)
    assert len(sleeps) == 1 and not stuck.done()
    release.set()
    await asyncio.wait_for(stuck, 5)
    assert [len(b._windows[p].sent) for p in ("a", "b")] == [1, 2]  # a's two left its window
