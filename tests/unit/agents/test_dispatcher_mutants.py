"""The Dispatcher's stall fence and revocation bookkeeping at their edges (issue 17 pt 5:
survivors of the mutation run of app/dispatcher.py): a stall is a gap strictly longer
than ``stall_s``, suspicion ends strictly after a session timeout, parked work is resumed
or abandoned one by one, and revocations add up."""

from __future__ import annotations

import asyncio
import logging
from dataclasses import dataclass, field
from typing import Any

import pytest

from app.dispatcher import Dispatcher
from app.stages.common import Emission, Origin
from tests.plugins.dispatcher import until, work

LANES = ("critical", "normal", "bulk")
P0, P1, P2 = ("lane", 0), ("lane", 1), ("lane", 2)


@dataclass
class Group:
    owned: set[Any] = field(default_factory=lambda: {P0, P1, P2})

    def owns(self, tp: Any, generation: int | None) -> bool:
        return tp in self.owned


@dataclass
class Stage:
    """Waits at ``gate``, then passes the fence (as the ledger's in_flight mark does)."""

    fence: Any = None
    gate: asyncio.Event = field(default_factory=asyncio.Event)
    sent: list[int] = field(default_factory=list)

    async def handle(self, payload: bytes, origin: Origin, lane: str) -> Emission | None:
        await self.gate.wait()
        self.fence()
        self.sent.append(origin.offset)
        return None


def make(now: list[float], group: Group | None = None) -> tuple[Dispatcher, Stage]:
    stage = Stage()
    d = Dispatcher(
        handle=stage.handle,
        deliver=lambda e: asyncio.sleep(0),
        membership=group or Group(),
        lanes=LANES,
        stall_s=3.0,
        session_timeout_s=10.0,
        clock=lambda: now[0],
    )
    stage.fence = d.fence
    return d, stage


def test_a_stall_is_a_gap_longer_than_stall_s(caplog: pytest.LogCaptureFixture) -> None:
    now = [100.0]
    d, _ = make(now)
    caplog.set_level(logging.WARNING, logger="app.dispatcher")
    d.heartbeat()
    now[0] = 103.0  # exactly stall_s: a slow tick, not a stall
    d.heartbeat()
    assert d.suspect_since is None
    now[0] = 106.5  # 3.5 s since the last beat
    d.heartbeat()
    assert d.suspect_since == 106.5
    assert [r.getMessage() for r in caplog.records] == ["event loop stalled 3.5 s: sends fenced"]


def test_suspicion_ends_strictly_after_a_session_timeout() -> None:
    now = [0.0]
    d, _ = make(now)
    d.heartbeat()
    now[0] = 5.0
    d.heartbeat()
    assert d.suspect_since == 5.0
    now[0] = 7.0  # beats again, 2 s after the stall: still suspect
    d.heartbeat()
    assert d.suspect_since == 5.0
    now[0] = 15.0  # exactly the session timeout since the stall
    d.heartbeat()
    assert d.suspect_since == 5.0
    now[0] = 15.5
    d.heartbeat()
    assert d.suspect_since is None


async def test_parked_work_resumes_or_is_abandoned_one_by_one() -> None:
    now = [0.0]
    group = Group()
    d, stage = make(now, group)
    acks: list[tuple[Any, int]] = []
    d.heartbeat()
    for tp, offset in ((P0, 0), (P1, 1), (P2, 2)):
        assert await d.admit("normal", work(tp, offset, acks))
    now[0] = 30.0
    d.heartbeat()  # a stall: every send is fenced and parked
    stage.gate.set()
    await until(lambda: d.stats.fenced == 3)
    assert sorted(w.offset for w in d.parked) == [0, 1, 2]
    group.owned = {P0}  # P1 and P2 went to another member meanwhile
    now[0] = 41.0
    d.heartbeat()
    await until(lambda: acks == [(P0, 0)])
    assert d.stats.abandoned == 2 and stage.sent == [0] and d.parked == []


async def test_revocations_add_up_and_keep_other_partitions_parked() -> None:
    now = [0.0]
    d, stage = make(now)
    acks: list[tuple[Any, int]] = []
    d.heartbeat()
    for tp, offset in ((P0, 0), (P1, 1), (P2, 2)):
        await d.admit("normal", work(tp, offset, acks))
    now[0] = 30.0
    d.heartbeat()
    stage.gate.set()
    await until(lambda: d.stats.fenced == 3)
    await d.revoke({P0}, bound_s=0.0)
    assert sorted(w.offset for w in d.parked) == [1, 2]  # the others stay parked
    await d.revoke({P1}, bound_s=0.0)
    assert [w.offset for w in d.parked] == [2]
    assert not d.admissible(work(P0, 9, acks)) and not d.admissible(work(P1, 9, acks))
    assert d.admissible(work(P2, 9, acks))


