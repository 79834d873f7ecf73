"""Route logic: a RenderedEmail -> a DispatchRequest on its priority's lane.

Like render, ``handle`` never raises for anything one record can cause: an empty,
undecodable or oversized value, or header values that a provider would refuse (a
record produced by another tool, a replay), ends as a dead letter.
"""

from __future__ import annotations

import time
from dataclasses import dataclass

from app.models import DispatchRequest, RenderedEmail
from app.serde import Serde
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
from app.stages.render import default_sealer
from app.templating import header_values

DEAD = DEAD_TOPIC


def lane_topic(priority: str) -> str:
    """Logical topic name of a priority's dispatch lane."""
    return f"dispatch.{priority}"


def to_dispatch_request(email: RenderedEmail) -> DispatchRequest:
    return DispatchRequest(**email.asdict())


@dataclass
class RouteStage:
    serde: Serde
    clock: Clock = time.time
    sealer: Sealer | None = None

    def __post_init__(self) -> None:
        if self.sealer is None:
            self.sealer = default_sealer(self.serde)

    async def _decode(self, payload: bytes) -> RenderedEmail:
        email: RenderedEmail = await self.serde.decode(payload, "rendered_email")
        # Cheap for the ASCII values render produces; catches hand-made records.
        header_values(
            event_id=email.event_id, to=email.to, sender=email.from_address, subject=email.subject
        )
        return email

    async def handle(self, payload: bytes | None, origin: Origin) -> Emission:
        """The sealed lane message, or a dead letter; never raises for a record."""
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
            emission = Emission(
                lane_topic(email.priority), email.event_id.encode(), to_dispatch_request(email)
            )
        except INFRASTRUCTURE_ERRORS:
            raise
        except Exception as exc:
            return self.sealer.seal_dead(dead(exc))
        return self.sealer.seal_or_dead(emission, dead)
