"""Dispatch logic: a DispatchRequest -> provider call -> SendResult, retry or dead letter.

Per message:
1. The sent-ledger is checked: an id already sent (or being sent by this worker) is
   skipped, counted as a duplicate suppressed. An id left ``in_flight`` by a crash is
   sent again with the same idempotency key (HTTP, which the provider dedupes), or
   dead-lettered for reconciliation (SMTP, unless configured to resend).
2. A provider is chosen: the primary, or its fallback while the primary's breaker is
   open; with neither available the message waits (not an attempt).
3. The lane waits for its turn (critical > normal > bulk) and for a slot at the
   provider's pace (``PressureBoard``).
4. The result: sent; throttled (429: the provider is paused for Retry-After and the
   message tries again, not an attempt); a server error or timeout (an attempt,
   unless the breaker is open by then, when the outage is the provider's, not the
   message's) re-queued on a delayed retry topic with exponential backoff, or dead
   after ``max_attempts``; a permanent rejection, dead at once.
"""

from __future__ import annotations

import asyncio
import logging
import random
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field

from app.errors import (
    PermanentProviderError,
    ProviderError,
    SpillwayError,
    ThrottledError,
    TransientProviderError,
)
from app.models import Attempt, DispatchRequest, SendResult
from app.providers.base import OutboundEmail, Provider, SendReceipt
from app.serde import Serde
from app.settings import ProviderPolicy
from app.stages.common import Clock, Emission, Origin, attempt_of, dead_letter, now_ms
from app.stages.lanes import LaneGate
from app.stages.pressure import PressureBoard, backoff_s
from app.tables.ledger import Ledger
from app.topology import DEAD, LANES, SENT, retry_topic

log = logging.getLogger(__name__)


class NeedsReconciliation(SpillwayError):
    """Found in flight after a crash on a provider without idempotency (SMTP)."""

    retriable = True
    reason = "needs_reconciliation"


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
    retried: int = 0
    duplicates_suppressed: int = 0
    throttled: int = 0


@dataclass
class Hooks:
    """Optional observers (metrics); every one may be left as a no-op."""

    response: Callable[[str, str, float], None] = lambda provider, status, latency: None
    breaker: Callable[[str, str], None] = lambda provider, state: None
    remaining: Callable[[str, int], None] = lambda provider, remaining: None
    retry: Callable[[int], None] = lambda attempt: None
    duplicate: Callable[[], None] = lambda: None


