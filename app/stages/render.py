"""Render stage logic: raw event bytes -> a rendered email, or a dead letter.

The output goes to ``email.rendered.<priority>`` as a DispatchRequest (attempt 0)
with the routing headers route reads instead of the value (``app.stages.route``),
whichever raw topic the event came from: its own ``priority`` field decides.

Plain functions with their collaborators passed in; the Faust agent in
``app/agents/render.py`` only feeds messages through and produces the result.

``handle`` never raises for anything one record can cause: decoding (empty values
included), validation, rendering, header encoding, output encoding and output size
all end as a dead letter with a reason and the original bytes. Only an
infrastructure fault (the schema registry unreachable for too long) propagates.
"""

from __future__ import annotations

import json
import logging
import time
from dataclasses import dataclass, field

from app.errors import SchemaError, UnknownTemplateError
from app.models import PRIORITIES, DispatchRequest, RawEvent, RenderedEmail
from app.serde import PayloadFormat, Serde, check_json_value, sniff_format
from app.stages.common import (
    DEAD_TOPIC,
    INFRASTRUCTURE_ERRORS,
    REPLAY_HEADER,
    Clock,
    Emission,
    Origin,
    Sealer,
    dead_letter,
    decode_or_dead,
    now_ms,
    replay_number,
)
from app.stages.route import routing_headers
from app.templating import TemplateStore, header_values, validate_address, validate_sender
from app.topology import TOPICS

log = logging.getLogger(__name__)

RENDERED = "rendered"
DEAD = DEAD_TOPIC


def rendered_topic(priority: str) -> str:
    """Logical name of a priority's rendered topic (``app.topology.RENDERED_LANES``)."""
    return f"{RENDERED}.{priority}"


def is_rendered(topic: str) -> bool:
    return topic.startswith(f"{RENDERED}.")


def default_sealer(serde: Serde, max_bytes: int = 990_000) -> Sealer:
    """Encodes for the un-namespaced topic names (tests, tools)."""
    return Sealer(lambda logical, record: serde.encode(TOPICS[logical][0], record), max_bytes)


@dataclass
class RenderStage:
    serde: Serde
    templates: TemplateStore
    default_sender: str
    clock: Clock = time.time
    #: Encodes outputs (``Runtime.encode_record`` in a worker); default: ``serde``.
    sealer: Sealer | None = None
    # Seconds spent rendering, for the render-time metric (latest value).
    last_render_s: float = field(default=0.0, init=False)

    def __post_init__(self) -> None:
        if self.sealer is None and self.serde is not None:
            self.sealer = default_sealer(self.serde)

    async def handle(self, payload: bytes | None, origin: Origin) -> Emission:
        """The sealed (encoded) output or dead letter; never raises for a record."""
        assert self.sealer is not None, "RenderStage needs a serde or a sealer"
        fmt: PayloadFormat = sniff_format(payload)
        decoded = await decode_or_dead(
            payload,
            self.serde.decode_raw,
            stage="render",
            origin=origin,
            at_ms=now_ms(self.clock),
            payload_format=fmt,
        )
        if decoded.dead is not None:
            return self.sealer.seal_dead(decoded.dead)
        assert decoded.value is not None
        event, fmt = decoded.value
        raw = payload or b""
        try:
            rendered = self.render(event, origin)
            if rendered.priority not in PRIORITIES:  # Avro's enum and JSON's check hold it
                raise SchemaError(f"priority {rendered.priority!r} has no lane")
            emission = Emission(
                rendered_topic(rendered.priority),
                rendered.event_id.encode(),
                DispatchRequest(**rendered.asdict()),
                headers=_headers_of(rendered, origin),
            )
        except INFRASTRUCTURE_ERRORS:
            raise
        except Exception as exc:
            return self.sealer.seal_dead(self._dead(exc, event, raw, fmt, origin))
        return self.sealer.seal_or_dead(
            emission, lambda exc: self._dead(exc, event, raw, fmt, origin)
        )

    def _dead(
        self,
        exc: BaseException,
        event: RawEvent,
        payload: bytes,
        fmt: PayloadFormat,
        origin: Origin,
    ) -> Emission:
        from app.errors import SpillwayError

        if not isinstance(exc, SpillwayError):
            log.warning(
                "render: unexpected error at %s/%s:%s",
                origin.topic,
                origin.partition,
                origin.offset,
                exc_info=exc,
            )
        event_id = event.event_id if isinstance(event.event_id, str) else None
        key = event_id.encode("utf-8", "backslashreplace") if event_id else origin.key
        return Emission(
            DEAD,
            key,
            dead_letter(
                exc,
                stage="render",
                origin=origin,
                payload=payload,
                payload_format=fmt,
                at_ms=now_ms(self.clock),
                event_id=event_id,
                template=event.template,
                template_version=self._version_of(event),
                source=event.source,
                priority=event.priority,
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
        headers = header_values(
            event_id=event.event_id, to=to, sender=sender, subject=parts.subject
        )
        return RenderedEmail(
            event_id=event.event_id,
            priority=event.priority,
            to=headers.to,
            from_address=headers.sender,
            subject=headers.subject,
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


def _headers_of(email: RenderedEmail, origin: Origin) -> tuple[tuple[str, bytes], ...]:
    """Routing headers for route (priority, event id, template), and the replay count
    so that dispatch still knows it (``replay_number``)."""
    headers = routing_headers(email.priority, email.event_id, email.template)
    replay = origin.header(REPLAY_HEADER)
    return headers if replay is None else (*headers, (REPLAY_HEADER, replay))


def _parse_data_json(text: str) -> dict[str, object]:
    try:
        value = json.loads(text)
    except RecursionError as exc:
        raise SchemaError("'data_json' nests too deeply to parse") from exc
    except ValueError as exc:
        raise SchemaError(f"'data_json' is not valid JSON: {str(exc)[:200]}") from exc
    if not isinstance(value, dict):
        raise SchemaError("'data_json' must hold a JSON object")
    check_json_value(value, max_depth=64)
    return value
