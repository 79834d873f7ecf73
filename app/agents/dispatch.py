"""Dispatch stage agents: one per lane, one per retry topic.

Consumes ``email.dispatch.{critical,normal,bulk}`` and ``email.dispatch.retry-N``;
produces ``email.sent`` (SendResult), ``email.dead``, and delayed retries (back to
the retry topics, then to the lanes). Keeps two changelog-backed tables: the
sent-ledger (event id -> in_flight | sent | failed) and the pressure table (per
provider and partition: rate-meter times and breaker state).

Lanes run side by side; a lower lane sends only while the higher lanes have no
backlog (``LaneGate``), measured from the consumer every ``BACKLOG_EVERY_S``.
"""

from __future__ import annotations

import asyncio
import functools
import logging
import time
from typing import Any

from app import faust_adapter
from app.agents import delivery
from app.agents.guard import crash_on_error
from app.consumer import GaplessConsumer, LostWatch
from app.dispatcher import Dispatcher, Outbox, Work
from app.models import PRIORITIES
from app.runtime import Runtime, build_provider
from app.stages.common import Emission, Origin
from app.stages.dispatch import DispatchStage, retry_route
from app.stages.lanes import LaneGate, waiting_work
from app.stages.pressure import PacedProvider, PressureBoard
from app.tables import ledger as ledger_table
from app.tables import pressure as pressure_table
from app.tables.ledger import Ledger
from app.topology import LANES, RETRIES, SENT

BACKLOG_EVERY_S = 0.1
LOST_AFTER_S = 3.0  # a message taken past and not in hand this long is redelivered
HOLD_BUFFERED = 64  # a held-back lane keeps this many messages buffered for its turns
LEDGER_SWEEP_EVERY_S = 10.0
LEDGER_SWEEP_BUDGET = 5_000  # keys looked at per sweep: a few ms
log = logging.getLogger(__name__)


class FaustMembership:
    """Owned: in the consumer's assignment, in the generation of the message."""

    def __init__(self, app: Any) -> None:
        self.app = app

    def owns(self, tp: Any, generation: int | None) -> bool:
        try:
            assigned = faust_adapter.assigned(self.app.consumer)
        except Exception:
            return False
        if tp not in assigned:
            return False
        return generation is None or generation == faust_adapter.generation(self.app)