async def test_a_new_assignment_clears_parked_work_and_reopens_partitions() -> None:
    now = [0.0]
    d, stage = make(now)
    acks: list[tuple[Any, int]] = []
    d.heartbeat()
    await d.admit("normal", work(P0, 0, acks))
    now[0] = 30.0
    d.heartbeat()
    stage.gate.set()
    await until(lambda: d.stats.fenced == 1)
    await d.revoke({P1}, bound_s=0.0)
    d.assigned({P0, P1})
    assert d.parked == [] and d.suspect_since is None
    assert d.admissible(work(P1, 5, acks))
    await d.revoke({P0}, bound_s=0.0)  # works on the fresh (empty) parked list
    assert d.parked == []


async def test_a_lane_takes_only_below_its_in_flight_limit_and_lookahead() -> None:
    now = [0.0]
    d, stage = make(now)
    d.lane_in_flight, d.lookahead = 2, 5
    acks: list[tuple[Any, int]] = []
    assert d.can_take("normal")
    await d.admit("normal", work(P0, 0, acks))
    assert d.pending("normal") == 1 and d.can_take("normal")
    await d.admit("normal", work(P0, 1, acks))
    assert not d.can_take("normal")  # two in flight: the limit
    stage.gate.set()  # both pass the fence: on the wire, no longer pending
    await until(lambda: d.stats.done == 2)
    assert d.pending("normal") == 0 and d.can_take("normal")


async def test_pending_counts_what_is_not_on_the_wire_yet() -> None:
    now = [0.0]
    d, _ = make(now)
    acks: list[tuple[Any, int]] = []
    hold = asyncio.Event()

    async def handle(payload: bytes, origin: Origin, lane: str) -> None:
        if origin.offset == 0:
            d.fence()  # on the wire
            await hold.wait()
        else:
            await hold.wait()  # still waiting for its pace
        return None

    d.handle = handle
    await d.admit("normal", work(P0, 0, acks))
    await d.admit("normal", work(P0, 1, acks))
    await until(lambda: d.wire["normal"] == 1)
    assert d.active["normal"] == 2 and d.pending("normal") == 1
    hold.set()
    await until(lambda: d.stats.done == 2)


async def test_turn_notices_a_gate_that_opened_without_telling() -> None:
    now = [0.0]
    d, _ = make(now)
    open_ = [False]
    taken: list[str] = []
    d.may_take = lambda lane: open_[0]
    d.take = taken.append
    waiter = asyncio.create_task(d.turn("bulk"))
    for _ in range(5):
        await asyncio.sleep(0)
    assert not waiter.done()
    open_[0] = True  # the gate's figures changed; nothing notified the dispatcher
    await asyncio.wait_for(waiter, 5)
    assert taken == ["bulk"]


async def test_a_revocation_returns_even_when_a_task_will_not_unwind() -> None:
    now = [0.0]
    d, _ = make(now)
    acks: list[tuple[Any, int]] = []
    forever = asyncio.Event()

    async def stubborn(payload: bytes, origin: Origin, lane: str) -> None:
        d.fence()
        while not forever.is_set():
            try:
                await forever.wait()
            except asyncio.CancelledError:
                continue  # an adapter that swallows cancellation

    d.handle = stubborn
    await d.admit("normal", work(P0, 0, acks))
    await until(lambda: d.wire["normal"] == 1)
    await asyncio.wait_for(d.revoke({P0}, bound_s=0.0), 10)
    assert not d.admissible(work(P0, 1, acks)) and acks == []
    forever.set()  # let it end
    await until(lambda: not d.works)


