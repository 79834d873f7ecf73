"""Render stage agent.

Consumes ``email.raw-events`` (Avro or JSON bytes); produces ``email.rendered``
(RenderedEmail) and ``email.dead`` (DeadLetter). Keeps no state.
"""

from __future__ import annotations

from typing import Any

from app import metrics
from app.agents.guard import crash_on_error
from app.runtime import Runtime
from app.stages.common import Origin
from app.stages.render import RenderStage
from app.templating import TemplateStore
from app.topology import RAW, RENDERED


def attach(app: Any, runtime: Runtime) -> Any:
    settings = runtime.settings
    templates = TemplateStore(settings.templates_dir)

    async def render(stream: Any) -> None:
        await runtime.start()
        stage = RenderStage(runtime.serde, templates, settings.default_sender)
        async for event in stream.events():
            with crash_on_error("render"), metrics.busy("render"):
                emission = await stage.handle(event.value, Origin.of(event.message))
                if emission.topic == RENDERED:
                    metrics.render_time(emission.value.template, stage.last_render_s)
                await runtime.emit(emission)

    return app.agent(runtime.topology.topics[RAW], name="render", concurrency=1)(render)
