"""Route logic: a rendered email -> a DispatchRequest on its priority's lane.

Render writes DispatchRequest values with routing headers (``ROUTING_HEADERS``:
priority, event id, template) to ``email.rendered.<priority>``. Route reads only
the headers and moves the value's bytes to the lane unchanged (issue 14): no
decoding, no re-encoding, no registry.

A record without valid routing headers (written before them, by another tool, a
dead-letter replay to ``email.rendered``), or whose value is not framed Avro, takes
the slow path: decoded (RenderedEmail or DispatchRequest, by its writer schema),
checked and re-encoded. Like render, ``handle`` never raises for anything one record
can cause: an empty, undecodable or oversized value, or header values that a
provider would refuse, ends as a dead letter (``decode_or_dead``).
"""

from __future__ import annotations

import time
from dataclasses import dataclass

from app.errors import ValidationError
from app.models import PRIORITIES, DispatchRequest, RenderedEmail
from app.serde import MAGIC, Serde
from app.stages.common import (
    DEAD_TOPIC,
    INFRASTRUCTURE_ERRORS,
    Clock,
    Emission,
    Origin,
    Sealer,
    dead_letter,
    decode_or_dead,
    now_ms,
    replay_number,
)
from app.templating import check_event_id, header_values

DEAD = DEAD_TOPIC

#: Kafka record headers render writes on every rendered record, and route routes by.
PRIORITY_HEADER = "spillway-priority"
EVENT_ID_HEADER = "spillway-event-id"
TEMPLATE_HEADER = "spillway-template"
ROUTING_HEADERS = (PRIORITY_HEADER, EVENT_ID_HEADER, TEMPLATE_HEADER)
MAX_TEMPLATE_CHARS = 255
_PRIORITY_VALUES = {p.encode(): p for p in PRIORITIES}


@dataclass(frozen=True, slots=True)
class Routing:
    """What route needs from a record's headers."""

    priority: str
    event_id: str
    template: str

    def headers(self) -> tuple[tuple[str, bytes], ...]:
        return (
            (PRIORITY_HEADER, self.priority.encode()),
            (EVENT_ID_HEADER, self.event_id.encode()),
            # a hand-made record's template may be anything: never fail on it
            (TEMPLATE_HEADER, self.template.encode("utf-8", "backslashreplace")),
        )


def routing_headers(priority: str, event_id: str, template: str) -> tuple[tuple[str, bytes], ...]:
    """The routing headers of a rendered record (render's side of ``parse_routing``)."""
    return Routing(priority, event_id, template).headers()


def _one(headers: tuple[tuple[str, bytes], ...], name: str) -> bytes | None:
    """The value of header ``name``: None if missing or given twice with two values."""
    values = {value for key, value in headers if key == name}
    return values.pop() if len(values) == 1 else None


def parse_routing(headers: tuple[tuple[str, bytes], ...]) -> Routing | None:
    """The routing headers, or None if one is missing, repeated with another value,
    or invalid: a priority other than critical/normal/bulk (exact bytes), an event id
    outside what ``check_event_id`` takes (it goes into provider headers), a template
    name that is empty, longer than 255 characters or not printable ASCII. Never raises."""
    try:
        priority = _PRIORITY_VALUES.get(_one(headers, PRIORITY_HEADER) or b"")
        raw_id = _one(headers, EVENT_ID_HEADER)
        raw_template = _one(headers, TEMPLATE_HEADER)
        if priority is None or raw_id is None or raw_template is None:
            return None
        event_id = raw_id.decode("ascii")
        template = raw_template.decode("ascii")
        check_event_id(event_id)
    except (UnicodeDecodeError, ValidationError, TypeError):
        return None
    if not 0 < len(template) <= MAX_TEMPLATE_CHARS or not template.isprintable():
        return None
    return Routing(priority, event_id, template)


def _framed(payload: bytes | None) -> bool:
    """Looks like Confluent-framed Avro (what render writes); checked, not decoded."""
    return payload is not None and len(payload) > 5 and payload[0] == MAGIC


def lane_topic(priority: str) -> str:
    """Logical topic name of a priority's dispatch lane."""
    return f"dispatch.{priority}"


def to_dispatch_request(email: RenderedEmail | DispatchRequest) -> DispatchRequest:
    if isinstance(email, DispatchRequest):
        return email
    return DispatchRequest(**email.asdict())


@dataclass
class RouteStage:
    serde: Serde
    clock: Clock = time.time
    sealer: Sealer | None = None

    def __post_init__(self) -> None:
        if self.sealer is None:
            from app.stages.render import default_sealer  # render imports this module

            self.sealer = default_sealer(self.serde)

    async def _decode(self, payload: bytes) -> RenderedEmail | DispatchRequest:
        # email.rendered.<priority> holds DispatchRequests; email.rendered (written
        # before issue 14, replays) RenderedEmails: read each with its own schema.
        writer = await self.serde.writer_schema(self.serde._schema_id(payload))
        name = writer.get("name") if isinstance(writer, dict) else None
        reader = "dispatch_request" if name == "dev.spillway.DispatchRequest" else "rendered_email"
        email: RenderedEmail | DispatchRequest = await self.serde.decode(payload, reader)
        # Cheap for the ASCII values render produces; catches hand-made records.
        header_values(
            event_id=email.event_id, to=email.to, sender=email.from_address, subject=email.subject
        )
        return email

    async def handle(self, payload: bytes | None, origin: Origin) -> Emission:
        """The lane message (its bytes: moved, or sealed on the slow path), or a
        dead letter; never raises for a record."""
        assert self.sealer is not None
        routing = parse_routing(origin.headers)
        if routing is not None and _framed(payload):
            assert payload is not None
            key = routing.event_id.encode()
            if len(payload) + len(key) <= self.sealer.max_bytes:
                return Emission(
                    lane_topic(routing.priority), key, routing, payload, origin.headers
                )
        return await self._slow(payload, origin)

    async def _slow(self, payload: bytes | None, origin: Origin) -> Emission:
        """Decode, check and re-encode: a record without (valid) routing headers."""
        assert self.sealer is not None
        decoded = await decode_or_dead(
            payload, self._decode, stage="route", origin=origin, at_ms=now_ms(self.clock)
        )
        if decoded.dead is not None:
            return self.sealer.seal_dead(decoded.dead)
        email = decoded.value
        assert email is not None

        def dead(exc: BaseException) -> Emission:
            return Emission(
                DEAD,
                email.event_id.encode(),
                dead_letter(
                    exc,
                    stage="route",
                    origin=origin,
                    payload=payload or b"",
                    payload_format="avro",
                    at_ms=now_ms(self.clock),
                    event_id=email.event_id,
                    template=email.template,
                    template_version=email.template_version,
                    source=email.source,
                    priority=email.priority,
                    replayed=replay_number(origin),
                ),
            )

        try:
            if email.priority not in PRIORITIES:
                raise ValidationError(f"priority {email.priority!r} has no lane")
            request = to_dispatch_request(email)
            emission = Emission(
                lane_topic(email.priority),
                email.event_id.encode(),
                request,
                headers=routing_headers(email.priority, email.event_id, email.template)
                + tuple((k, v) for k, v in origin.headers if k not in ROUTING_HEADERS),
            )
        except INFRASTRUCTURE_ERRORS:
            raise
        except Exception as exc:
            return self.sealer.seal_dead(dead(exc))
        return self.sealer.seal_or_dead(emission, dead)