async def test_every_outcome_is_counted_once(caplog: pytest.LogCaptureFixture) -> None:
    now = [0.0]
    group = Group()
    d, stage = make(now, group)
    lanes_seen: list[str] = []
    errors: list[str] = []
    fatal: list[BaseException] = []
    d.on_fatal = fatal.append

    async def handle(payload: bytes, origin: Origin, lane: str) -> Emission | None:
        lanes_seen.append(lane)
        await stage.gate.wait()
        try:
            d.fence()
        except BaseException as exc:
            errors.append(str(exc))
            raise
        if origin.offset == 9:
            raise RuntimeError("produce failed")  # an infrastructure fault
        return None

    d.handle = handle
    acks: list[tuple[Any, int]] = []
    for offset in (0, 1, 2):
        assert await d.admit("critical", work(P0, offset, acks))
    assert await d.admit("bulk", work(P1, 5, acks))
    assert await d.admit("bulk", work(P1, 6, acks))
    assert await d.admit("normal", work(P2, 9, acks))
    assert d.stats.admitted == 6
    assert {offset: set(tasks) for offset, tasks in d.tasks.items()} == {
        P0: {0, 1, 2}, P1: {5, 6}, P2: {9}
    }
    assert all(d.works[t].offset == off for tasks in d.tasks.values() for off, t in tasks.items())
    group.owned = {P0, P2}  # P1 moved away (no revocation seen yet): its sends are fenced
    caplog.set_level(logging.CRITICAL, logger="app.dispatcher")
    stage.gate.set()
    await until(lambda: not d.works)
    assert sorted(lanes_seen) == ["bulk", "bulk", "critical", "critical", "critical", "normal"]
    assert d.stats.done == 3 and sorted(acks) == [(P0, 0), (P0, 1), (P0, 2)]
    assert d.stats.fenced == 2 and d.stats.abandoned == 2 and d.parked == []
    assert errors == ["('lane', 1):5: not owned by this member now",
                      "('lane', 1):6: not owned by this member now"]  # fmt: skip
    assert d.tasks == {}  # every finished task is forgotten
    # (the exception's text may be redacted by the log filters: its class is enough)
    [line] = [
        r.getMessage()
        for r in caplog.records
        if r.name == "app.dispatcher" and r.levelno == logging.CRITICAL
    ]
    # (the redaction filter may also replace the partition's topic string by '…')
    assert line.startswith("dispatch: normal at ('") and line.endswith("')")
    assert "', 2):9 not done: RuntimeError(" in line
    assert [str(e) for e in fatal] == ["produce failed"]
    for offset in (7, 8):
        assert not await d.admit("bulk", work(P1, offset, acks))
    assert d.stats.dropped == 2 and d.stats.admitted == 6


async def test_admission_waiting_for_a_slot_notices_a_lost_partition() -> None:
    now = [0.0]
    group = Group()
    d, stage = make(now, group)
    d.lane_in_flight = 1
    acks: list[tuple[Any, int]] = []
    assert await d.admit("normal", work(P0, 0, acks))  # holds the lane's only slot
    waiting = asyncio.create_task(d.admit("normal", work(P1, 1, acks)))
    for _ in range(5):
        await asyncio.sleep(0)
    assert not waiting.done()
    group.owned = {P0}  # P1 lost without a revocation: nothing notifies the wait
    assert await asyncio.wait_for(waiting, 5) is False
    assert d.stats.dropped == 1
    revoked = asyncio.create_task(d.admit("normal", work(P0, 2, acks)))
    for _ in range(5):
        await asyncio.sleep(0)
    await d.revoke({P0}, bound_s=0.0)
    assert await asyncio.wait_for(revoked, 5) is False
    assert d.stats.dropped == 2
    stage.gate.set()


async def test_the_fence_takes_a_gap_of_exactly_stall_s_as_no_stall(
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.WARNING, logger="app.dispatcher")
    now = [100.0]  # not 0: the gap logged is now - last beat, not the clock
    d, stage = make(now)
    acks: list[tuple[Any, int]] = []
    d.heartbeat()
    await d.admit("normal", work(P0, 0, acks))
    now[0] = 103.0  # the heartbeat timer is late by exactly stall_s
    stage.gate.set()
    await until(lambda: d.stats.done == 1)
    assert d.suspect_since is None and stage.sent == [0]
    stage.gate.clear()
    await d.admit("normal", work(P0, 1, acks))
    now[0] = 106.5  # 6.5 s since the last beat (at 100): a stall, caught at the fence
    stage.gate.set()
    await until(lambda: d.stats.fenced == 1)
    assert d.suspect_since == 106.5 and stage.sent == [0]
    assert [r.getMessage() for r in caplog.records] == ["event loop stalled 6.5 s: sends fenced"]


async def test_a_finished_task_leaves_a_newer_task_of_its_offset_indexed() -> None:
    # a redelivered offset (a rewind) admitted while its first copy still runs: the
    # first copy finishing must not drop the second from the index a revocation drains
    now = [0.0]
    gates = {"first": asyncio.Event(), "second": asyncio.Event()}
    calls: list[str] = []

    async def handle(payload: bytes, origin: Origin, lane: str) -> Emission | None:
        name = "first" if not calls else "second"
        calls.append(name)
        await gates[name].wait()
        return None

    d = Dispatcher(handle=handle, deliver=lambda e: asyncio.sleep(0), membership=Group(),
                   lanes=LANES, stall_s=3.0, session_timeout_s=10.0,
                   clock=lambda: now[0])  # fmt: skip
    acks: list[tuple[Any, int]] = []
    assert await d.admit("normal", work(P1, 7, acks))
    first = d.tasks[P1][7]
    assert await d.admit("normal", work(P1, 7, acks))
    second = d.tasks[P1][7]
    assert second is not first
    await until(lambda: calls == ["first", "second"])
    gates["first"].set()
    await until(first.done)
    await asyncio.sleep(0)  # the done callback
    assert d.tasks == {P1: {7: second}} and d.active["normal"] == 1
    gates["second"].set()
    await until(lambda: d.tasks == {})
    assert d.active["normal"] == 0 and len(acks) == 2

