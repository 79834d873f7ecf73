"""Route stage agents: one per rendered topic.

Consumes ``email.rendered.{critical,normal,bulk}`` (and ``email.rendered``, written
before issue 14 or by dead-letter replays); produces
``email.dispatch.{critical,normal,bulk}`` (DispatchRequest, by priority) and
``email.dead``. Keeps no state. Moves bytes: the lane comes from the routing headers
(``app.stages.route``).

Like render: one agent per priority sharing a ``PriorityGate``, batched, a batch's
input acked only after Kafka acknowledged every output (``app.agents.delivery``).
"""

from __future__ import annotations

from typing import Any

from app.agents import delivery
from app.agents.guard import crash_on_error
from app.runtime import Runtime
from app.stages.common import Emission, Origin, Sealer
from app.stages.priority import PriorityGate
from app.stages.route import RouteStage
from app.topology import RENDERED, RENDERED_LANES


def attach(app: Any, runtime: Runtime) -> list[Any]:
    settings = runtime.settings
    gate = PriorityGate()

    def agent_for(lane: str) -> Any:
        async def route(stream: Any) -> None:
            with crash_on_error("route"):  # registry unreachable at start: one clear exit
                await runtime.start()
            sealer = Sealer(runtime.encode_record, settings.policy.max_output_bytes)
            stage = RouteStage(runtime.serde, sealer=sealer)

            async def handle(event: Any) -> Emission:
                return await stage.handle(event.value, Origin.of(event.message))

            await delivery.prioritised(runtime, stream, gate, lane, "route", handle)

        return route

    return delivery.per_priority_agents(app, runtime, "route", RENDERED_LANES, RENDERED, agent_for)