def attach(app: Any, runtime: Runtime) -> list[Any]:
    settings = runtime.settings
    topology = runtime.topology
    policies = {p.name: p for p in settings.provider_policies()}
    primary = settings.provider_policies()[0].name
    ledger_tbl = ledger_table.declare_table(app, settings.kafka.topic_partitions)
    pressure_tbl = pressure_table.declare_table(app, settings.kafka.topic_partitions)
    ledger = Ledger(ledger_tbl, horizon_s=settings.ledger_horizon_s())
    board = PressureBoard(
        policies, settings.kafka.topic_partitions, pressure_tbl, pressure_table.key_for
    )
    ready = asyncio.Event()

    async def tables_ready() -> None:
        """The tables' changelog topics exist before the first write (the writes
        themselves pick their partition from the key: app.tables.KeyHashedTable)."""
        if ready.is_set():
            return
        for table in (ledger_tbl, pressure_tbl):
            if hasattr(table, "changelog_topic"):  # unit tests pass plain dicts
                await table.changelog_topic.maybe_declare()
        ready.set()

    gate = LaneGate(start_unknown=True)
    next_offset: dict[Any, int] = {}  # TP -> next offset to handle, as seen by this worker
    holder: dict[str, Any] = {}

    def stage() -> DispatchStage:
        if "stage" not in holder:
            holder["stage"] = DispatchStage(
                runtime.serde,
                {
                    # the send window, then the fence, then the request
                    name: PacedProvider(
                        dispatcher.fenced_provider(build_provider(policy)), board, name
                    )
                    for name, policy in policies.items()
                },
                policies,
                primary,
                ledger,
                gate,
                board,
                max_attempts=settings.policy.max_attempts,
                flush_every_s=settings.policy.state_flush_s,
                metrics=runtime.metrics,
            )
            for name, policy in policies.items():
                runtime.metrics.breaker_state(name, "closed")
                runtime.metrics.quota(name, policy.quota_per_s or 0.0)
        return holder["stage"]

    membership = FaustMembership(app)

    async def handle(payload: bytes, origin: Origin, lane: str) -> Emission | None:
        with runtime.metrics.busy("dispatch"):
            return await stage().handle(payload, origin, lane)

    async def deliver_one(emission: Emission) -> None:
        await delivery.deliver(runtime, [emission], stage="dispatch")

    async def deliver_batch(emissions: list[Emission]) -> None:
        await delivery.deliver(runtime, emissions, stage="dispatch")

    def fatal(exc: BaseException) -> None:
        with crash_on_error("dispatch"):
            raise exc

    dispatcher = Dispatcher(
        handle=handle,
        deliver=deliver_one,
        membership=membership,
        lanes=PRIORITIES,
        lane_in_flight=settings.policy.dispatch_lane_in_flight,
        revoke_bound_s=settings.revoke_bound(),
        stall_s=max(2.0, settings.kafka.session_timeout_s / 3),
        session_timeout_s=settings.kafka.session_timeout_s,
        confirm=ledger.confirm,
        sent_topic=SENT,
        enter=gate.enter,
        leave=gate.leave,
        on_fatal=fatal,
        may_take=gate.may_take,
        take=gate.take,
        outbox=Outbox(
            deliver_batch,
            ledger.confirm,
            sent_topic=SENT,
            size=settings.policy.dispatch_batch_size,
            within_s=settings.policy.dispatch_batch_within_s,
            in_flight=settings.policy.stage_batches_in_flight,
        ),
    )
    ledger.guard = dispatcher.fence
    app.spillway_dispatcher = dispatcher
    shutdown = getattr(app, "spillway_shutdown", None)
    if shutdown is not None:
        shutdown.drains.append(dispatcher.stop)

    def lane_agent(lane: str) -> Any:
        async def dispatch(stream: Any) -> None:
            await runtime.start()
            await tables_ready()
            stage()
            events = stream.events().__aiter__()
            while True:
                # Take the next message only when this lane may start it (its priority
                # turn, a free slot): nothing taken waits for another lane, so this
                # lane's commits keep advancing while it is held back.
                await dispatcher.turn(lane)
                try:
                    event = await events.__anext__()
                except StopAsyncIteration:
                    return
                message = event.message
                tp = message.tp
                generation = faust_adapter.message_generation(message)
                if generation in (None, faust_adapter.generation(app)):
                    next_offset[tp] = max(next_offset.get(tp, 0), message.offset + 1)
                faust_adapter.hold(event)  # acked by the dispatcher once done, or never
                work = Work(
                    tp=tp,
                    offset=message.offset,
                    generation=generation,
                    value=event.value,
                    origin=Origin.of(message),
                    release=functools.partial(faust_adapter.release, event),
                )
                await dispatcher.admit(lane, work)

        return app.agent(topology.topics[LANES[lane]], name=f"dispatch-{lane}", concurrency=1)(
            dispatch
        )

    def retry_agent(name: str) -> Any:
        async def retry(stream: Any) -> None:
            """Hold each message until its not_before, then put it back on its lane
            (acked only once Kafka acknowledged it there). Only this retry partition
            waits; the lanes keep flowing."""
            await runtime.start()
            async for event in stream.events():
                with crash_on_error(f"dispatch-{name}"):
                    out, delay = await retry_route(
                        runtime.serde, event.value, Origin.of(event.message)
                    )
                    if delay > 0:
                        await asyncio.sleep(delay)
                    await delivery.deliver(runtime, [out], stage="dispatch")

        return app.agent(
            topology.topics[name], name=f"dispatch-{name.split('.')[-1]}", concurrency=1
        )(retry)

    agents = [lane_agent(lane) for lane in PRIORITIES]
    agents += [retry_agent(name) for name in RETRIES.values()]
    earliest: dict[Any, int] = {}

    unmeasured: dict[str, float] = {}

    @app.timer(BACKLOG_EVERY_S, name="dispatch-lane-backlog")
    async def lane_backlog() -> None:
        try:
            await measure_backlog()
            unmeasured.clear()
        except Exception as exc:  # e.g. the assignment changed under us: next tick
            now = time.monotonic()
            since = unmeasured.setdefault("since", now)
            if now - since > 5.0:  # lower lanes wait while this fails
                log.warning("lane backlog not measured for %.0f s: %r", now - since, exc)
                unmeasured["since"] = now

    @app.timer(10.0, name="dispatch-state")
    async def report_state() -> None:
        if dispatcher.stats.admitted:
            log.info(
                "dispatch: active %s, backlog %s, gate active %s, taken %s (by turns earned %s), "
                "held %d partitions, tasks %d, parked %d, %s",
                dispatcher.active,
                gate.backlog,
                gate.active,
                gate.taken,
                gate.by_credit,
                len(held),
                len(dispatcher.works),
                len(dispatcher.parked),
                dispatcher.stats,
            )
            log.info("dispatch fetch state: %s", fetch_state())

    def fetch_state() -> str:
        """Per lane partition with work left: client position, end, next offset due,
        Faust's pause / buffer-full marks (what a stalled lane needs to be explained)."""
        consumer = app.consumer
        try:
            assigned = consumer.assignment()
        except Exception as exc:
            return repr(exc)
        tracker = getattr(consumer, "tracker", None)
        expected = tracker().expected if tracker is not None else {}
        out = []
        for tp in sorted(assigned):
            lane = next((ln for ln in PRIORITIES if topology.name(LANES[ln]) == tp.topic), None)
            if lane is None:
                continue
            end = consumer.highwater(tp)
            due = expected.get(tp)
            if end is not None and due is not None and due >= end:
                continue  # all fetched
            marks = faust_adapter.fetch_paused(consumer, tp)
            marks += "H" if tp in held else ""
            out.append(
                f"{lane}{tp.partition}:pos={faust_adapter.fetch_position(consumer, tp)}"
                f",due={due},end={end}{',' + marks if marks else ''}"
            )
        return " ".join(out) or "all fetched"

    held: set[Any] = set()  # lane partitions paused by us: their lane may not take now

    async def hold_lanes(assigned: set[Any], buffers: dict[str, list[Any]]) -> None:
        """A lane whose turn it is not stops fetching once its buffer holds a few
        messages to take when a turn comes: held-back messages wait in Kafka, not in
        this worker's buffers (a full buffer stops the consumer for every lane).
        Never during a rebalance or recovery, when Faust pauses and resumes itself."""
        if not faust_adapter.may_pause(app):
            held.clear()  # a rebalance gives the client fresh, unpaused partition states
            return
        for lane in PRIORITIES[1:]:
            name = topology.name(LANES[lane])
            tps = {tp for tp in assigned if tp.topic == name}
            buffered = sum(q.qsize() for q in buffers[lane])
            if not gate.may_take(lane) and buffered >= HOLD_BUFFERED:
                if tps - held:
                    await faust_adapter.pause_fetch(app, tps - held)
                    held.update(tps)
            elif tps & held:
                await faust_adapter.resume_fetch(app, tps & held)
                held.difference_update(tps)
        held.intersection_update(assigned)

    def lane_buffers() -> dict[str, list[Any]]:
        """Each lane's buffers: the queues the consumer delivers its messages into."""
        return {
            lane: faust_adapter.lane_queues(app, topology.name(LANES[lane])) for lane in PRIORITIES
        }

    def revive_lanes(assigned: set[Any]) -> None:
        """A lane partition whose buffer has room is fetched (see faust_adapter)."""
        room: dict[Any, bool] = {}
        for lane in PRIORITIES:
            name = topology.name(LANES[lane])
            queues = faust_adapter.lane_queues(app, name)
            free = all(q.qsize() < max(1, q.maxsize // 2) for q in queues) if queues else True
            for tp in assigned:
                if tp.topic == name:
                    room[tp] = free
        for tp in faust_adapter.revive_buffered(app, room, room.get):
            log.info("%s: fetching again (its buffer has room)", tp)

    async def measure_backlog() -> None:
        # Highwaters come from fetch responses (no request); a partition's start is
        # what this worker handled, else the committed offset, else its earliest.
        consumer = app.consumer
        assigned = consumer.assignment()
        revive_lanes(assigned)
        lane_topic = topology.name(LANES[PRIORITIES[0]])
        board.own({tp.partition for tp in assigned if tp.topic == lane_topic})
        committed = faust_adapter.committed_offsets(consumer)
        buffers = lane_buffers()
        stalled = any(q.full() for qs in buffers.values() for q in qs)
        names = {topology.name(LANES[lane]) for lane in PRIORITIES[:-1]}
        mine = [tp for tp in assigned if tp.topic in names]
        # where handling stands: what this worker handled, else the committed offset
        starts = {tp: max(next_offset.get(tp, -1), committed.get(tp) or -1) for tp in mine}
        unknown = [tp for tp in mine if tp not in earliest and starts[tp] < 0]
        if unknown:
            earliest.update(await consumer.earliest_offsets(*unknown))
        unfetched = [tp for tp in mine if consumer.highwater(tp) is None]
        asked = dict(await consumer.highwaters(*unfetched)) if unfetched else {}
        for lane in PRIORITIES[:-1]:  # the lowest lane waits on no one
            name = topology.name(LANES[lane])
            backlog = 0
            for tp in (tp for tp in assigned if tp.topic == name):
                end = consumer.highwater(tp)
                start = starts[tp]
                if start < 0:
                    start = earliest.get(tp, 0)
                if end is None:  # not fetched yet (a partition just taken over): asked
                    end = asked.get(tp)
                if end is None:
                    end = start + 1  # assume work until we know
                backlog += max(0, end - start)
            buffered = sum(q.qsize() for q in buffers[lane]) if buffers[lane] else backlog
            gate.set_backlog(lane, waiting_work(backlog, buffered, stalled))
        await hold_lanes(assigned, buffers)

    @app.timer(settings.policy.state_flush_s, name="dispatch-pressure-flush")
    async def flush_pressure() -> None:
        if not ready.is_set():
            return  # the lane agents have not checked the tables yet
        board.flush(settings.policy.state_flush_s)
        now = time.time()
        for name, share in board.shares.items():
            runtime.metrics.bucket_level(name, share.non_critical.tokens(now))
            runtime.metrics.breaker_state(name, share.breaker.state)

    lost = LostWatch(LOST_AFTER_S)

    @app.timer(1.0, name="dispatch-lost-watch")
    async def lost_watch() -> None:
        """A lane message this worker took past, never done and not being handled, was
        lost on its way (``app.consumer.LostWatch``): deliver its partition again from
        there (redelivered messages that were done are duplicates the ledger absorbs)."""
        consumer = app.consumer
        if not faust_adapter.may_pause(app) or not isinstance(consumer, GaplessConsumer):
            lost.forget()
            return
        now = time.monotonic()
        for tp, taken in list(next_offset.items()):
            base = consumer.commit_base(tp)
            acked = faust_adapter.acked_offsets(consumer, tp)[1]
            offset = lost.check(tp, base, taken, dispatcher.tasks.get(tp, {}), acked, now)
            if offset is None:
                continue
            log.warning(
                "%s: offset %d was taken past (next %d) but never done nor in hand: "
                "delivering the partition again from it",
                tp,
                offset,
                taken,
            )
            await consumer.redeliver(tp, offset)
        lost.forget(next_offset)

    @app.timer(0.5, name="dispatch-stall-watch")
    async def stall_watch() -> None:
        dispatcher.heartbeat()

    async def before_revoke(revoked: set[Any]) -> None:
        """Called by the consumer before Faust forgets the revoked partitions' acks:
        the bounded drain, then the consumer commits their done prefix."""
        await dispatcher.revoke(revoked)
        await app.producer.flush()
        for tp in revoked:
            next_offset.pop(tp, None)
            earliest.pop(tp, None)

    app.spillway_before_revoke = before_revoke  # run by app.consumer.GaplessConsumer
    def assigned_now(tps: set[Any]) -> None:
        """Before the first fetch of a new generation: admission reopens, and what was
        taken in earlier generations no longer counts (the partitions start again at
        their committed offsets)."""
        dispatcher.assigned(tps)
        next_offset.clear()
        lost.forget()

    app.spillway_on_assigned = assigned_now  # likewise, before the first fetch

    @app.timer(LEDGER_SWEEP_EVERY_S, name="dispatch-ledger-expiry")
    async def expire_ledger() -> None:
        if ready.is_set():
            n = ledger.expire(LEDGER_SWEEP_BUDGET)
            if n:
                log.info("sent-ledger: %d entries past the dedupe horizon expired", n)

    @app.on_partitions_revoked.connect
    async def on_revoked(app_: Any, revoked: set[Any], **kwargs: Any) -> None:
        if ready.is_set():
            board.flush(settings.policy.state_flush_s)
        lane_topic = topology.name(LANES[PRIORITIES[0]])
        board.own(board.owned - {tp.partition for tp in revoked if tp.topic == lane_topic})

    @app.on_partitions_assigned.connect
    async def on_assigned(app_: Any, assigned: set[Any], **kwargs: Any) -> None:
        dispatcher.assigned(assigned)
        for tp in set(next_offset) - set(assigned):
            next_offset.pop(tp, None)
        earliest.clear()
        lane_topic = topology.name(LANES[PRIORITIES[0]])
        board.own({tp.partition for tp in assigned if tp.topic == lane_topic})

    return agents
