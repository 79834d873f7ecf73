from __future__ import annotations

import asyncio

import pytest

from app.stages.lanes import LaneGate, waiting_work


async def test_bulk_waits_for_critical_backlog() -> None:
    gate = LaneGate()
    gate.set_backlog("critical", 3)
    assert gate.clear_for("critical") and not gate.clear_for("normal")
    waiter = asyncio.create_task(gate.wait_turn("bulk"))
    await asyncio.sleep(0.02)
    assert not waiter.done()
    gate.set_backlog("critical", 0)
    await asyncio.wait_for(waiter, 1)


async def test_active_higher_lane_blocks_lower() -> None:
    gate = LaneGate()
    gate.enter("normal")
    assert gate.clear_for("critical") and gate.clear_for("normal")
    assert not gate.clear_for("bulk")
    gate.leave("normal")
    assert gate.clear_for("bulk")


def test_unknown_backlog_blocks_until_first_figure() -> None:
    gate = LaneGate(start_unknown=True)
    assert not gate.clear_for("bulk")
    gate.set_backlog("critical", 0)
    gate.set_backlog("normal", 0)
    assert gate.clear_for("bulk")


def test_a_stalled_consumer_counts_only_what_a_lane_can_take() -> None:
    # Bulk's buffer is full, so the consumer waits on it and critical's lag (40)
    # cannot arrive: holding bulk back for that lag would wait for ever.
    gate = LaneGate()
    gate.set_backlog("critical", waiting_work(lag=40, buffered=0, delivery_stalled=True))
    assert gate.clear_for("bulk")
    # Critical messages already in its buffer still go first.
    gate.set_backlog("critical", waiting_work(lag=40, buffered=5, delivery_stalled=True))
    assert not gate.clear_for("bulk")
    # Flowing again: the lag counts.
    gate.set_backlog("critical", waiting_work(lag=40, buffered=0, delivery_stalled=False))
    assert not gate.clear_for("bulk")


def test_a_held_back_lane_earns_one_turn_per_ten_taken_above_it() -> None:
    gate = LaneGate()
    gate.set_backlog("normal", 1_000)  # normal never runs dry
    for _ in range(9):
        gate.take("normal")
    assert not gate.may_take("bulk")
    gate.take("normal")
    assert gate.may_take("bulk") and not gate.clear_for("bulk")
    gate.take("bulk")  # by the earned turn
    assert gate.by_credit["bulk"] == 1 and not gate.may_take("bulk")
    # at most one turn is banked, however long bulk did not take it
    for _ in range(100):
        gate.take("normal")
    gate.take("bulk")
    assert not gate.may_take("bulk") and gate.by_credit["bulk"] == 2
    assert gate.taken == {"critical": 0, "normal": 110, "bulk": 2}


def test_critical_takes_earn_turns_for_normal_and_bulk() -> None:
    gate = LaneGate(every=3)
    gate.set_backlog("critical", 50)
    for _ in range(3):
        gate.take("critical")
    assert gate.may_take("normal") and gate.may_take("bulk")
    gate.take("normal")
    assert not gate.may_take("normal") and gate.credit["bulk"] == 3  # normal adds, capped


def test_a_lane_going_by_right_keeps_its_earned_turn() -> None:
    gate = LaneGate(every=2)
    gate.take("normal")
    gate.take("normal")
    assert gate.credit["bulk"] == 2
    gate.take("bulk")  # nothing above has work: by right
    assert gate.by_credit["bulk"] == 0 and gate.credit["bulk"] == 2


def test_strict_priority_never_gives_a_turn() -> None:
    gate = LaneGate(every=0)
    gate.set_backlog("normal", 5)
    for _ in range(1_000):
        gate.take("normal")
    assert not gate.may_take("bulk")


@pytest.mark.parametrize("every", [-1, -(10**9)])
def test_a_negative_turn_interval_is_refused(every: int) -> None:
    with pytest.raises(ValueError):
        LaneGate(every=every)
