"""Render stage logic: raw event bytes -> a RenderedEmail, or a dead letter.

Plain functions with their collaborators passed in; the Faust agent in
``app/agents/render.py`` only feeds messages through and produces the result.
"""

from __future__ import annotations

import json
import logging
import time
from dataclasses import dataclass, field

from app.errors import SchemaError, SpillwayError, UnknownTemplateError
from app.models import RawEvent, RenderedEmail
from app.serde import PayloadFormat, Serde, sniff_format
from app.stages.common import Clock, Emission, Origin, dead_letter, now_ms, replay_number
from app.templating import TemplateStore, validate_address, validate_sender

log = logging.getLogger(__name__)

RENDERED = "rendered"
DEAD = "dead"


@dataclass
class RenderStage:
    serde: Serde
    templates: TemplateStore
    default_sender: str
    clock: Clock = time.time
    # Seconds spent rendering, for the render-time metric (latest value).
    last_render_s: float = field(default=0.0, init=False)

    async def handle(self, payload: bytes, origin: Origin) -> Emission:
        """Never raises: every failure becomes a dead letter emission."""
        fmt: PayloadFormat = sniff_format(payload)
        event: RawEvent | None = None
        try:
            event, fmt = await self.serde.decode_raw(payload)
            rendered = self.render(event, origin)
            return Emission(RENDERED, event.event_id.encode(), rendered)
        except Exception as exc:
            if not isinstance(exc, SpillwayError):
                log.warning(
                    "render: unexpected error at %s/%s:%s",
                    origin.topic,
                    origin.partition,
                    origin.offset,
                    exc_info=exc,
                )
            return Emission(
                DEAD,
                event.event_id.encode() if event else origin.key,
                dead_letter(
                    exc,
                    stage="render",
                    origin=origin,
                    payload=payload,
                    payload_format=fmt,
                    at_ms=now_ms(self.clock),
                    event_id=event.event_id if event else None,
                    template=event.template if event else None,
                    template_version=self._version_of(event) if event else None,
                    source=event.source if event else None,
                    priority=event.priority if event else None,
                    replayed=replay_number(origin),  # > 0: died again after a replay
                ),
            )

    def _version_of(self, event: RawEvent) -> str | None:
        """The version the event asked for, else the latest (so dead letters of a new
        template version count against that version)."""
        if event.template_version:
            return event.template_version
        try:
            return self.templates.latest(event.template)
        except UnknownTemplateError:
            return None

    def render(self, event: RawEvent, origin: Origin) -> RenderedEmail:
        to = validate_address(event.to)
        sender = validate_sender(event.from_address) if event.from_address else self.default_sender
        data = dict(event.data or {})
        if event.data_json:
            data = {**_parse_data_json(event.data_json), **data}
        started = time.perf_counter()
        parts = self.templates.render(
            event.template, data, version=event.template_version, locale=event.locale
        )
        self.last_render_s = time.perf_counter() - started
        return RenderedEmail(
            event_id=event.event_id,
            priority=event.priority,
            to=to,
            from_address=sender,
            subject=parts.subject,
            html=parts.html,
            text=parts.text,
            template=parts.template,
            template_version=parts.template_version,
            source=event.source,
            locale=event.locale,
            created_at=event.created_at,
            accepted_at=origin.timestamp_ms or now_ms(self.clock),
            rendered_at=now_ms(self.clock),
            replay=replay_number(origin) > 0,
        )


def _parse_data_json(text: str) -> dict[str, object]:
    try:
        value = json.loads(text)
    except ValueError as exc:
        raise SchemaError(f"'data_json' is not valid JSON: {exc}") from exc
    if not isinstance(value, dict):
        raise SchemaError("'data_json' must hold a JSON object")
    return value
