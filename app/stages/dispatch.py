"""Dispatch logic: a DispatchRequest -> a provider call -> SendResult or dead letter.

Effectively-once: the sent-ledger is checked and marked ``in_flight`` before the
provider call and ``sent`` after it; an id already sent is skipped (a duplicate
suppressed). An id found ``in_flight`` from an earlier run is sent again with the
same idempotency key, which the HTTP provider dedupes.
"""

from __future__ import annotations

import asyncio
import logging
import time
from dataclasses import dataclass, field

from app.errors import SpillwayError
from app.models import DispatchRequest, SendResult
from app.providers.base import OutboundEmail, Provider
from app.serde import Serde
from app.stages.common import Clock, Emission, Origin, attempt_of, dead_letter, now_ms
from app.stages.lanes import LaneGate
from app.tables.ledger import Ledger

log = logging.getLogger(__name__)

SENT = "sent"
DEAD = "dead"


def outbound(req: DispatchRequest) -> OutboundEmail:
    return OutboundEmail(
        event_id=req.event_id,
        to=req.to,
        from_address=req.from_address,
        subject=req.subject,
        html=req.html,
        text=req.text,
        priority=req.priority,
        source=req.source,
        template=req.template,
        template_version=req.template_version,
    )


@dataclass
class DispatchStats:
    sent: int = 0
    dead: int = 0
    duplicates_suppressed: int = 0


@dataclass
class DispatchStage:
    serde: Serde
    provider: Provider
    ledger: Ledger
    gate: LaneGate
    max_in_flight: int = 64
    clock: Clock = time.time
    stats: DispatchStats = field(default_factory=DispatchStats)

    def __post_init__(self) -> None:
        self._slots = asyncio.Semaphore(self.max_in_flight)
        self._in_flight: set[str] = set()  # ids this process is sending right now

    async def handle(self, payload: bytes, origin: Origin, lane: str) -> Emission | None:
        """Never raises. ``None`` means nothing to produce (a suppressed duplicate)."""
        try:
            req: DispatchRequest = await self.serde.decode(payload, "dispatch_request")
        except Exception as exc:
            self.stats.dead += 1
            return Emission(
                DEAD,
                origin.key,
                dead_letter(
                    exc,
                    stage="dispatch",
                    origin=origin,
                    payload=payload,
                    payload_format="avro",
                    at_ms=now_ms(self.clock),
                    priority=lane,
                ),
            )
        event_id = req.event_id
        entry = self.ledger.get(event_id)
        if (entry is not None and entry.state == "sent") or event_id in self._in_flight:
            self.stats.duplicates_suppressed += 1
            return None
        self._in_flight.add(event_id)
        try:
            return await self._send(req, payload, origin, lane)
        finally:
            self._in_flight.discard(event_id)

    async def _send(
        self, req: DispatchRequest, payload: bytes, origin: Origin, lane: str
    ) -> Emission:
        provider = self.provider.name
        await self.gate.wait_turn(lane)
        async with self._slots:
            self.ledger.mark_in_flight(req.event_id, provider)
            try:
                receipt = await self.provider.send(outbound(req))
            except Exception as exc:
                if not isinstance(exc, SpillwayError):
                    log.warning("dispatch: unexpected error for %s", req.event_id, exc_info=exc)
                self.ledger.mark_failed(req.event_id, provider)
                self.stats.dead += 1
                at = now_ms(self.clock)
                history = [
                    *req.history,
                    attempt_of(exc, stage="dispatch", at_ms=at, provider=provider),
                ]
                return Emission(
                    DEAD,
                    req.event_id.encode(),
                    dead_letter(
                        exc,
                        stage="dispatch",
                        origin=origin,
                        payload=payload,
                        payload_format="avro",
                        at_ms=at,
                        event_id=req.event_id,
                        template=req.template,
                        template_version=req.template_version,
                        source=req.source,
                        provider=provider,
                        priority=req.priority,
                        history=history,
                    ),
                )
        self.ledger.mark_sent(req.event_id, provider, receipt.message_id)
        self.stats.sent += 1
        sent_at = now_ms(self.clock)
        return Emission(
            SENT,
            req.event_id.encode(),
            SendResult(
                event_id=req.event_id,
                priority=req.priority,
                provider=receipt.provider,
                provider_message_id=receipt.message_id,
                attempts=req.attempts + 1,
                provider_latency_ms=receipt.latency_s * 1000.0,
                time_to_send_ms=float(sent_at - req.accepted_at),
                template=req.template,
                template_version=req.template_version,
                source=req.source,
                created_at=req.created_at,
                accepted_at=req.accepted_at,
                sent_at=sent_at,
                replay=req.replay,
            ),
        )
