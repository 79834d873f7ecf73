"""Lane admission (issue 12 point 1, issue 14 'without starving bulk'): a lane takes
its next message off its stream only when it may start it, so a message taken never
waits for another lane, and the commits of a held-back lane keep advancing; a lower
lane still gets its share while a higher lane never runs dry."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest

from app.dispatcher import Dispatcher, Work
from app.stages.common import Emission, Origin
from app.stages.lanes import LaneGate
from app.tables.ledger import Ledger
from tests.plugins.dispatcher import until

LANES = ("critical", "normal", "bulk")


class Meter:
    """The provider's pace: each send takes one token the test hands out."""

    def __init__(self) -> None:
        self.tokens = asyncio.Semaphore(0)
        self.sent: list[tuple[str, int]] = []

    def give(self, n: int = 1) -> None:
        for _ in range(n):
            self.tokens.release()


class Rig:
    def __init__(self, every: int, lookahead: int = 4) -> None:
        self.gate = LaneGate(LANES, every=every)
        self.meter = Meter()
        self.ledger = Ledger({})
        self.acked: dict[str, list[int]] = {lane: [] for lane in LANES}
        self.taken: dict[str, list[int]] = {lane: [] for lane in LANES}
        self.streams: dict[str, list[int]] = {lane: [] for lane in LANES}
        self.produced = asyncio.Event()

        class Group:
            def owns(self, tp: Any, generation: int | None) -> bool:
                return True

        async def deliver(emission: Emission) -> None:
            await asyncio.sleep(0)

        self.d = Dispatcher(
            handle=self.handle,
            deliver=deliver,
            membership=Group(),
            lanes=LANES,
            lookahead=lookahead,
            enter=self.gate.enter,
            leave=self.gate.leave,
            may_take=self.gate.may_take,
            take=self.gate.take,
        )
        self.ledger.guard = self.d.fence
        self.loops = [asyncio.ensure_future(self.lane(lane)) for lane in LANES]

    async def handle(self, payload: bytes, origin: Origin, lane: str) -> Emission | None:
        await self.meter.tokens.acquire()  # the rate meter
        self.ledger.mark_in_flight(payload.decode(), "p")  # the fence: on the wire
        self.meter.sent.append((lane, origin.offset))
        return None

    async def lane(self, lane: str) -> None:
        """What the lane agent does: its turn first, then the next message."""
        stream = self.streams[lane]
        while True:
            await self.d.turn(lane)
            while len(self.taken[lane]) >= len(stream):
                await self.produced.wait()  # no message yet
                self.produced = asyncio.Event()
            offset = stream[len(self.taken[lane])]
            self.taken[lane].append(offset)
            self.backlog()
            await self.d.admit(
                lane,
                Work(
                    tp=(lane, 0),
                    offset=offset,
                    generation=None,
                    value=f"{lane}-{offset}".encode(),
                    origin=Origin(topic=lane, partition=0, offset=offset),
                    release=lambda lane=lane, offset=offset: self.acked[lane].append(offset),
                ),
            )

    def backlog(self) -> None:
        for lane in LANES[:-1]:
            self.gate.set_backlog(lane, len(self.streams[lane]) - len(self.taken[lane]))

    def produce(self, lane: str, n: int) -> None:
        stream = self.streams[lane]
        stream.extend(range(len(stream), len(stream) + n))
        self.backlog()
        self.produced.set()

    async def settle(self) -> None:
        for _ in range(20):
            await asyncio.sleep(0.002)

    def close(self) -> None:
        for loop in self.loops:
            loop.cancel()


async def test_a_held_back_lane_takes_nothing_off_its_stream() -> None:
    """Strict priority (every=0): while normal has a backlog, bulk takes no message, so
    none waits taken-but-unsent (before: 256 bulk messages taken and held at the gate,
    their partition's commit stuck at its first offset for the whole normal backlog)."""
    rig = Rig(every=0)
    try:
        rig.produce("normal", 1_000)
        rig.produce("bulk", 100)
        await rig.settle()
        for _ in range(50):
            rig.meter.give()
            await rig.settle()
        assert len(rig.acked["normal"]) == 50
        assert rig.taken["bulk"] == [] and rig.acked["bulk"] == []
        assert rig.gate.by_credit["bulk"] == 0
    finally:
        rig.close()


