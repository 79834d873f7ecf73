"""Dispatch stage agents, one per lane.

Consumes ``email.dispatch.critical``, ``.normal`` and ``.bulk``; produces
``email.sent`` (SendResult) and ``email.dead``. Keeps the sent-ledger table
(event id -> in_flight | sent | failed). Lanes run side by side; a lower lane
starts a send only while the higher lanes have no backlog (``LaneGate``), and the
backlog of each lane is read from the consumer every ``BACKLOG_EVERY_S``.
"""

from __future__ import annotations

import asyncio
from typing import Any

from app.models import PRIORITIES
from app.agents.guard import crash_on_error
from app.runtime import Runtime, build_provider
from app.stages.common import Origin
from app.stages.dispatch import DispatchStage
from app.stages.lanes import LaneGate
from app.tables.ledger import Ledger, declare_table
from app.topology import LANES

BACKLOG_EVERY_S = 0.1


def attach(app: Any, runtime: Runtime) -> list[Any]:
    settings = runtime.settings
    topology = runtime.topology
    ledger = Ledger(declare_table(app, settings.topic_partitions))
    gate = LaneGate(start_unknown=True)
    next_offset: dict[Any, int] = {}  # TP -> next offset to handle, as seen by this worker
    holder: dict[str, DispatchStage] = {}

    def stage() -> DispatchStage:
        if "stage" not in holder:
            holder["stage"] = DispatchStage(
                runtime.serde,
                build_provider(settings),
                ledger,
                gate,
                max_in_flight=settings.dispatch_max_in_flight,
            )
        return holder["stage"]

    def lane_agent(lane: str) -> Any:
        async def dispatch(stream: Any) -> None:
            await runtime.start()
            st = stage()

            async def one(event: Any) -> None:
                message = event.message
                emission = await st.handle(event.value, Origin.of(message), lane)
                if emission is not None:
                    await runtime.emit(emission)
                tp = message.tp
                next_offset[tp] = max(next_offset.get(tp, 0), message.offset + 1)

            async for events in stream.take_events(
                settings.dispatch_batch_size, within=settings.dispatch_batch_within_s
            ):
                gate.enter(lane)
                try:
                    with crash_on_error(f"dispatch-{lane}"):
                        await asyncio.gather(*(one(e) for e in events))
                finally:
                    gate.leave(lane)

        return app.agent(topology.topics[LANES[lane]], name=f"dispatch-{lane}", concurrency=1)(
            dispatch
        )

    agents = [lane_agent(lane) for lane in PRIORITIES]

    earliest: dict[Any, int] = {}

    @app.timer(BACKLOG_EVERY_S, name="dispatch-lane-backlog")
    async def lane_backlog() -> None:
        # Highwaters come from fetch responses (no request); a partition's start is
        # what this worker handled, else the committed offset, else its earliest.
        consumer = app.consumer
        assigned = consumer.assignment()
        committed = getattr(consumer, "_committed_offset", {})
        for lane in PRIORITIES[:-1]:  # the lowest lane waits on no one
            name = topology.name(LANES[lane])
            backlog = 0
            for tp in (tp for tp in assigned if tp.topic == name):
                end = consumer.highwater(tp)
                start = max(next_offset.get(tp, -1), committed.get(tp) or -1)
                if start < 0:
                    if tp not in earliest:
                        earliest.update(await consumer.earliest_offsets(tp))
                    start = earliest.get(tp, 0)
                if end is None:
                    end = start + 1  # not fetched yet: assume work until we know
                backlog += max(0, end - start)
            gate.set_backlog(lane, backlog)

    return agents
