from __future__ import annotations

import asyncio

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
