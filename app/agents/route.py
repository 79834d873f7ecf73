"""Route agent.

Consumes ``email.rendered``; produces ``email.dispatch.{critical,normal,bulk}``
(DispatchRequest, by priority) and ``email.dead``. Keeps no state.
"""

from __future__ import annotations

from typing import Any

from app import metrics
from app.agents.guard import crash_on_error
from app.runtime import Runtime
from app.stages.common import Origin
from app.stages.route import RouteStage
from app.topology import RENDERED


def attach(app: Any, runtime: Runtime) -> Any:
    async def route(stream: Any) -> None:
        await runtime.start()
        stage = RouteStage(runtime.serde)
        async for event in stream.events():
            with crash_on_error("route"), metrics.busy("route"):
                await runtime.emit(await stage.handle(event.value, Origin.of(event.message)))

    return app.agent(runtime.topology.topics[RENDERED], name="route", concurrency=1)(route)
