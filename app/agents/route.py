"""Route agent.

Consumes ``email.rendered``; produces ``email.dispatch.{critical,normal,bulk}``
(DispatchRequest, by priority) and ``email.dead``. Keeps no state.

Batched like render: a batch's input is acked only after Kafka acknowledged every
output (``app.agents.delivery``).
"""

from __future__ import annotations

from typing import Any

from app import metrics
from app.agents import delivery
from app.agents.guard import crash_on_error
from app.runtime import Runtime
from app.stages.common import Origin, Sealer
from app.stages.route import RouteStage
from app.topology import RENDERED


def attach(app: Any, runtime: Runtime) -> Any:
    settings = runtime.settings

    async def route(stream: Any) -> None:
        with crash_on_error("route"):  # registry unreachable at start: one clear exit
            await runtime.start()
        stage = RouteStage(
            runtime.serde, sealer=Sealer(runtime.encode_record, settings.max_output_bytes)
        )
        async for events in stream.take_events(
            settings.stage_batch_size, settings.stage_batch_within_s
        ):
            with crash_on_error("route"), metrics.busy("route"):
                out = [await stage.handle(e.value, Origin.of(e.message)) for e in events]
                await delivery.deliver(runtime, out, stage="route")

    return app.agent(runtime.topology.topics[RENDERED], name="route", concurrency=1)(route)
