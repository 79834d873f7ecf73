"""PriorityGate (app/stages/priority.py): the order in which render's and route's
per-priority agents get the stage's CPU (issue 14)."""

from __future__ import annotations

import asyncio

from hypothesis import given, settings
from hypothesis import strategies as st

from app.models import PRIORITIES
from app.stages.priority import FAIR_AFTER, PriorityGate, choose

LANES = st.sampled_from(PRIORITIES)


def test_highest_waiting_priority_goes_first() -> None:
    assert choose([], {}) is None
    assert choose(["bulk", "critical", "normal"], {}) == "critical"
    assert choose(["bulk", "normal"], {}) == "normal"
    assert choose(["bulk"], {"bulk": 100}) == "bulk"


def test_a_starving_lane_goes_before_a_higher_one() -> None:
    assert choose(["critical", "bulk"], {"bulk": FAIR_AFTER - 1}) == "critical"
    assert choose(["critical", "bulk"], {"bulk": FAIR_AFTER}) == "bulk"
    # two starving: the most skipped, ties to the higher priority
    assert choose(["normal", "bulk"], {"normal": 9, "bulk": 10}, fair_after=8) == "bulk"
    assert choose(["normal", "bulk"], {"normal": 9, "bulk": 9}, fair_after=8) == "normal"


@given(
    waiting=st.sets(LANES),
    skipped=st.dictionaries(LANES, st.integers(min_value=0, max_value=50)),
    fair_after=st.integers(min_value=1, max_value=20),
)
def test_choose_picks_a_waiting_lane_and_passes_a_higher_one_only_when_starving(
    waiting: set[str], skipped: dict[str, int], fair_after: int
) -> None:
    lane = choose(sorted(waiting), skipped, PRIORITIES, fair_after)
    if not waiting:
        assert lane is None
        return
    assert lane in waiting
    higher = [h for h in PRIORITIES[: PRIORITIES.index(lane)] if h in waiting]
    if higher:
        assert skipped.get(lane, 0) >= fair_after


@settings(max_examples=200)
@given(
    arrivals=st.lists(st.sets(LANES), min_size=1, max_size=200),
    fair_after=st.integers(min_value=1, max_value=10),
)
def test_no_lane_waits_more_than_a_bounded_number_of_grants(
    arrivals: list[set[str]], fair_after: int
) -> None:
    """Replays the gate's bookkeeping: at each step some lanes start waiting (a lane
    waits until it is granted), one grant is made. No waiting lane is passed over
    more than fair_after + (lanes - 1) times, whoever else keeps arriving."""
    waiting: set[str] = set()
    skipped = dict.fromkeys(PRIORITIES, 0)
    worst = 0
    for new in [*arrivals, *[set()] * (len(PRIORITIES) * (fair_after + 3))]:
        waiting |= new
        lane = choose(sorted(waiting), skipped, PRIORITIES, fair_after)
        if lane is None:
            continue
        for other in waiting - {lane}:
            skipped[other] += 1
            worst = max(worst, skipped[other])
        skipped[lane] = 0
        waiting.discard(lane)
    assert not waiting
    assert worst <= fair_after + len(PRIORITIES) - 1


async def _holding(gate: PriorityGate, lane: str, order: list[str], release: asyncio.Event) -> None:
    async with gate.turn(lane):
        order.append(lane)
        await release.wait()


async def test_waiters_are_served_critical_then_normal_then_bulk() -> None:
    gate = PriorityGate()
    order: list[str] = []
    go = asyncio.Event()
    first = asyncio.create_task(_holding(gate, "bulk", order, go))
    await asyncio.sleep(0)
    assert gate.holder == "bulk"
    lanes = ("bulk", "normal", "critical")  # arriving in this order
    tasks = [asyncio.create_task(_holding(gate, lane, order, go)) for lane in lanes]
    await asyncio.sleep(0)
    assert sorted(gate.waiting()) == ["bulk", "critical", "normal"]
    go.set()
    await asyncio.wait_for(asyncio.gather(first, *tasks), 5)
    assert order == ["bulk", "critical", "normal", "bulk"]
    assert gate.holder is None and gate.grants == {"critical": 1, "normal": 1, "bulk": 2}


