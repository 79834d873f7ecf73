"""Render stage agents: one per raw topic.

Consumes ``email.raw-events.{critical,normal,bulk}`` and the catch-all
``email.raw-events`` (Avro or JSON bytes); produces ``email.rendered.<priority>``
(DispatchRequest with routing headers, by the event's own priority) and
``email.dead`` (DeadLetter). Keeps no state.

One agent per priority topic (issue 14), so a critical event has its own partitions
and stream buffer; the agents share one ``PriorityGate``: when several have a batch,
critical goes first, then normal (and the catch-all, read at normal priority), then
bulk, and no lane starves (``app.stages.priority``).

Records are handled in batches (``stage_batch_size``); a batch's input is acked only
after Kafka acknowledged every output (``app.agents.delivery``). Anything a record
can cause is a dead letter (``app.stages.render``); only an infrastructure fault
reaches the guard, which stops the worker without acking.
"""

from __future__ import annotations

from typing import Any

from app.agents import delivery
from app.agents.guard import crash_on_error
from app.runtime import Runtime
from app.stages.common import Emission, Origin, Sealer
from app.stages.priority import PriorityGate
from app.stages.render import RenderStage, is_rendered
from app.templating import TemplateStore
from app.topology import RAW, RAW_LANES


def attach(app: Any, runtime: Runtime) -> list[Any]:
    settings = runtime.settings
    templates = TemplateStore(settings.templates_dir)
    gate = PriorityGate()
    stages: list[RenderStage] = []

    def stage_of() -> RenderStage:
        if not stages:
            stages.append(
                RenderStage(
                    runtime.serde,
                    templates,
                    settings.default_sender,
                    sealer=Sealer(runtime.encode_record, settings.policy.max_output_bytes),
                )
            )
        return stages[0]

    def agent_for(lane: str) -> Any:
        async def render(stream: Any) -> None:
            with crash_on_error("render"):  # registry unreachable at start: one clear exit
                await runtime.start()
            stage = stage_of()

            async def handle(event: Any) -> Emission:
                emission = await stage.handle(event.value, Origin.of(event.message))
                if is_rendered(emission.topic):
                    runtime.metrics.render_time(emission.value.template, stage.last_render_s)
                return emission

            await delivery.prioritised(runtime, stream, gate, lane, "render", handle)

        return render

    return delivery.per_priority_agents(app, runtime, "render", RAW_LANES, RAW, agent_for)
