"""The Dispatcher with fakes for the group, the stage and Kafka: revocation with a
bound, fencing, a slow request costing one slot, acks only after Kafka's ack."""

from __future__ import annotations

import asyncio
from dataclasses import dataclass, field
from typing import Any

import pytest

from app.dispatcher import Dispatcher
from app.stages.common import Emission, Origin
from app.tables.ledger import Ledger
from tests.plugins.dispatcher import Result, until, work

LANES = ("critical", "normal", "bulk")
P0, P1 = ("lane", 0), ("lane", 1)


@dataclass
class Group:
    """The consumer group as this member sees it."""

    owned: set[Any] = field(default_factory=lambda: {P0, P1})
    generation: int = 1

    def owns(self, tp: Any, generation: int | None) -> bool:
        return tp in self.owned and (generation is None or generation == self.generation)


@dataclass
class Stage:
    """Stands for DispatchStage.handle: waits at its gate (``gate``), then makes the
    ledger's in_flight mark (the fence) and the request (``wire``)."""

    ledger: Ledger
    gate: asyncio.Event = field(default_factory=asyncio.Event)
    wire: dict[int, asyncio.Event] = field(default_factory=dict)
    requests: list[int] = field(default_factory=list)

    async def handle(self, payload: bytes, origin: Origin, lane: str) -> Emission | None:
        await self.gate.wait()  # lane gate, rate meter or breaker wait
        event_id = payload.decode()
        self.ledger.mark_in_flight(event_id, "p")  # the fence runs here
        self.requests.append(origin.offset)
        hang = self.wire.get(origin.offset)
        if hang is not None:
            await hang.wait()  # a slow provider request
        self.ledger.mark_sent(event_id, "p", "m")
        return Emission("sent", payload, Result(event_id))


@dataclass
class Kafka:
    acked: list[Emission] = field(default_factory=list)
    fail: bool = False

    async def deliver(self, emission: Emission) -> None:
        await asyncio.sleep(0)
        if self.fail:
            raise RuntimeError("produce failed")
        self.acked.append(emission)


def make(
    **kw: Any,
) -> tuple[Dispatcher, Stage, Group, Kafka, dict[bytes, Any], list[BaseException]]:
    table: dict[bytes, Any] = {}
    ledger = Ledger(table)
    stage = Stage(ledger)
    group = Group()
    kafka = Kafka()
    fatal: list[BaseException] = []
    d = Dispatcher(
        handle=stage.handle,
        deliver=kafka.deliver,
        membership=group,
        lanes=LANES,
        confirm=ledger.confirm,
        on_fatal=fatal.append,
        **kw,
    )
    ledger.guard = d.fence
    return d, stage, group, kafka, table, fatal


async def test_messages_parked_at_a_gate_never_block_a_revocation() -> None:
    """The observed wedge: bulk messages at the lane gate kept the worker in 'Wait
    for streams' until it was evicted. Here revoke returns although the gate never
    opens, and nothing of the revoked partition is acked or sent."""
    d, stage, _group, kafka, _table, _ = make(revoke_bound_s=0.2)
    acks: list[tuple[Any, int]] = []
    for i in range(50):
        assert await d.admit("bulk", work(P0, i, acks))
    await asyncio.wait_for(d.revoke({P0}), timeout=2.0)  # bounded, not Faust's wait_empty
    assert d.stats.abandoned == 50 and d.works == {}
    stage.gate.set()
    await asyncio.sleep(0.01)
    assert acks == [] and stage.requests == [] and kafka.acked == []
    assert d.active["bulk"] == 0
    # nothing of P0 is admitted any more
    assert not await d.admit("bulk", work(P0, 50, acks))


async def test_requests_on_the_wire_finish_within_the_bound_and_the_rest_is_abandoned() -> None:
    d, stage, _group, kafka, table, _ = make(revoke_bound_s=0.3)
    acks: list[tuple[Any, int]] = []
    stage.gate.set()
    stage.wire = {0: asyncio.Event(), 1: asyncio.Event()}
    for i in (0, 1):
        await d.admit("normal", work(P0, i, acks))
    await until(lambda: len(stage.requests) == 2)
    revoking = asyncio.ensure_future(d.revoke({P0}))
    await asyncio.sleep(0.01)
    stage.wire[0].set()  # answers within the bound
    await asyncio.wait_for(revoking, timeout=2.0)  # 1 never answers: abandoned at the bound
    assert acks == [(P0, 0)]
    assert [e.value.event_id for e in kafka.acked] == ["e0-0"]
    assert table[b"e0-0"]["s"] == "sent"
    assert table[b"e0-1"]["s"] == "in_flight"  # the new owner resends with the same key
    assert d.stats.abandoned == 1


async def test_revocation_leaves_other_partitions_flowing() -> None:
    d, stage, _group, _kafka, _table, _ = make(revoke_bound_s=0.1)
    acks: list[tuple[Any, int]] = []
    await d.admit("normal", work(P0, 0, acks))
    await d.admit("normal", work(P1, 0, acks))
    await d.revoke({P0})
    stage.gate.set()
    await until(lambda: acks == [(P1, 0)])
    assert stage.requests == [0] and d.stats.abandoned == 1


async def test_a_member_that_lost_its_assignment_sends_nothing() -> None:
    """Fencing: the partition moved (zombie after SIGSTOP) while messages waited at
    the rate meter; when they reach the provider call, none goes out."""
    d, stage, group, _kafka, table, _ = make()
    acks: list[tuple[Any, int]] = []
    for i in range(5):
        await d.admit("normal", work(P0, i, acks))
    group.owned.discard(P0)  # another member owns it now (no revoke callback yet)
    stage.gate.set()
    await until(lambda: d.stats.fenced == 5)
    assert stage.requests == [] and acks == [] and table == {}


