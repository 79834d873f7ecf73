"""The dispatch agents' wiring (app/agents/dispatch.py ``attach``) checked on a fake
Faust app (issue 17 pt 5: survivors of the mutation run of that module): what each
agent is registered on, what the Dispatcher and the stage are built with, what a lane
agent hands the dispatcher, how the retry agent waits and delivers, how the lane
backlog is measured and lanes held or revived, the fetch-state report, ownership, and
the revocation/assignment hooks. The Faust timers and agents are captured as the plain
functions ``attach`` defines, and called directly: no broker, no clock."""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Iterator
from dataclasses import dataclass, field
from types import SimpleNamespace
from typing import Any, NamedTuple

import pytest

from app.agents import dispatch as dm
from app.models import PRIORITIES
from app.settings import Settings
from app.stages.common import Emission, Origin
from app.topology import DEAD, LANES, RETRIES, SENT
from tests.plugins.agents import make_app
from tests.plugins.factories import dispatch_request
from tests.plugins.metrics import RecordingMetrics


class TP(NamedTuple):
    topic: str
    partition: int


class Signal:
    def __init__(self) -> None:
        self.receivers: list[Any] = []

    def connect(self, fn: Any) -> Any:
        self.receivers.append(fn)
        return fn


@dataclass
class Consumer:
    assigned: set[Any] = field(default_factory=set)
    highwaters_known: dict[Any, int | None] = field(default_factory=dict)
    asked_highwaters: dict[Any, int] = field(default_factory=dict)
    earliest: dict[Any, int] = field(default_factory=dict)
    expected: dict[Any, int] = field(default_factory=dict)
    calls: list[tuple[str, Any]] = field(default_factory=list)
    requests: int = 0  # broker round trips (one per call, whatever its partitions)
    fail_assignment: bool = False

    def assignment(self) -> set[Any]:
        if self.fail_assignment:
            raise RuntimeError("rebalancing")
        return set(self.assigned)

    def highwater(self, tp: Any) -> int | None:
        return self.highwaters_known.get(tp)

    async def highwaters(self, *tps: Any) -> dict[Any, int]:
        self.requests += 1
        self.calls.extend(("highwaters", tp) for tp in tps)
        return {tp: self.asked_highwaters[tp] for tp in tps if tp in self.asked_highwaters}

    async def earliest_offsets(self, *tps: Any) -> dict[Any, int]:
        self.requests += 1
        self.calls.extend(("earliest", tp) for tp in tps)
        return {tp: self.earliest[tp] for tp in tps if tp in self.earliest}

    def tracker(self) -> Any:
        return SimpleNamespace(expected=self.expected)


class Producer:
    def __init__(self) -> None:
        self.flushes = 0

    async def flush(self) -> None:
        self.flushes += 1


class FakeApp:
    """What ``attach`` uses of a Faust app; agents and timers are kept, not started."""

    def __init__(self) -> None:
        self.consumer = Consumer()
        self.producer = Producer()
        self.agents: dict[str, tuple[Any, int, Any]] = {}
        self.timers: dict[str, tuple[float, Any]] = {}
        self.on_partitions_revoked = Signal()
        self.on_partitions_assigned = Signal()
        self.spillway_shutdown = SimpleNamespace(drains=[])

    def agent(self, topic: Any, *, name: str, concurrency: int) -> Any:
        def register(fn: Any) -> Any:
            self.agents[name] = (topic, concurrency, fn)
            return fn

        return register

    def timer(self, interval: float, *, name: str) -> Any:
        def register(fn: Any) -> Any:
            self.timers[name] = (interval, fn)
            return fn

        return register


class Wired(SimpleNamespace):
    app: FakeApp
    runtime: Any
    dispatcher: Any
    gate: Any
    board: Any
    stages: list[Any]
    delivered: list[tuple[Any, list[Emission], str]]
    adapter: dict[str, list[Any]]
    tables: list[tuple[str, Any, int]]
    crashes: list[str]


@pytest.fixture
def wired(registry: Any, monkeypatch: pytest.MonkeyPatch) -> Wired:
    w = Wired(stages=[], delivered=[], adapter={}, tables=[], crashes=[])
    w.metrics = RecordingMetrics()
    real, _ = make_app("dispatch", registry, metrics=w.metrics)
    w.runtime = real.spillway  # type: ignore[attr-defined]
    w.app = FakeApp()

    class Gate(dm.LaneGate):
        def __init__(self, *a: Any, **kw: Any) -> None:
            super().__init__(*a, **kw)
            w.gate = self

    class Board(dm.PressureBoard):
        def __init__(self, *a: Any, **kw: Any) -> None:
            super().__init__(*a, **kw)
            w.board = self

    class Stage(dm.DispatchStage):
        def __post_init__(self) -> None:
            super().__post_init__()
            w.stages.append(self)

    def table(kind: str) -> Any:
        def declare(app: Any, partitions: int) -> dict[bytes, Any]:
            w.tables.append((kind, app, partitions))
            return {}

        return declare

    async def deliver(rt: Any, emissions: list[Emission], *, stage: str) -> None:
        w.delivered.append((rt, emissions, stage))

    @contextlib.contextmanager
    def crash(agent: str) -> Iterator[None]:
        try:
            yield
        except Exception:
            w.crashes.append(agent)

    monkeypatch.setattr(dm, "LaneGate", Gate)
    monkeypatch.setattr(dm, "PressureBoard", Board)
    monkeypatch.setattr(dm, "DispatchStage", Stage)
    monkeypatch.setattr(dm.ledger_table, "declare_table", table("ledger"))
    monkeypatch.setattr(dm.pressure_table, "declare_table", table("pressure"))
    monkeypatch.setattr(dm.delivery, "deliver", deliver)
    monkeypatch.setattr(dm, "crash_on_error", crash)
    w.result = dm.attach(w.app, w.runtime)
    w.dispatcher = w.app.spillway_dispatcher  # type: ignore[attr-defined]
    w.turns = []

    async def turn(lane: str) -> None:  # the lane's turn (Dispatcher.turn) is not tested here
        w.turns.append(lane)

    w.dispatcher.turn = turn
    return w


