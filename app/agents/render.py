"""Render stage agent.

Consumes ``email.raw-events`` (Avro or JSON bytes); produces ``email.rendered``
(RenderedEmail) and ``email.dead`` (DeadLetter). Keeps no state.

Records are handled in batches (``stage_batch_size``); a batch's input is acked only
after Kafka acknowledged every output (``app.agents.delivery``). Anything a record
can cause is a dead letter (``app.stages.render``); only an infrastructure fault
reaches the guard, which stops the worker without acking.
"""

from __future__ import annotations

from typing import Any

from app import metrics
from app.agents import delivery
from app.agents.guard import crash_on_error
from app.runtime import Runtime
from app.stages.common import Origin, Sealer
from app.stages.render import RenderStage
from app.templating import TemplateStore
from app.topology import RAW, RENDERED


def attach(app: Any, runtime: Runtime) -> Any:
    settings = runtime.settings
    templates = TemplateStore(settings.templates_dir)

    async def render(stream: Any) -> None:
        with crash_on_error("render"):  # registry unreachable at start: one clear exit
            await runtime.start()
        stage = RenderStage(
            runtime.serde,
            templates,
            settings.default_sender,
            sealer=Sealer(runtime.encode_record, settings.max_output_bytes),
        )
        async for events in stream.take_events(
            settings.stage_batch_size, settings.stage_batch_within_s
        ):
            with crash_on_error("render"), metrics.busy("render"):
                out = []
                for event in events:
                    emission = await stage.handle(event.value, Origin.of(event.message))
                    if emission.topic == RENDERED:
                        metrics.render_time(emission.value.template, stage.last_render_s)
                    out.append(emission)
                await delivery.deliver(runtime, out, stage="render")

    return app.agent(runtime.topology.topics[RAW], name="render", concurrency=1)(render)