async def test_bulk_is_not_starved_by_a_stream_of_critical_batches() -> None:
    gate = PriorityGate(fair_after=3)
    await gate.acquire("critical")
    bulk = asyncio.create_task(gate.acquire("bulk"))
    await asyncio.sleep(0)
    served: list[str | None] = []
    for _ in range(8):  # whenever the gate is handed on, a critical batch waits too
        critical = asyncio.create_task(gate.acquire("critical"))
        await asyncio.sleep(0)
        gate.release()
        served.append(gate.holder)
        if gate.holder == "bulk":
            await asyncio.wait_for(bulk, 5)
            gate.release()  # bulk's batch done: the waiting critical one goes
            served.append(gate.holder)
            bulk = asyncio.create_task(gate.acquire("bulk"))
        await asyncio.wait_for(critical, 5)
        await asyncio.sleep(0)
    # bulk waits from the start: 3 passes; re-queued after its batch: the critical
    # batch already waiting goes, then 3 more passes
    assert served[:9] == ["critical"] * 3 + ["bulk"] + ["critical"] * 4 + ["bulk"]
    gate.release()
    await asyncio.wait_for(bulk, 5)


async def test_a_cancelled_waiter_does_not_stall_the_gate() -> None:
    gate = PriorityGate()
    await gate.acquire("bulk")
    critical = asyncio.create_task(gate.acquire("critical"))
    normal = asyncio.create_task(gate.acquire("normal"))
    await asyncio.sleep(0)
    critical.cancel()
    await asyncio.sleep(0)
    gate.release()
    await asyncio.wait_for(normal, 5)
    assert gate.holder == "normal" and gate.grants["critical"] == 0
    gate.release()
    assert gate.holder is None and gate.waiting() == []


async def test_pause_hands_over_to_a_higher_lane_only() -> None:
    gate = PriorityGate()
    await gate.acquire("normal")
    bulk = asyncio.create_task(gate.acquire("bulk"))
    await asyncio.sleep(0)
    await gate.pause("normal")  # only a lower lane waits: keep going
    assert gate.holder == "normal" and gate.grants["normal"] == 1
    critical_done: list[str] = []

    async def critical() -> None:
        async with gate.turn("critical"):
            critical_done.append(str(gate.holder))

    task = asyncio.create_task(critical())
    await asyncio.sleep(0)
    await asyncio.wait_for(gate.pause("normal"), 5)  # hands over, comes back
    assert critical_done == ["critical"] and gate.holder == "normal"
    await task
    gate.release()
    await asyncio.wait_for(bulk, 5)
    assert gate.holder == "bulk"


async def test_pause_idles_while_a_higher_lane_gathers_its_batch() -> None:
    """Critical records queued but not yet a batch: the lower lane idles (loop turns
    only) until critical asks for the gate, then hands it over; without the idling it
    went on, and critical's batch filled one record per lower-lane record."""
    gate = PriorityGate()
    queued = {"critical": 3}
    gate.queued["critical"] = lambda: queued["critical"]
    await gate.acquire("normal")
    order: list[str] = []

    async def critical_agent() -> None:
        for _ in range(2):  # Faust's drainer: one record per loop turn, a batch of 2
            queued["critical"] -= 1
            await asyncio.sleep(0)
        async with gate.turn("critical"):  # the batch is full: one record still queued
            order.append("critical")

    task = asyncio.create_task(critical_agent())
    await asyncio.wait_for(gate.pause("normal", within=5.0), 5)
    order.append("normal")
    assert order == ["critical", "normal"] and gate.holder == "normal"
    await task


async def test_pause_idles_no_longer_than_the_batch_window() -> None:
    gate = PriorityGate()
    gate.queued["critical"] = lambda: 1  # queued, but its agent never asks (busy)
    gate.queued["bulk"] = lambda: 100  # a lower lane's queue is no reason to idle
    await gate.acquire("normal")
    loop = asyncio.get_running_loop()
    start = loop.time()
    await asyncio.wait_for(gate.pause("normal", within=0.01), 5)
    assert gate.holder == "normal"
    assert loop.time() - start >= 0.01  # it did idle, for the window
    gate.queued["critical"] = lambda: 0
    turns = 0

    async def count() -> None:
        nonlocal turns
        while True:
            turns += 1
            await asyncio.sleep(0)

    counter = asyncio.create_task(count())
    await gate.pause("normal", within=5.0)  # nothing queued above: one turn only
    counter.cancel()
    assert turns <= 2 and gate.holder == "normal"
    assert gate.higher_queued("critical") is False  # nothing is above critical