def topic(w: Wired, logical: str) -> str:
    return str(w.runtime.topology.name(logical))


def lane_tp(w: Wired, lane: str, partition: int) -> TP:
    return TP(topic(w, LANES[lane]), partition)


# -- what is registered, and built with what ------------------------------------------------


def test_agents_are_registered_on_their_topics_one_at_a_time(wired: Wired) -> None:
    w = wired
    topics = w.runtime.topology.topics
    names = [f"dispatch-{lane}" for lane in PRIORITIES] + [
        f"dispatch-retry-{n}" for n in RETRIES
    ]
    assert list(w.app.agents) == names
    for lane in PRIORITIES:
        t, concurrency, fn = w.app.agents[f"dispatch-{lane}"]
        assert t is topics[LANES[lane]] and concurrency == 1 and callable(fn)
    for n, logical in RETRIES.items():
        t, concurrency, fn = w.app.agents[f"dispatch-retry-{n}"]
        assert t is topics[logical] and concurrency == 1 and callable(fn)
    assert [a for _, _, a in w.app.agents.values()] == w.result  # every agent returned
    assert w.app.timers["dispatch-lane-backlog"][0] == dm.BACKLOG_EVERY_S


def test_the_dispatcher_and_the_tables_are_built_from_the_settings(wired: Wired) -> None:
    w = wired
    s: Settings = w.runtime.settings
    d = w.dispatcher
    parts = s.kafka.topic_partitions
    assert w.tables == [("ledger", w.app, parts), ("pressure", w.app, parts)]
    assert d.lane_in_flight == s.policy.dispatch_lane_in_flight
    assert d.revoke_bound_s == s.revoke_bound()
    assert d.session_timeout_s == s.kafka.session_timeout_s
    assert d.stall_s == max(2.0, s.kafka.session_timeout_s / 3)
    assert d.sent_topic == SENT and d.lanes == PRIORITIES
    gate = w.gate
    assert (d.enter, d.leave, d.may_take, d.take) == (gate.enter, gate.leave, gate.may_take,
                                                      gate.take)  # fmt: skip
    assert d.on_fatal is not None and d.membership.app is w.app
    assert w.app.spillway_shutdown.drains == [d.stop]
    assert w.board.partitions == s.kafka.topic_partitions
    assert w.board.key_for is dm.pressure_table.key_for
    # unknown until measured: the higher lanes count as busy
    assert all(gate.backlog[lane] > 0 for lane in PRIORITIES)


def test_without_a_shutdown_hook_nothing_is_registered(registry: Any,
                                                       monkeypatch: pytest.MonkeyPatch) -> None:
    real, _ = make_app("dispatch", registry)
    app = FakeApp()
    del app.spillway_shutdown
    monkeypatch.setattr(dm.ledger_table, "declare_table", lambda a, n: {})
    monkeypatch.setattr(dm.pressure_table, "declare_table", lambda a, n: {})
    dm.attach(app, real.spillway)  # type: ignore[attr-defined]
    assert not hasattr(app, "spillway_shutdown")


async def test_the_stage_is_built_once_with_the_settings(wired: Wired) -> None:
    w = wired
    s: Settings = w.runtime.settings
    seen: list[tuple[Any, ...]] = []

    async def handle(self: Any, payload: bytes, origin: Origin, lane: str) -> None:
        seen.append((payload, origin, lane))

    dm.DispatchStage.handle = handle  # type: ignore[method-assign]  # the subclass, undone below
    try:
        origin = Origin("t", 1, 2)
        await w.dispatcher.handle(b"p", origin, "bulk")
        await w.dispatcher.handle(b"q", origin, "normal")
    finally:
        del dm.DispatchStage.handle
    assert seen == [(b"p", origin, "bulk"), (b"q", origin, "normal")]
    [st] = w.stages  # built once
    assert (st.max_attempts, st.flush_every_s) == (s.policy.max_attempts, s.policy.state_flush_s)
    assert st.gate is w.gate and st.board is w.board
    assert st.ledger.guard == w.dispatcher.fence
    assert st.ledger.horizon_s == s.ledger_horizon_s()
    assert st.primary == s.provider_policies()[0].name
    assert st.metrics is w.runtime.metrics
    for name in st.policies:
        paced = st.providers[name]
        assert paced._board is w.board and paced._name == name
        assert paced._provider._fence == w.dispatcher.fence  # fenced, then paced
        assert paced.name == name  # built from its own policy
    # every provider is reported closed, with its quota (0: none), once
    assert w.metrics.of("breaker_state") == [(n, "closed") for n in st.policies]
    assert w.metrics.of("quota") == [(n, p.quota_per_s or 0.0) for n, p in st.policies.items()]


async def test_outputs_go_through_delivery_as_the_dispatch_stage(wired: Wired) -> None:
    w = wired
    out = Emission(SENT, b"k", object())
    await w.dispatcher.deliver(out)
    assert w.delivered == [(w.runtime, [out], "dispatch")]


def test_a_fatal_error_stops_the_worker_as_the_dispatch_agent(wired: Wired) -> None:
    wired.dispatcher.on_fatal(RuntimeError("produce failed"))
    assert wired.crashes == ["dispatch"]


# -- ownership -------------------------------------------------------------------------------


