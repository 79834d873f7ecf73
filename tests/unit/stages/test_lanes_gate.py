"""LaneGate counts concurrent sends and recovers from a figure that changed without a
wake-up (issue 17 pt 5: survivors of the mutation run)."""

from __future__ import annotations

import asyncio

from app.stages.lanes import LaneGate


def test_each_send_in_flight_holds_lower_lanes() -> None:
    gate = LaneGate()
    gate.enter("critical")
    gate.enter("critical")
    gate.leave("critical")
    assert gate.active["critical"] == 1
    assert not gate.clear_for("normal")  # one critical send is still in flight
    gate.leave("critical")
    assert gate.active["critical"] == 0
    assert gate.clear_for("normal") and gate.clear_for("bulk")


async def test_a_waiter_sees_a_figure_that_changed_without_a_wake_up() -> None:
    # A figure written directly (no set_backlog/leave, so no notification) is still
    # picked up by the waiter's polling: wait_turn returns instead of waiting for ever
    # or failing on its poll timeout.
    gate = LaneGate()
    gate.set_backlog("critical", 2)
    waiter = asyncio.create_task(gate.wait_turn("bulk", poll_s=0.001))
    for _ in range(20):  # let it poll (and time out) several times while blocked
        await asyncio.sleep(0.002)
        assert not waiter.done()
    gate.backlog["critical"] = 0  # stale figure corrected behind the gate's back
    await asyncio.wait_for(waiter, 5)
    assert waiter.exception() is None


async def test_a_waiter_with_the_default_poll_also_recovers_from_a_silent_change() -> None:
    gate = LaneGate()
    gate.enter("normal")
    waiter = asyncio.create_task(gate.wait_turn("bulk"))
    await asyncio.sleep(0)
    assert not waiter.done()
    gate.active["normal"] = 0  # no leave(): nothing wakes the waiter but its poll
    await asyncio.wait_for(waiter, 5)
    assert waiter.exception() is None


async def test_lower_lanes_are_never_held_by_a_lower_lane() -> None:
    gate = LaneGate()
    gate.set_backlog("bulk", 5)
    gate.enter("bulk")
    gate.set_backlog("normal", 5)
    # critical has nothing above it; normal is not held by bulk
    await asyncio.wait_for(gate.wait_turn("critical"), 5)
    await asyncio.wait_for(gate.wait_turn("normal"), 5)
    assert not gate.clear_for("bulk")


async def _woken(gate: LaneGate, change: object) -> bool:
    """Whether ``change`` (a callable) wakes a waiter of ``gate.changed`` (a long poll)."""
    waiter = asyncio.create_task(gate.changed(poll_s=60))
    for _ in range(3):
        await asyncio.sleep(0)
    assert not waiter.done()
    change()  # type: ignore[operator]
    for _ in range(5):
        await asyncio.sleep(0)
    woken = waiter.done()
    waiter.cancel()
    return woken


async def test_every_change_wakes_waiters_and_nothing_else_does() -> None:
    gate = LaneGate()
    assert await _woken(gate, lambda: gate.set_backlog("critical", 3))
    assert not await _woken(gate, lambda: gate.set_backlog("critical", 3))  # unchanged
    gate.enter("normal")
    assert await _woken(gate, lambda: gate.leave("normal"))
    assert await _woken(gate, lambda: gate.take("normal"))


async def test_changed_returns_after_its_poll_without_a_change() -> None:
    gate = LaneGate()
    await asyncio.wait_for(gate.changed(poll_s=0.001), 5)


def test_a_lane_earns_turns_only_from_lanes_above_it() -> None:
    gate = LaneGate(every=2)
    for _ in range(20):
        gate.take("bulk")  # by right (nothing above): earns nobody a turn
    assert gate.credit == {"critical": 0, "normal": 0, "bulk": 0}
    assert gate.by_credit["bulk"] == 0 and gate.taken["bulk"] == 20
    gate.set_backlog("critical", 5)
    gate.set_backlog("normal", 5)
    gate.take("normal")
    assert gate.credit == {"critical": 0, "normal": 0, "bulk": 1}
    gate.take("critical")
    assert gate.credit == {"critical": 0, "normal": 1, "bulk": 2}
    assert gate.may_take("bulk") and not gate.may_take("normal")
    gate.take("bulk")
    assert gate.credit["bulk"] == 0 and gate.by_credit["bulk"] == 1


def test_a_negative_turn_interval_says_what_is_wrong() -> None:
    try:
        LaneGate(every=-3)
    except ValueError as exc:
        assert str(exc) == "every must be 0 or more, not -3"
    else:
        raise AssertionError("LaneGate(every=-3) was accepted")
    assert LaneGate(every=0).every == 0


def test_a_turn_for_every_message_above_when_every_is_one() -> None:
    gate = LaneGate(every=1)
    gate.set_backlog("normal", 5)
    assert not gate.may_take("bulk")
    gate.take("normal")
    assert gate.may_take("bulk")  # one taken above: one turn
    gate.take("bulk")
    assert not gate.may_take("bulk") and gate.by_credit["bulk"] == 1