async def test_a_lower_lane_gets_its_share_and_its_commits_advance() -> None:
    """Normal never runs dry: bulk still takes one message per ten normal takes, and
    every bulk message it took is sent soon after: the acked bulk offsets are a
    contiguous prefix (what the commit needs), never more than the lookahead behind."""
    rig = Rig(every=10, lookahead=4)
    try:
        rig.produce("normal", 10_000)
        rig.produce("bulk", 1_000)
        await rig.settle()
        for i in range(400):
            rig.meter.give()
            await until(lambda i=i: len(rig.meter.sent) == i + 1)
            bulk_taken, bulk_acked = rig.taken["bulk"], rig.acked["bulk"]
            assert len(bulk_taken) - len(bulk_acked) <= 4
        bulk_acked = sorted(rig.acked["bulk"])
        assert bulk_acked == list(range(len(bulk_acked)))  # a contiguous prefix
        normal_taken = len(rig.taken["normal"])
        # one turn per ten normal takes (the last turn may be earned, not yet taken)
        assert normal_taken // 10 - 1 <= len(rig.taken["bulk"]) <= normal_taken // 10 + 1
        assert rig.gate.by_credit["bulk"] == len(rig.taken["bulk"])
        assert len(rig.acked["bulk"]) >= 30
    finally:
        rig.close()


async def test_a_lane_takes_by_right_once_the_higher_lanes_are_empty() -> None:
    rig = Rig(every=10, lookahead=4)
    try:
        rig.produce("normal", 5)
        rig.produce("bulk", 20)
        rig.meter.give(25)
        await until(lambda: len(rig.acked["bulk"]) == 20 and len(rig.acked["normal"]) == 5)
        # after normal ran dry, bulk went by right: at most the earned turn was credit
        assert rig.gate.by_credit["bulk"] <= 1
    finally:
        rig.close()


async def test_critical_is_never_held_and_pending_work_is_bounded() -> None:
    """Critical has nothing above it; no lane has more than ``lookahead`` messages
    taken and waiting for the meter, so what waits stays in Kafka, uncommitted."""
    rig = Rig(every=10, lookahead=3)
    try:
        rig.produce("bulk", 50)
        rig.produce("normal", 50)
        rig.produce("critical", 50)
        await rig.settle()
        for lane in LANES:
            assert rig.d.pending(lane) <= 3
        assert len(rig.taken["critical"]) == 3  # up to its lookahead, no turn needed
        assert rig.taken["bulk"] == []
        rig.meter.give(3)
        await until(lambda: len(rig.acked["critical"]) == 3)
        await rig.settle()
        assert len(rig.taken["critical"]) == 6  # it took again as soon as they left
    finally:
        rig.close()


async def test_turn_waits_for_a_slot_and_for_a_pending_message_to_reach_the_wire() -> None:
    rig = Rig(every=0, lookahead=2)
    try:
        rig.produce("critical", 10)
        await rig.settle()
        assert len(rig.taken["critical"]) == 2 and rig.d.pending("critical") == 2
        rig.meter.give(1)  # one goes on the wire (the fence), then finishes
        await until(lambda: len(rig.taken["critical"]) == 3)
        assert rig.d.pending("critical") == 2
    finally:
        rig.close()


async def test_stopping_takes_nothing_more() -> None:
    rig = Rig(every=0)
    try:
        await rig.d.stop(0.1)
        rig.produce("critical", 5)
        await rig.settle()
        assert rig.taken["critical"] == []
    finally:
        rig.close()


@pytest.mark.parametrize("lookahead", [1, 7])
async def test_the_wire_count_goes_back_to_zero(lookahead: int) -> None:
    rig = Rig(every=2, lookahead=lookahead)
    try:
        for lane in LANES:
            rig.produce(lane, 20)
        rig.meter.give(60)
        # acked (release) comes before the task's done callback: wait for both
        await until(lambda: sum(len(a) for a in rig.acked.values()) == 60 and not rig.d.works)
        assert rig.d.wire == dict.fromkeys(LANES, 0) and rig.d.on_wire == set()
        assert rig.d.active == dict.fromkeys(LANES, 0)
        assert all(rig.acked[lane] == list(range(20)) for lane in LANES)
    finally:
        rig.close()