@dataclass
class DispatchStage:
    serde: Serde
    providers: dict[str, Provider]
    policies: dict[str, ProviderPolicy]
    primary: str
    ledger: Ledger
    gate: LaneGate
    board: PressureBoard
    max_attempts: int = 3
    flush_every_s: float = 0.5
    clock: Clock = time.time
    sleep: Callable[[float], Awaitable[None]] = asyncio.sleep
    hooks: Hooks = field(default_factory=Hooks)
    #: Makes ledger writes durable (the worker's producer flush); awaited after the
    #: in-flight mark for providers without idempotency keys (SMTP), so a crash can
    #: never lead to a blind resend.
    durable: Callable[[], Awaitable[None]] | None = None
    stats: DispatchStats = field(default_factory=DispatchStats)
    rng: random.Random = field(default_factory=random.Random)

    def __post_init__(self) -> None:
        self._slots = {
            name: asyncio.Semaphore(policy.max_in_flight) for name, policy in self.policies.items()
        }
        self._in_flight: set[str] = set()  # ids this process is sending right now

    # -- entry point ---------------------------------------------------------------
    async def handle(self, payload: bytes, origin: Origin, lane: str) -> Emission | None:
        """Never raises for a bad message. ``None``: nothing to produce (a duplicate)."""
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
            self.hooks.duplicate()
            return None
        if entry is not None and entry.state == "in_flight":
            policy = self.policies.get(entry.provider or "")
            if policy is not None and policy.kind == "smtp" and not policy.smtp_resend_in_flight:
                self.ledger.mark_failed(event_id, entry.provider)
                return self._dead(
                    req,
                    payload,
                    origin,
                    NeedsReconciliation(
                        f"{event_id} was in flight to {entry.provider} when a worker stopped; "
                        "SMTP has no idempotency key, so it is not resent blindly: check the "
                        "mail server's log, then replay or drop it"
                    ),
                    entry.provider,
                    req.history,
                )
        self._in_flight.add(event_id)
        try:
            return await self._deliver(req, payload, origin, lane)
        finally:
            self._in_flight.discard(event_id)

    # -- the delivery loop -----------------------------------------------------------
    def _choose(self, partition: int) -> tuple[str | None, float]:
        """The provider to use now, or None and how long to wait."""
        waits = []
        name: str | None = self.primary
        seen: set[str] = set()
        while name is not None and name not in seen:
            seen.add(name)
            wait = self.board.state(name, partition).breaker.peek(self.clock())
            if wait <= 0:
                return name, 0.0
            waits.append(wait)
            name = self.policies[name].fallback
        return None, min(waits)

    async def _deliver(
        self, req: DispatchRequest, payload: bytes, origin: Origin, lane: str
    ) -> Emission:
        partition = origin.partition
        while True:
            name, wait = self._choose(partition)
            if name is None:
                await self.sleep(min(wait, 1.0))  # breaker open, no fallback: not an attempt
                continue
            await self.board.acquire(name, partition, lane, self.gate)
            breaker = self.board.state(name, partition).breaker
            before = breaker.state
            started = time.perf_counter()
            try:
                async with self._slots[name]:
                    if self.board.blocked(name, lane):
                        continue  # paused or shed while this waited for a slot: wait again
                    if breaker.admit(self.clock()) > 0:
                        continue  # tripped while this waited for its pace or a slot
                    before = breaker.state  # admit may have made it half-open
                    self.ledger.mark_in_flight(req.event_id, name)
                    if self.durable is not None and self.policies[name].kind == "smtp":
                        await self.durable()
                    receipt = await self.providers[name].send(outbound(req))
            except ThrottledError as exc:
                # The provider's own brake: pause for Retry-After. Not counted toward the
                # breaker: requests bunched over one window boundary would otherwise stop
                # all traffic for a whole cooldown.
                self._record(name, partition, None, before, "429", started)
                self.board.pause(name, exc.retry_after)
                self.stats.throttled += 1
                continue  # the provider's pace, not the message's fault
            except PermanentProviderError as exc:
                self._record(name, partition, True, before, _status_class(exc), started)
                return self._fail(req, payload, origin, exc, name, final=True)
            except Exception as exc:
                if not isinstance(exc, TransientProviderError):
                    log.warning("dispatch: unexpected error for %s", req.event_id, exc_info=exc)
                self._record(name, partition, False, before, _status_class(exc), started)
                if breaker.state != "closed":
                    continue  # the outage is the provider's: wait for it, or fail over
                return self._fail(req, payload, origin, exc, name, final=False)
            self._record(name, partition, True, before, "2xx", started)
            return self._sent(req, receipt)

    def _record(
        self,
        name: str,
        partition: int,
        ok: bool | None,
        before: str,
        status: str,
        started: float,
    ) -> None:
        """Tell the breaker (``ok=None``: not a breaker matter) and the metrics hook."""
        breaker = self.board.state(name, partition).breaker
        if ok is not None:
            breaker.record(ok, self.clock())
        self.hooks.response(name, status, time.perf_counter() - started)
        if breaker.state != before:
            log.warning(
                "provider %s partition %d: breaker %s -> %s", name, partition, before, breaker.state
            )
            self.board.persist_breaker(name, partition, self.flush_every_s)
            self.hooks.breaker(name, breaker.state)

    # -- outcomes ----------------------------------------------------------------------
    def _sent(self, req: DispatchRequest, receipt: SendReceipt) -> Emission:
        if receipt.rate_limit is not None:
            rl = receipt.rate_limit
            self.board.observe(receipt.provider, rl.limit, rl.remaining, rl.reset_at)
            if rl.remaining is not None:
                self.hooks.remaining(receipt.provider, rl.remaining)
        self.ledger.mark_sent(req.event_id, receipt.provider, receipt.message_id)
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

    def _fail(
        self,
        req: DispatchRequest,
        payload: bytes,
        origin: Origin,
        exc: Exception,
        provider: str,
        *,
        final: bool,
    ) -> Emission:
        self.ledger.mark_failed(req.event_id, provider)
        at = now_ms(self.clock)
        history = [*req.history, attempt_of(exc, stage="dispatch", at_ms=at, provider=provider)]
        attempts = req.attempts + 1
        if final or attempts >= self.max_attempts:
            return self._dead(req, payload, origin, exc, provider, history)
        policy = self.policies[provider]
        delay = backoff_s(
            attempts, policy.retry_backoff_base_s, policy.retry_backoff_cap_s, self.rng
        )
        self.stats.retried += 1
        self.hooks.retry(attempts)
        retry = DispatchRequest(
            **{
                **req.asdict(),
                "attempts": attempts,
                "history": history,
                "provider": None,
                "not_before": at + int(delay * 1000),
            }
        )
        return Emission(retry_topic(attempts), req.event_id.encode(), retry)

    def _dead(
        self,
        req: DispatchRequest,
        payload: bytes,
        origin: Origin,
        exc: Exception,
        provider: str | None,
        history: list[Attempt],
    ) -> Emission:
        self.stats.dead += 1
        return Emission(
            DEAD,
            req.event_id.encode(),
            dead_letter(
                exc,
                stage="dispatch",
                origin=origin,
                payload=payload,
                payload_format="avro",
                at_ms=now_ms(self.clock),
                event_id=req.event_id,
                template=req.template,
                template_version=req.template_version,
                source=req.source,
                provider=provider,
                priority=req.priority,
                history=history,
            ),
        )


def _status_class(exc: BaseException) -> str:
    status = exc.status if isinstance(exc, ProviderError) else None
    if status is None:
        reason = getattr(exc, "reason", "")
        return "timeout" if reason == "provider_timeout" else "error"
    return "429" if status == 429 else f"{status // 100}xx"


def lane_of(req: DispatchRequest) -> str:
    return LANES[req.priority]