async def test_a_new_generation_fences_messages_fetched_in_the_old_one() -> None:
    d, stage, group, _kafka, _table, _ = make()
    acks: list[tuple[Any, int]] = []
    await d.admit("normal", work(P0, 0, acks, generation=1))
    group.generation = 2
    stage.gate.set()
    await until(lambda: d.stats.fenced == 1)
    assert stage.requests == [] and acks == []
    assert not await d.admit("normal", work(P0, 1, acks, generation=1))
    assert await d.admit("normal", work(P0, 1, acks, generation=2))
    await until(lambda: acks == [(P0, 1)])


async def test_a_stalled_member_sends_nothing_until_its_assignment_is_known() -> None:
    now = [0.0]
    d, stage, _group, _kafka, _table, _ = make(
        stall_s=2.0, session_timeout_s=10.0, clock=lambda: now[0]
    )
    acks: list[tuple[Any, int]] = []
    d.heartbeat()
    await d.admit("normal", work(P0, 0, acks))
    now[0] = 30.0  # SIGSTOP: the loop did not run for 30 s
    d.heartbeat()
    stage.gate.set()
    await until(lambda: d.stats.fenced == 1)
    assert stage.requests == [] and d.parked
    now[0] = 41.0  # a session timeout passed with no revocation: still the owner
    d.heartbeat()
    await until(lambda: acks == [(P0, 0)])
    assert stage.requests == [0]


async def test_a_slow_request_costs_one_slot_not_the_lane() -> None:
    """The observed batch stall: one hung request held its 256-message batch."""
    d, stage, _group, _kafka, _table, _ = make(lane_in_flight=4)
    acks: list[tuple[Any, int]] = []
    stage.gate.set()
    stage.wire = {0: asyncio.Event()}  # hangs until the test ends
    for i in range(40):
        await d.admit("bulk", work(P0, i, acks))
    await until(lambda: len(acks) == 39)
    assert (P0, 0) not in acks and d.active["bulk"] == 1
    stage.wire[0].set()
    await until(lambda: len(acks) == 40)


async def test_a_failed_produce_is_never_acked_nor_marked_sent() -> None:
    d, stage, _group, kafka, table, fatal = make()
    acks: list[tuple[Any, int]] = []
    kafka.fail = True
    stage.gate.set()
    await d.admit("critical", work(P0, 0, acks))
    await until(lambda: len(fatal) == 1)
    assert acks == []
    assert table[b"e0-0"]["s"] == "accepted"  # never "sent": its result is produced again


async def test_takeover_serves_every_lane() -> None:
    d, stage, group, _kafka, _table, _ = make(revoke_bound_s=0.1)
    acks: list[tuple[Any, int]] = []
    await d.revoke({P0, P1})
    group.generation = 2
    d.assigned({P0, P1})
    stage.gate.set()
    for i, lane in enumerate(LANES * 10):
        assert await d.admit(lane, work(P1, i, acks, generation=2))
    await until(lambda: len(acks) == 30)


async def test_stop_drains_within_its_bound() -> None:
    d, stage, _group, _kafka, _table, _ = make()
    acks: list[tuple[Any, int]] = []
    stage.gate.set()
    stage.wire = {1: asyncio.Event()}
    for i in range(3):
        await d.admit("normal", work(P0, i, acks))
    await until(lambda: len(acks) == 2)
    await asyncio.wait_for(d.stop(0.1), timeout=2.0)
    assert sorted(acks) == [(P0, 0), (P0, 2)] and d.works == {}
    assert not await d.admit("normal", work(P0, 3, acks))


@pytest.mark.parametrize("lane", LANES)
async def test_admission_waits_for_a_slot_and_a_revocation_ends_the_wait(lane: str) -> None:
    d, _stage, _group, _kafka, _table, _ = make(lane_in_flight=1, revoke_bound_s=0.1)
    acks: list[tuple[Any, int]] = []
    await d.admit(lane, work(P0, 0, acks))
    waiting = asyncio.ensure_future(d.admit(lane, work(P0, 1, acks)))
    await asyncio.sleep(0.02)
    assert not waiting.done()  # the lane's one slot is taken
    await d.revoke({P0})
    assert await asyncio.wait_for(waiting, timeout=2.0) is False


async def test_a_stall_is_caught_at_the_fence_before_the_stall_timer_runs() -> None:
    """SIGCONT: the task waiting to send may run before the timer that notices the
    stall; the fence itself compares the clock with the last beat."""
    now = [0.0]
    d, stage, _group, _kafka, table, _ = make(stall_s=2.0, clock=lambda: now[0])
    acks: list[tuple[Any, int]] = []
    d.heartbeat()
    await d.admit("normal", work(P0, 0, acks))
    now[0] = 13.0  # stopped for 13 s; no heartbeat since
    stage.gate.set()
    await until(lambda: d.stats.fenced == 1)
    assert stage.requests == [] and table == {} and d.parked


async def test_the_provider_send_is_fenced_again() -> None:
    d, _stage, group, _kafka, _table, _ = make()
    sent: list[str] = []

    class Provider:
        name = "p"

        async def send(self, email: str) -> str:
            sent.append(email)
            return "ok"

    fenced = d.fenced_provider(Provider())
    assert fenced.name == "p"
    assert await fenced.send("outside a dispatch task") == "ok"  # no current message

    async def inside() -> None:
        from app import dispatcher as module

        module._CURRENT.set(work(P0, 0, []))
        group.owned.discard(P0)
        await fenced.send("zombie")

    with pytest.raises(asyncio.CancelledError):
        await asyncio.get_running_loop().create_task(inside())
    assert sent == ["outside a dispatch task"]
