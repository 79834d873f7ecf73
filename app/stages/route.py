"""Route logic: a RenderedEmail -> a DispatchRequest on its priority's lane."""

from __future__ import annotations

import time
from dataclasses import dataclass

from app.models import DispatchRequest, RenderedEmail
from app.serde import Serde
from app.stages.common import Clock, Emission, Origin, dead_letter, now_ms

DEAD = "dead"


def lane_topic(priority: str) -> str:
    """Logical topic name of a priority's dispatch lane."""
    return f"dispatch.{priority}"


def to_dispatch_request(email: RenderedEmail) -> DispatchRequest:
    return DispatchRequest(**email.asdict())


@dataclass
class RouteStage:
    serde: Serde
    clock: Clock = time.time

    async def handle(self, payload: bytes, origin: Origin) -> Emission:
        """Never raises: an undecodable message becomes a dead letter."""
        try:
            email: RenderedEmail = await self.serde.decode(payload, "rendered_email")
        except Exception as exc:
            return Emission(
                DEAD,
                origin.key,
                dead_letter(
                    exc,
                    stage="route",
                    origin=origin,
                    payload=payload,
                    payload_format="avro",
                    at_ms=now_ms(self.clock),
                ),
            )
        return Emission(
            lane_topic(email.priority), email.event_id.encode(), to_dispatch_request(email)
        )