def test_membership_is_the_assignment_in_the_message_generation(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    app = FakeApp()
    a, b = TP("x", 0), TP("x", 1)
    app.consumer.assigned = {a}
    monkeypatch.setattr(dm.faust_adapter, "generation", lambda app_: 4 if app_ is app else -1)
    m = dm.FaustMembership(app)
    assert m.owns(a, None) and m.owns(a, 4)
    assert not m.owns(a, 3) and not m.owns(b, None) and not m.owns(b, 4)
    app.consumer.fail_assignment = True
    assert not m.owns(a, None)


# -- a lane agent ------------------------------------------------------------------------------


class Stream:
    def __init__(self, events: list[Any]) -> None:
        self._events = events

    def events(self) -> Any:
        async def gen() -> Any:
            for e in self._events:
                yield e

        return gen()


def event(tp: TP, offset: int, value: bytes = b"v", generation: int | None = None) -> Any:
    message = SimpleNamespace(tp=tp, topic=tp.topic, partition=tp.partition, offset=offset,
                              timestamp=1.0, key=b"k", headers=[],
                              generation=generation)  # fmt: skip
    return SimpleNamespace(message=message, value=value)


@pytest.fixture
def adapter(monkeypatch: pytest.MonkeyPatch) -> dict[str, list[Any]]:
    calls: dict[str, list[Any]] = {"hold": [], "release": [], "pause": [], "resume": [],
                                   "revive": []}  # fmt: skip
    monkeypatch.setattr(dm.faust_adapter, "generation",
                        lambda app: 4 if isinstance(app, FakeApp) else -1)  # fmt: skip
    monkeypatch.setattr(dm.faust_adapter, "message_generation", lambda m: m.generation)
    monkeypatch.setattr(dm.faust_adapter, "hold", lambda e: calls["hold"].append(e))
    monkeypatch.setattr(dm.faust_adapter, "release", lambda e: calls["release"].append(e))
    return calls


async def test_a_lane_agent_hands_each_message_to_the_dispatcher(
    wired: Wired, adapter: dict[str, list[Any]], monkeypatch: pytest.MonkeyPatch
) -> None:
    w = wired
    admitted: list[tuple[str, Any]] = []

    async def admit(lane: str, work: Any) -> bool:
        admitted.append((lane, work))
        return True

    w.dispatcher.admit = admit
    tp = lane_tp(w, "normal", 1)
    events = [event(tp, 7, b"a"), event(tp, 8, b"b", generation=4), event(tp, 30, b"c", 3),
              event(tp, 2, b"d")]  # fmt: skip  # a rewind: taken past 9 already
    _, _, agent = w.app.agents["dispatch-normal"]
    await agent(Stream(events))
    assert [lane for lane, _ in admitted] == ["normal"] * 4
    assert w.turns == ["normal"] * 5  # a turn before each message is taken, and the end
    works = [wk for _, wk in admitted]
    assert [(wk.tp, wk.offset, wk.generation, wk.value) for wk in works] == [
        (tp, 7, None, b"a"), (tp, 8, 4, b"b"), (tp, 30, 3, b"c"), (tp, 2, None, b"d")]  # fmt: skip
    assert [(wk.origin.topic, wk.origin.partition, wk.origin.offset) for wk in works] == [
        (tp.topic, 1, 7), (tp.topic, 1, 8), (tp.topic, 1, 30), (tp.topic, 1, 2)]  # fmt: skip
    assert adapter["hold"] == events and adapter["release"] == []
    works[1].release()
    assert adapter["release"] == [events[1]]
    assert len(w.stages) == 1  # built before the first message
    # what was taken (in this generation only: offset 30 is of generation 3) counts as
    # handled for the backlog: the lane's start is 9, not the committed offset
    await measure(w, adapter, monkeypatch, {tp: 20}, committed={tp: 2})
    assert w.gate.backlog["normal"] == 11


# -- the retry agent --------------------------------------------------------------------------


async def test_the_retry_agent_waits_until_not_before_then_puts_it_back(
    wired: Wired, monkeypatch: pytest.MonkeyPatch
) -> None:
    w = wired
    serde = w.runtime.serde
    import time

    now_ms = int(time.time() * 1000)
    due = dispatch_request("e-1", "bulk", attempts=1, not_before=now_ms - 60_000)
    later = dispatch_request("e-2", "normal", attempts=1, not_before=now_ms + 600)
    sleeps: list[float] = []

    async def sleep(s: float) -> None:
        sleeps.append(s)

    monkeypatch.setattr(dm, "asyncio", SimpleNamespace(sleep=sleep))
    tp = TP(topic(w, RETRIES[1]), 0)
    events = [event(tp, 3, serde.encode(tp.topic, due)),
              event(tp, 4, serde.encode(tp.topic, later)), event(tp, 5, b"garbage")]  # fmt: skip
    _, _, agent = w.app.agents["dispatch-retry-1"]
    await agent(Stream(events))
    assert len(sleeps) == 1 and 0.0 < sleeps[0] <= 0.6  # only the one not due yet waits
    assert [(rt is w.runtime, stage) for rt, _, stage in w.delivered] == [(True, "dispatch")] * 3
    outs = [ems for _, ems, _ in w.delivered]
    assert [len(o) for o in outs] == [1, 1, 1]
    assert [o[0].topic for o in outs] == [LANES["bulk"], LANES["normal"], DEAD]
    assert [o[0].value.event_id for o in outs[:2]] == ["e-1", "e-2"]
    dead = outs[2][0].value
    assert (dead.original_topic, dead.original_offset, dead.payload) == (tp.topic, 5, b"garbage")
    assert w.crashes == []


async def test_a_retry_that_cannot_be_delivered_stops_the_worker_as_its_agent(
    wired: Wired, monkeypatch: pytest.MonkeyPatch
) -> None:
    async def fail(rt: Any, emissions: list[Emission], *, stage: str) -> None:
        raise RuntimeError("produce failed")

    monkeypatch.setattr(dm.delivery, "deliver", fail)
    tp = TP(topic(wired, RETRIES[2]), 0)
    _, _, agent = wired.app.agents["dispatch-retry-2"]
    await agent(Stream([event(tp, 1, b"garbage")]))
    assert wired.crashes == ["dispatch-dispatch.retry-2"]


# -- the lane backlog, held and revived lanes -------------------------------------------------


def queue(size: int, maxsize: int = 0) -> asyncio.Queue[int]:
    q: asyncio.Queue[int] = asyncio.Queue(maxsize)
    for i in range(size):
        q.put_nowait(i)
    return q


async def measure(
    w: Wired,
    adapter: dict[str, list[Any]],
    monkeypatch: pytest.MonkeyPatch,
    ends: dict[Any, int | None],
    *,
    committed: dict[Any, int | None] | None = None,
    queues: dict[str, list[Any]] | None = None,
    may_pause: bool = True,
    extra: set[Any] | None = None,
) -> None:
    """One tick of the lane-backlog timer over the partitions of ``ends``."""
    consumer = w.app.consumer
    consumer.assigned = set(ends) | (extra or set())
    consumer.highwaters_known = dict(ends)
    names = {topic(w, LANES[lane]): lane for lane in PRIORITIES}
    qs = queues or {}

    def lane_queues(app: Any, name: str) -> list[Any]:
        assert app is w.app
        return qs.get(names[name], [])

    def revive(app: Any, room: dict[Any, bool], has_room: Any) -> list[Any]:
        assert app is w.app and has_room == room.get
        adapter["revive"].append(dict(room))
        return [tp for tp, free in room.items() if free and tp.partition == 9]

    async def pause(app: Any, tps: Any) -> None:
        assert app is w.app
        adapter["pause"].append(set(tps))

    async def resume(app: Any, tps: Any) -> None:
        assert app is w.app
        adapter["resume"].append(set(tps))

    monkeypatch.setattr(dm.faust_adapter, "lane_queues", lane_queues)
    monkeypatch.setattr(dm.faust_adapter, "revive_buffered", revive)
    monkeypatch.setattr(dm.faust_adapter, "committed_offsets",
                        lambda c: dict(committed or {}) if c is consumer else {})  # fmt: skip
    monkeypatch.setattr(dm.faust_adapter, "may_pause", lambda app: may_pause and app is w.app)
    monkeypatch.setattr(dm.faust_adapter, "pause_fetch", pause)
    monkeypatch.setattr(dm.faust_adapter, "resume_fetch", resume)
    _, tick = w.app.timers["dispatch-lane-backlog"]
    await tick()


async def test_each_lane_backlog_is_its_partitions_lag_from_where_handling_stands(
    wired: Wired, adapter: dict[str, list[Any]], monkeypatch: pytest.MonkeyPatch
) -> None:
    w = wired
    c0, c1, c2 = (lane_tp(w, "critical", p) for p in (0, 1, 2))
    n0, n1 = lane_tp(w, "normal", 0), lane_tp(w, "normal", 1)
    b0 = lane_tp(w, "bulk", 0)
    other = TP("elsewhere", 5)
    w.app.consumer.earliest = {c1: 40}
    w.app.consumer.asked_highwaters = {c2: 90}
    ends: dict[Any, int | None] = {c0: 100, c1: 50, c2: None, n0: 7, n1: None, b0: 1000}
    committed: dict[Any, int | None] = {c0: 60, c1: None, c2: 80, n0: 0, b0: 0}
    await measure(w, adapter, monkeypatch, ends, committed=committed, extra={other})
    # critical: 100-60 + 50-40 (earliest: never committed) + 90-80 (asked: not fetched)
    # normal: 7 - 0 (committed 0 is a position) + 1 (not fetched, nothing known)
    assert w.gate.backlog == {"critical": 60, "normal": 8, "bulk": w.gate.backlog["bulk"]}
    assert ("earliest", c1) in w.app.consumer.calls and ("highwaters", c2) in w.app.consumer.calls
    # one request for every earliest offset and one for every end it needs (each takes
    # a turn of the consumer thread: one per partition held a starting worker ~7 s)
    assert w.app.consumer.requests == 2
    # asked only for what is unknown, and only of the lanes that others wait on: the
    # earliest offset where nothing was taken nor committed (a committed 0 reads as
    # nothing), the end where nothing was fetched
    def asked(kind: str) -> set[Any]:
        return {tp for k, tp in w.app.consumer.calls if k == kind}

    assert (asked("earliest"), asked("highwaters")) == ({c1, n0, n1}, {c2, n1})
    assert w.board.owned == {0, 1, 2}  # the critical partitions
    # the earliest offset is asked once per partition
    await measure(w, adapter, monkeypatch, ends, committed=committed, extra={other})
    assert [c for c in w.app.consumer.calls if c[0] == "earliest"].count(("earliest", c1)) == 1
    assert w.gate.backlog["critical"] == 60


async def test_a_partition_behind_its_committed_offset_adds_no_backlog(
    wired: Wired, adapter: dict[str, list[Any]], monkeypatch: pytest.MonkeyPatch
) -> None:
    w = wired
    c0, c1 = lane_tp(w, "critical", 0), lane_tp(w, "critical", 1)
    w.app.consumer.earliest = {c0: 3}
    await measure(w, adapter, monkeypatch, {c0: 5, c1: 10}, committed={c0: None, c1: 12})
    assert w.gate.backlog["critical"] == 2  # 5 - 3, and max(0, 10 - 12)
    await measure(w, adapter, monkeypatch, {c0: 3, c1: 10}, committed={c0: None, c1: 10})
    assert w.gate.backlog["critical"] == 0


async def test_a_full_buffer_counts_what_the_higher_lanes_hold_in_their_buffers(
    wired: Wired, adapter: dict[str, list[Any]], monkeypatch: pytest.MonkeyPatch
) -> None:
    w = wired
    c0, n0, b0 = lane_tp(w, "critical", 0), lane_tp(w, "normal", 0), lane_tp(w, "bulk", 0)
    ends: dict[Any, int | None] = {c0: 100, n0: 100, b0: 100}
    committed: dict[Any, int | None] = {c0: 0, n0: 0, b0: 0}
    qs = {"critical": [queue(3, 10), queue(2, 10)], "normal": [queue(1, 10)],
          "bulk": [queue(4, 4)]}  # fmt: skip  # bulk's buffer is full
    await measure(w, adapter, monkeypatch, ends, committed=committed, queues=qs)
    assert (w.gate.backlog["critical"], w.gate.backlog["normal"]) == (5, 1)
    qs["bulk"] = [queue(3, 4)]
    await measure(w, adapter, monkeypatch, ends, committed=committed, queues=qs)
    assert (w.gate.backlog["critical"], w.gate.backlog["normal"]) == (100, 100)
    qs = {"bulk": [queue(4, 4)]}  # no buffer for the higher lanes: their lag counts
    await measure(w, adapter, monkeypatch, ends, committed=committed, queues=qs)
    assert (w.gate.backlog["critical"], w.gate.backlog["normal"]) == (100, 100)


async def test_lanes_whose_buffers_have_room_are_revived(
    wired: Wired,
    adapter: dict[str, list[Any]],
    monkeypatch: pytest.MonkeyPatch,
    caplog: pytest.LogCaptureFixture,
) -> None:
    w = wired
    caplog.set_level(logging.INFO, logger="app.agents.dispatch")
    c9, n9, b9 = lane_tp(w, "critical", 9), lane_tp(w, "normal", 9), lane_tp(w, "bulk", 9)
    c1 = lane_tp(w, "critical", 1)
    ends: dict[Any, int | None] = {c9: 0, c1: 0, n9: 0, b9: 0}
    qs = {"critical": [queue(4, 10)],  # 4 < 10 // 2: room
          "normal": [queue(5, 10)],  # 5 is half: no room
          "bulk": [queue(0, 1)]}  # fmt: skip  # maxsize 1: room while empty (max(1, 0))
    await measure(w, adapter, monkeypatch, ends, committed=dict.fromkeys(ends, 0), queues=qs,
                  extra={TP("elsewhere", 9)})  # fmt: skip
    assert adapter["revive"] == [{c9: True, c1: True, n9: False, b9: True}]
    lines = [r.getMessage() for r in caplog.records if r.name == "app.agents.dispatch"]
    assert sorted(lines) == sorted(f"{tp}: fetching again (its buffer has room)" for tp in (c9, b9))
    qs = {"normal": [queue(4, 10), queue(5, 11)]}  # every queue must have room: 4 < 5, 5 == 11 // 2
    await measure(w, adapter, monkeypatch, ends, committed=dict.fromkeys(ends, 0), queues=qs)
    assert adapter["revive"][-1] == {c9: True, c1: True, n9: False, b9: True}
    qs = {"normal": [queue(1, 3)]}  # 1 == max(1, 3 // 2): no room
    await measure(w, adapter, monkeypatch, ends, committed=dict.fromkeys(ends, 0), queues=qs)
    assert adapter["revive"][-1][n9] is False


async def test_a_lane_not_on_turn_with_a_full_enough_buffer_stops_fetching(
    wired: Wired,
    adapter: dict[str, list[Any]],
    monkeypatch: pytest.MonkeyPatch,
    caplog: pytest.LogCaptureFixture,
) -> None:
    w = wired
    c0 = lane_tp(w, "critical", 0)
    n0, n1, b0 = lane_tp(w, "normal", 0), lane_tp(w, "normal", 1), lane_tp(w, "bulk", 0)
    ends: dict[Any, int | None] = {c0: 500, n0: 10, n1: 10, b0: 10}
    committed: dict[Any, int | None] = dict.fromkeys(ends, 0)
    w.gate.every = 0  # strict priority: a lane below a busy one never gets a turn
    held = {"normal": [queue(dm.HOLD_BUFFERED - 1)], "bulk": [queue(0)]}
    await measure(w, adapter, monkeypatch, ends, committed=committed, queues=held)
    assert adapter["pause"] == []  # one short of HOLD_BUFFERED
    held["normal"] = [queue(dm.HOLD_BUFFERED - 10), queue(10)]
    await measure(w, adapter, monkeypatch, ends, committed=committed, queues=held)
    assert adapter["pause"] == [{n0, n1}]
    await measure(w, adapter, monkeypatch, ends, committed=committed, queues=held)
    assert adapter["pause"] == [{n0, n1}]  # already held: not paused again
    # the state report marks the partitions held by us with H
    monkeypatch.setattr(dm.faust_adapter, "fetch_position", lambda c, tp: 0)
    monkeypatch.setattr(dm.faust_adapter, "fetch_paused", lambda c, tp: "")
    w.dispatcher.stats.admitted = 1
    caplog.set_level(logging.INFO, logger="app.agents.dispatch")
    await w.app.timers["dispatch-state"][1]()
    line = caplog.records[-1].getMessage().removeprefix("dispatch fetch state: ")
    assert sorted(line.split()) == [
        "bulk0:pos=0,due=None,end=10", "critical0:pos=0,due=None,end=500",
        "normal0:pos=0,due=None,end=10,H", "normal1:pos=0,due=None,end=10,H"]  # fmt: skip
    # critical drained: normal's turn again, fetched again
    ends[c0] = 0
    await measure(w, adapter, monkeypatch, ends, committed=committed, queues=held)
    assert adapter["resume"] == [{n0, n1}]
    await measure(w, adapter, monkeypatch, ends, committed=committed, queues=held)
    assert adapter["resume"] == [{n0, n1}]


async def test_a_lane_given_its_turn_resumes_its_own_partitions_only(
    wired: Wired, adapter: dict[str, list[Any]], monkeypatch: pytest.MonkeyPatch
) -> None:
    w = wired
    c0, n0, b0 = (lane_tp(w, lane, 0) for lane in ("critical", "normal", "bulk"))
    ends: dict[Any, int | None] = {c0: 500, n0: 10, b0: 10}
    w.gate.every = 0
    full = {lane: [queue(dm.HOLD_BUFFERED)] for lane in ("normal", "bulk")}
    await measure(w, adapter, monkeypatch, ends, committed={}, queues=full)
    assert adapter["pause"] == [{n0}, {b0}]
    ends[c0] = 0  # critical drained: normal's turn; bulk still waits behind normal
    await measure(w, adapter, monkeypatch, ends, committed={}, queues=full)
    assert adapter["resume"] == [{n0}]
    ends[n0], full["normal"] = 0, []  # normal drained too: bulk's turn
    await measure(w, adapter, monkeypatch, ends, committed={}, queues=full)
    assert adapter["resume"] == [{n0}, {b0}]


async def test_a_held_partition_that_comes_back_is_held_again(
    wired: Wired, adapter: dict[str, list[Any]], monkeypatch: pytest.MonkeyPatch
) -> None:
    # taken away and given back between two ticks (no rebalance seen by the timer):
    # its fetch state is fresh, so it is paused again, not taken as still held
    w = wired
    c0, n0, n1 = lane_tp(w, "critical", 0), lane_tp(w, "normal", 0), lane_tp(w, "normal", 1)
    w.gate.every = 0
    full = {"normal": [queue(dm.HOLD_BUFFERED)]}
    await measure(w, adapter, monkeypatch, {c0: 500, n0: 10, n1: 10}, committed={}, queues=full)
    await measure(w, adapter, monkeypatch, {c0: 500, n0: 10}, committed={}, queues=full)
    await measure(w, adapter, monkeypatch, {c0: 500, n0: 10, n1: 10}, committed={}, queues=full)
    assert adapter["pause"] == [{n0, n1}, {n1}]


async def test_lanes_are_never_held_while_faust_pauses_them_itself(
    wired: Wired, adapter: dict[str, list[Any]], monkeypatch: pytest.MonkeyPatch
) -> None:
    w = wired
    c0, n0 = lane_tp(w, "critical", 0), lane_tp(w, "normal", 0)
    ends: dict[Any, int | None] = {c0: 500, n0: 10}
    committed: dict[Any, int | None] = dict.fromkeys(ends, 0)
    w.gate.every = 0
    held = {"normal": [queue(dm.HOLD_BUFFERED)]}
    await measure(w, adapter, monkeypatch, ends, committed=committed, queues=held)
    assert adapter["pause"] == [{n0}]
    # a rebalance: the client's partition states are fresh; nothing is held any more
    await measure(w, adapter, monkeypatch, ends, committed=committed, queues=held,
                  may_pause=False)  # fmt: skip
    ends[c0] = 0
    await measure(w, adapter, monkeypatch, ends, committed=committed, queues=held)
    assert adapter["resume"] == []  # nothing to resume: the rebalance cleared it
    ends[c0] = 500
    await measure(w, adapter, monkeypatch, ends, committed=committed, queues=held)
    assert adapter["pause"] == [{n0}, {n0}]


async def test_a_failing_measure_is_logged_after_five_seconds_of_failures(
    wired: Wired, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    w = wired
    caplog.set_level(logging.WARNING, logger="app.agents.dispatch")
    now = [100.0]
    monkeypatch.setattr(dm.time, "monotonic", lambda: now[0])
    w.app.consumer.fail_assignment = True
    _, tick = w.app.timers["dispatch-lane-backlog"]
    await tick()
    now[0] = 105.0
    await tick()
    assert caplog.records == []
    now[0] = 105.5
    await tick()
    [line] = [r.getMessage() for r in caplog.records if r.name == "app.agents.dispatch"]
    assert line.startswith("lane backlog not measured for 6 s: RuntimeError(")
    now[0] = 110.0
    await tick()
    assert len(caplog.records) == 1  # counted again from the last warning


# -- the fetch-state report ---------------------------------------------------------------------


async def test_the_state_report_explains_each_lane_partition_with_work_left(
    wired: Wired,
    adapter: dict[str, list[Any]],
    monkeypatch: pytest.MonkeyPatch,
    caplog: pytest.LogCaptureFixture,
) -> None:
    w = wired
    caplog.set_level(logging.INFO, logger="app.agents.dispatch")
    _, report = w.app.timers["dispatch-state"]
    await report()
    assert caplog.records == []  # nothing admitted yet: nothing to say
    c0, c1 = lane_tp(w, "critical", 0), lane_tp(w, "critical", 1)
    n2, b0 = lane_tp(w, "normal", 2), lane_tp(w, "bulk", 0)
    consumer = w.app.consumer
    consumer.assigned = {c0, c1, n2, b0, TP("elsewhere", 0)}
    consumer.highwaters_known = {c0: 10, c1: 10, n2: 5, b0: None}
    consumer.expected = {c0: 10, c1: 4, b0: 7}  # c0: all fetched
    monkeypatch.setattr(dm.faust_adapter, "fetch_position",
                        lambda c, tp: 100 + tp.partition if c is consumer else None)  # fmt: skip
    monkeypatch.setattr(dm.faust_adapter, "fetch_paused",
                        lambda c, tp: "P" if tp == c1 and c is consumer else "")  # fmt: skip
    w.dispatcher.stats.admitted = 1
    await report()
    lines = [r.getMessage() for r in caplog.records if r.name == "app.agents.dispatch"]
    assert lines[-1] == (
        "dispatch fetch state: bulk0:pos=100,due=7,end=None critical1:pos=101,due=4,end=10,P"
        " normal2:pos=102,due=None,end=5"
    )
    assert lines[0].startswith("dispatch: active ")
    consumer.highwaters_known[c1] = 4
    consumer.highwaters_known[b0] = 7
    consumer.expected[n2] = 6
    consumer.tracker = None  # type: ignore[assignment,method-assign]
    caplog.clear()
    await report()
    lines = [r.getMessage() for r in caplog.records if r.name == "app.agents.dispatch"]
    # without a tracker nothing is known to be due
    assert lines[-1] == (
        "dispatch fetch state: bulk0:pos=100,due=None,end=7 critical0:pos=100,due=None,end=10"
        " critical1:pos=101,due=None,end=4,P normal2:pos=102,due=None,end=5"
    )
    consumer.assigned = {c0}
    consumer.tracker = lambda: SimpleNamespace(expected={c0: 10})  # type: ignore[method-assign]
    caplog.clear()
    await report()
    lines = [r.getMessage() for r in caplog.records if r.name == "app.agents.dispatch"]
    assert lines[-1] == "dispatch fetch state: all fetched"
    consumer.fail_assignment = True
    caplog.clear()
    await report()
    lines = [r.getMessage() for r in caplog.records if r.name == "app.agents.dispatch"]
    assert lines[-1] == "dispatch fetch state: RuntimeError('rebalancing')"


# -- revocation and assignment -------------------------------------------------------------------


async def test_a_revocation_drains_flushes_and_forgets_what_was_taken(
    wired: Wired, adapter: dict[str, list[Any]], monkeypatch: pytest.MonkeyPatch
) -> None:
    w = wired
    revoked: list[set[Any]] = []

    async def revoke(tps: set[Any]) -> None:
        revoked.append(set(tps))

    async def admit(lane: str, work: Any) -> bool:
        return True

    w.dispatcher.revoke = revoke
    w.dispatcher.admit = admit
    c0, c1 = lane_tp(w, "critical", 0), lane_tp(w, "critical", 1)
    _, _, agent = w.app.agents["dispatch-critical"]
    await agent(Stream([event(c0, 30), event(c1, 30)]))
    w.app.consumer.earliest = {c0: 0, c1: 0}
    await measure(w, adapter, monkeypatch, {c0: 50, c1: 50}, committed={c0: None, c1: None})
    assert w.gate.backlog["critical"] == 19 + 19  # from what was taken
    assert w.app.consumer.requests == 0  # both starts known: no earliest offset asked
    await w.app.spillway_before_revoke({c0})
    assert revoked == [{c0}] and w.app.producer.flushes == 1
    w.app.consumer.earliest = {c0: 10, c1: 10}
    await measure(w, adapter, monkeypatch, {c0: 50, c1: 50}, committed={c0: None, c1: None})
    # c0: taken and earliest forgotten (50 - 10); c1 still counts from what was taken
    assert w.gate.backlog["critical"] == 40 + 19


async def test_a_new_generation_reopens_admission_and_forgets_what_was_taken(
    wired: Wired, adapter: dict[str, list[Any]], monkeypatch: pytest.MonkeyPatch
) -> None:
    w = wired
    assigned: list[set[Any]] = []
    w.dispatcher.assigned = lambda tps: assigned.append(set(tps))

    async def admit(lane: str, work: Any) -> bool:
        return True

    w.dispatcher.admit = admit
    c0 = lane_tp(w, "critical", 0)
    _, _, agent = w.app.agents["dispatch-critical"]
    await agent(Stream([event(c0, 30)]))
    w.app.spillway_on_assigned({c0})
    assert assigned == [{c0}]
    await measure(w, adapter, monkeypatch, {c0: 50}, committed={c0: 20})
    assert w.gate.backlog["critical"] == 30  # from the committed offset again


async def test_a_partition_whose_start_is_unknown_counts_from_offset_zero(
    wired: Wired, adapter: dict[str, list[Any]], monkeypatch: pytest.MonkeyPatch
) -> None:
    w = wired
    c0 = lane_tp(w, "critical", 0)  # never committed, and the broker gives no earliest
    await measure(w, adapter, monkeypatch, {c0: 12}, committed={c0: None})
    assert w.gate.backlog["critical"] == 12


async def test_revoking_a_partition_never_taken_forgets_its_earliest_offset(
    wired: Wired, adapter: dict[str, list[Any]], monkeypatch: pytest.MonkeyPatch
) -> None:
    w = wired

    async def revoke(tps: set[Any]) -> None:
        pass

    w.dispatcher.revoke = revoke
    c0 = lane_tp(w, "critical", 0)
    w.app.consumer.earliest = {c0: 4}
    await measure(w, adapter, monkeypatch, {c0: 10}, committed={c0: None})
    assert w.gate.backlog["critical"] == 6
    await w.app.spillway_before_revoke({c0})  # nothing was taken of it: no error
    w.app.consumer.earliest = {c0: 8}  # asked again once it is back
    await measure(w, adapter, monkeypatch, {c0: 10}, committed={c0: None})
    assert w.gate.backlog["critical"] == 2


async def test_the_state_report_without_a_gapless_tracker(
    wired: Wired, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    w = wired
    caplog.set_level(logging.INFO, logger="app.agents.dispatch")

    class Plain:  # a consumer without ``tracker`` (not the GaplessConsumer)
        def assignment(self) -> set[Any]:
            return {lane_tp(w, "critical", 0)}

        def highwater(self, tp: Any) -> int:
            return 5

    w.app.consumer = Plain()  # type: ignore[assignment]
    monkeypatch.setattr(dm.faust_adapter, "fetch_position", lambda c, tp: 3)
    monkeypatch.setattr(dm.faust_adapter, "fetch_paused", lambda c, tp: "")
    w.dispatcher.stats.admitted = 1
    _, report = w.app.timers["dispatch-state"]
    await report()
    lines = [r.getMessage() for r in caplog.records if r.name == "app.agents.dispatch"]
    assert lines[-1] == "dispatch fetch state: critical0:pos=3,due=None,end=5"


async def test_the_dispatcher_and_the_stage_take_every_setting(
    registry: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    real, _ = make_app("dispatch", registry)
    runtime = real.spillway  # type: ignore[attr-defined]
    s = runtime.settings
    s.policy.dispatch_lane_in_flight = 7
    s.policy.max_attempts = 9
    s.policy.state_flush_s = 0.75
    s.kafka.session_timeout_s = 6.0  # a third is 2 s: the floor
    s.policy.dedupe_horizon_s = 10 * 86_400.0  # not the ledger's default of 7 days
    stages: list[Any] = []

    class Stage(dm.DispatchStage):
        def __post_init__(self) -> None:
            super().__post_init__()
            stages.append(self)

    monkeypatch.setattr(dm, "DispatchStage", Stage)
    monkeypatch.setattr(dm.ledger_table, "declare_table", lambda a, n: {})
    monkeypatch.setattr(dm.pressure_table, "declare_table", lambda a, n: {})
    app = FakeApp()
    dm.attach(app, runtime)
    d = app.spillway_dispatcher  # type: ignore[attr-defined]
    assert (d.lane_in_flight, d.session_timeout_s, d.stall_s) == (7, 6.0, 2.0)
    out = await d.handle(b"\x00", Origin("t", 0, 0), "normal")  # builds the stage
    assert out is not None and out.topic == DEAD
    [st] = stages
    assert (st.max_attempts, st.flush_every_s) == (9, 0.75)
    assert st.ledger.horizon_s == s.ledger_horizon_s() == 864_000.0


# -- the tables and the lost-message watch -------------------------------------------------------


class Changelog:
    def __init__(self) -> None:
        self.declared = 0

    async def maybe_declare(self) -> None:
        self.declared += 1


class Table(dict[bytes, Any]):
    def __init__(self) -> None:
        super().__init__()
        self.changelog_topic = Changelog()


async def test_each_table_changelog_is_declared_once_before_the_first_message(
    registry: Any, adapter: dict[str, list[Any]], monkeypatch: pytest.MonkeyPatch
) -> None:
    real, _ = make_app("dispatch", registry)
    tables = [Table(), Table()]
    monkeypatch.setattr(dm.ledger_table, "declare_table", lambda a, n: tables[0])
    monkeypatch.setattr(dm.pressure_table, "declare_table", lambda a, n: tables[1])
    app = FakeApp()
    dm.attach(app, real.spillway)
    d = app.spillway_dispatcher  # type: ignore[attr-defined]
    seen: list[list[int]] = []

    async def turn(lane: str) -> None:
        pass

    async def admit(lane: str, work: Any) -> bool:
        seen.append([t.changelog_topic.declared for t in tables])
        return True

    d.turn, d.admit = turn, admit
    for lane in ("critical", "bulk"):
        _, _, agent = app.agents[f"dispatch-{lane}"]
        await agent(Stream([event(TP("x", 0), 1)]))
    assert seen == [[1, 1], [1, 1]]  # before the first message, and only once


async def test_a_message_taken_past_and_lost_is_delivered_again_after_three_seconds(
    wired: Wired, adapter: dict[str, list[Any]], monkeypatch: pytest.MonkeyPatch
) -> None:
    w = wired
    c0 = lane_tp(w, "critical", 0)
    redelivered: list[tuple[Any, int]] = []

    async def redeliver(tp: Any, offset: int) -> None:
        redelivered.append((tp, offset))

    async def admit(lane: str, work: Any) -> bool:
        return True  # admitted, then lost: never done, never in hand

    consumer = dm.GaplessConsumer.__new__(dm.GaplessConsumer)
    consumer.commit_base = lambda tp: 30  # type: ignore[method-assign]
    consumer.redeliver = redeliver  # type: ignore[method-assign]
    w.app.consumer = consumer  # type: ignore[assignment]
    now = [100.0]
    monkeypatch.setattr(dm.time, "monotonic", lambda: now[0])
    monkeypatch.setattr(dm.faust_adapter, "may_pause", lambda app: app is w.app)
    monkeypatch.setattr(dm.faust_adapter, "acked_offsets", lambda c, tp: ([], set()))
    w.dispatcher.admit = admit
    _, _, agent = w.app.agents["dispatch-critical"]
    await agent(Stream([event(c0, 30), event(c0, 31)]))
    _, watch = w.app.timers["dispatch-lost-watch"]
    await watch()
    now[0] = 102.9
    await watch()
    assert redelivered == []  # it may still be on its way
    now[0] = 103.0  # dm.LOST_AFTER_S since it was first seen missing
    await watch()
    assert redelivered == [(c0, 30)]
