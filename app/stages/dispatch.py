"""Dispatch logic: a DispatchRequest -> provider call -> SendResult, retry or dead letter.

Per message:
1. The sent-ledger is checked: an id already sent is skipped, counted as a duplicate
   suppressed (a copy of an id this worker is sending right now first waits for that
   attempt to end, then is checked); an id ``accepted`` (by the provider,
   before a crash) gets its SendResult again from the ledger, with no request. An id
   left ``in_flight`` by a crash may have been accepted: it is sent again with the
   same idempotency key only to a provider that honours keys and while the key lives
   (``idempotency_ttl``); else it is parked as a dead letter with reason
   ``ambiguous`` (or resent, when the provider's policy says ``ambiguous_resend``: at
   least once). An id parked ``ambiguous`` is parked again, never sent, unless the
   request is an operator replay newer than the mark (``Ledger``). Marks that a send
   relies on are acked by Kafka first: ``in_flight`` before a request to a provider
   without keys, ``accepted`` before its SendResult and ``ambiguous`` before its dead
   letter are returned.
2. A provider is chosen: the primary, or its fallback while the primary's breaker is
   open; a retry after an ambiguous failure is pinned to the provider that may hold
   it (never failed over). With none available the message waits (not an attempt).
3. The lane waits for its turn (critical > normal > bulk) and for a slot at the
   provider's pace (``PressureBoard``).
4. The result:
   - sent (any 2xx; a missing message id is recorded as "" and counted);
   - throttled (429): the provider is paused for its Retry-After, clamped to the
     policy's range, and the message tries again: not an attempt, not a breaker
     failure, except that a throttled half-open probe reopens the breaker;
   - an unambiguous transient failure (nothing sent, 5xx answer): an attempt (unless
     the breaker is open by then: the outage is the provider's), re-queued on a
     delayed retry topic with exponential backoff and jitter; dead only once it has
     failed for ``retry_min_failing_s`` and ``max_attempts`` times;
   - an ambiguous failure (request sent, answer lost; 409): retried with the same key
     on the same provider if it honours keys, else parked as ``ambiguous``;
   - a permanent rejection, or an email the adapter cannot encode (the message's
     fault: the breaker never hears of it): dead at once.
"""

from __future__ import annotations

import asyncio
import functools
import logging
import random
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field

from app.errors import (
    AmbiguousDelivery,
    ConflictError,
    EventError,
    PermanentProviderError,
    ProviderError,
    ThrottledError,
    TransientProviderError,
)
from app.models import Attempt, DispatchRequest, SendResult
from app.observability import NullMetrics, StageMetrics
from app.providers.base import OutboundEmail, Provider, SendReceipt
from app.serde import Serde
from app.settings import ProviderPolicy
from app.stages.common import (
    Clock,
    Emission,
    Origin,
    attempt_of,
    dead_letter,
    decode_or_dead,
    now_ms,
    replay_number,
)
from app.stages.lanes import LaneGate
from app.stages.pressure import PressureBoard, backoff_s
from app.tables.ledger import Ledger, LedgerWriteError
from app.topology import DEAD, LANES, SENT, retry_topic

log = logging.getLogger(__name__)


async def retry_route(
    serde: Serde, payload: bytes | None, origin: Origin, clock: Clock = time.time
) -> tuple[Emission, float]:
    """Where a record of a retry topic goes, and how long it waits first: its lane once
    its ``not_before`` has passed, or ``email.dead`` at once when it cannot be read (a
    tombstone, garbage): one record never stops the retry agent. A registry outage is
    an infrastructure fault and is raised."""
    decoded = await decode_or_dead(
        payload,
        functools.partial(serde.decode, name="dispatch_request"),
        stage="dispatch",
        origin=origin,
        at_ms=now_ms(clock),
    )
    if decoded.dead is not None:
        return decoded.dead, 0.0
    req = decoded.value
    assert req is not None
    delay = max(0.0, (req.not_before or 0) / 1000.0 - clock())
    return Emission(LANES[req.priority], origin.key, req), delay


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
    ambiguous: int = 0
    missing_message_id: int = 0  # 2xx answers without a message id (recorded as sent)


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
    metrics: StageMetrics = field(default_factory=NullMetrics)
    stats: DispatchStats = field(default_factory=DispatchStats)
    rng: random.Random = field(default_factory=random.Random)

    def __post_init__(self) -> None:
        self._slots = {
            name: asyncio.Semaphore(policy.max_in_flight) for name, policy in self.policies.items()
        }
        self._unrecorded = {
            name: asyncio.Semaphore(max(policy.max_unrecorded, policy.max_in_flight))
            for name, policy in self.policies.items()
        }
        # ids this process is sending right now; set once that attempt ended
        self._in_flight: dict[str, asyncio.Event] = {}

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
        while (running := self._in_flight.get(event_id)) is not None:
            # A copy of an email this process is sending right now (a redelivery): wait
            # for that attempt to end, then decide from the ledger. Acking the copy at
            # once lost the email when that attempt then never sent (fenced after a
            # stall, revoked): its offset was committed through the copy.
            await running.wait()
        entry = self.ledger.get(event_id)
        if entry is not None and entry.state == "sent":
            self.stats.duplicates_suppressed += 1
            self.metrics.duplicate_suppressed()
            return None
        if entry is not None and entry.state == "accepted":
            # Accepted before a crash; its SendResult may not be in Kafka: produce it
            # again from the ledger (the provider's id), with no request.
            self.stats.duplicates_suppressed += 1
            self.metrics.duplicate_suppressed()
            return self._result(
                req, entry.provider or "", entry.message_id or "", 0.0, int(entry.at * 1000)
            )
        if (
            entry is not None
            and entry.state in ("ambiguous", "in_flight")
            and replay_of(req, origin) > entry.replay
        ):
            entry = None  # an operator replay, on purpose (they checked the provider's log)
        if entry is not None and entry.state == "ambiguous":
            # Parked before: never resent. Parked again (the first dead letter may
            # not have reached Kafka before a crash); the mark stays.
            self.stats.duplicates_suppressed += 1
            self.metrics.duplicate_suppressed()
            return await self._ambiguous(
                req,
                payload,
                origin,
                AmbiguousDelivery(
                    f"{event_id} was parked as ambiguous before (to {entry.provider}): not "
                    "resent; check the provider's log, then replay or drop it"
                ),
                entry.provider,
                req.history,
            )
        pinned: str | None = None
        if entry is not None and entry.state == "in_flight":
            # A worker stopped between the in_flight mark and the answer: the provider
            # may have accepted it.
            provider = entry.provider or ""
            if self.key_valid(provider, self.clock() - entry.at):
                pinned = provider  # the same key, to the provider that knows it
            elif not self.resend_ambiguous(provider):
                return await self._ambiguous(
                    req,
                    payload,
                    origin,
                    AmbiguousDelivery(
                        f"{event_id} was in flight to {provider} when a worker stopped; "
                        f"{provider} honours no idempotency key (or it expired), so it is "
                        "not resent blindly: check the provider's log, then replay or drop it"
                    ),
                    provider or None,
                    req.history,
                )
        self._in_flight[event_id] = asyncio.Event()
        try:
            return await self._deliver(req, payload, origin, lane, pinned or req.provider)
        finally:
            self._in_flight.pop(event_id).set()

    # -- per-provider guarantees ------------------------------------------------------
    def key_ttl(self, name: str) -> float:
        """How long ``name`` honours our idempotency key: the policy's setting, else the
        adapter's declaration (0: no key)."""
        policy = self.policies.get(name)
        if policy is not None and policy.idempotency_ttl_s is not None:
            return policy.idempotency_ttl_s
        return float(getattr(self.providers.get(name), "idempotency_ttl_s", 0.0) or 0.0)

    def key_valid(self, name: str, age_s: float) -> bool:
        """A resend with the same key to ``name`` is deduplicated by the provider."""
        return name in self.providers and 0 <= age_s < self.key_ttl(name)

    def resend_ambiguous(self, name: str) -> bool:
        """The policy chooses at-least-once for ``name`` (may send twice)."""
        policy = self.policies.get(name)
        if policy is None:
            return False
        return policy.ambiguous_resend or (policy.kind == "smtp" and policy.smtp_resend_in_flight)

    # -- the delivery loop -----------------------------------------------------------
    def _choose(self, partition: int, pinned: str | None = None) -> tuple[str | None, float]:
        """The provider to use now, or None and how long to wait. A pinned message
        (it may already be at that provider) never fails over."""
        waits = []
        name: str | None = pinned if pinned in self.providers else self.primary
        seen: set[str] = set()
        while name is not None and name not in seen:
            seen.add(name)
            wait = self.board.state(name, partition).breaker.peek(self.clock())
            if wait <= 0:
                return name, 0.0
            waits.append(wait)
            name = None if pinned in self.providers else self.policies[name].fallback
        return None, min(waits)

    async def _deliver(
        self,
        req: DispatchRequest,
        payload: bytes,
        origin: Origin,
        lane: str,
        pinned: str | None = None,
    ) -> Emission:
        partition = origin.partition
        while True:
            name, wait = self._choose(partition, pinned)
            if name is None:
                await self.sleep(min(wait, 1.0))  # breaker open, no fallback: not an attempt
                continue
            await self.board.acquire(name, partition, lane, self.gate)
            breaker = self.board.state(name, partition).breaker
            before = breaker.state
            started = time.perf_counter()
            admitted = False
            try:
                # Two bounds: ``_slots`` (max_in_flight) holds the request itself;
                # ``_unrecorded`` (max_unrecorded) holds it until its acceptance is
                # acknowledged by Kafka, so at a kill at most ``max_unrecorded`` accepted
                # emails per worker are missing from the ledger (each resent with its
                # key, or parked, on restart), while the connection already serves the
                # next request during the ledger's ack.
                async with self._unrecorded[name]:
                    async with self._slots[name]:
                        if self.board.blocked(name, lane):
                            continue  # paused or shed while this waited: wait again
                        if breaker.admit(self.clock()) > 0:
                            continue  # tripped while this waited for its pace or a slot
                        admitted = True
                        before = breaker.state  # admit may have made it half-open
                        self.ledger.mark_in_flight(req.event_id, name, replay_of(req, origin))
                        if self.key_ttl(name) <= 0:
                            # No key to make a resend harmless: the mark must be in Kafka
                            # before the request, so a crash can never forget it was made.
                            try:
                                await self.ledger.settled(req.event_id)
                            except LedgerWriteError as exc:  # Kafka's fault, not the provider's
                                breaker.release_probe()  # nothing was sent; retry later
                                log.warning("dispatch: in_flight mark not durable: %s", exc)
                                return self._fail(req, payload, origin, exc, name, final=False)
                        receipt = await self.providers[name].send(outbound(req))
                        self._observe(receipt)  # before the slot serves the next request
                        self.ledger.mark_sent(req.event_id, receipt.provider, receipt.message_id)
                    recorded = asyncio.ensure_future(self.ledger.settled(req.event_id))
                    await asyncio.wait([recorded])
            except ThrottledError as exc:
                # The provider's own brake (proof it did not accept the email): pause for
                # Retry-After within the policy's range. Not a breaker failure: requests
                # bunched over one window boundary would otherwise stop all traffic for a
                # whole cooldown; but a throttled half-open probe reopens it.
                breaker.throttled(self.clock())
                self._record(name, partition, None, before, "429", started)
                self.board.pause(name, exc.retry_after)
                self.stats.throttled += 1
                continue  # the provider's pace, not the message's fault
            except EventError as exc:
                # The email cannot be put on the wire (adapter's encoding): the message's
                # fault. Nothing was sent; the breaker never hears of it.
                breaker.release_probe()
                return self._fail(req, payload, origin, exc, name, final=True)
            except PermanentProviderError as exc:
                self._record(name, partition, True, before, _status_class(exc), started)
                return self._fail(req, payload, origin, exc, name, final=True)
            except ConflictError as exc:
                # 409: a request with this key exists at the provider: an answer (healthy),
                # and maybe accepted, so never failed over.
                self._record(name, partition, True, before, "4xx", started)
                return await self._after_ambiguous(req, payload, origin, exc, name)
            except TransientProviderError as exc:
                self._record(name, partition, False, before, _status_class(exc), started)
                if exc.ambiguous:
                    return await self._after_ambiguous(req, payload, origin, exc, name)
                if breaker.state != "closed" and pinned is None:
                    continue  # the outage is the provider's: wait for it, or fail over
                # a pinned email (it may already be at ``name``) stays pinned: a later
                # clean failure does not prove the earlier, ambiguous request failed
                return self._fail(req, payload, origin, exc, name, final=False, pinned=pinned)
            except Exception as exc:
                # Not a provider answer we know (an adapter bug?): not the provider's
                # proven fault, and the request may have gone out.
                log.warning("dispatch: unexpected error for %s", req.event_id, exc_info=exc)
                breaker.release_probe()
                self._record(name, partition, None, before, "error", started)
                return await self._after_ambiguous(req, payload, origin, exc, name)
            except BaseException:
                if admitted:  # fenced or cancelled before an answer
                    breaker.release_probe()
                raise
            self._record(name, partition, True, before, "2xx", started)
            self.board.succeeded(name)
            return await self._sent(req, receipt, recorded)

    def _observe(self, receipt: SendReceipt) -> None:
        """The provider's rate-limit headers, at once: the next request (the slot is free
        before this acceptance's ack) must see the Remaining this answer reported."""
        if receipt.rate_limit is not None:
            rl = receipt.rate_limit
            self.board.observe(receipt.provider, rl.limit, rl.remaining, rl.reset_at)
            if rl.remaining is not None:
                self.metrics.rate_limit_remaining(receipt.provider, rl.remaining)

    def _record(
        self,
        name: str,
        partition: int,
        ok: bool | None,
        before: str,
        status: str,
        started: float,
    ) -> None:
        """Tell the breaker (``ok=None``: not a breaker matter) and the metrics."""
        breaker = self.board.state(name, partition).breaker
        if ok is not None:
            breaker.record(ok, self.clock())
        self.metrics.provider_response(name, status, time.perf_counter() - started)
        if breaker.state != before:
            log.warning(
                "provider %s partition %d: breaker %s -> %s", name, partition, before, breaker.state
            )
            self.board.persist_breaker(name, partition, self.flush_every_s)
            self.metrics.breaker_state(name, breaker.state)

    # -- outcomes ----------------------------------------------------------------------
    async def _sent(
        self, req: DispatchRequest, receipt: SendReceipt, recorded: Awaitable[None]
    ) -> Emission:
        """Accepted: the ledger's ``accepted`` mark (``recorded``: its ack) is
        acknowledged by Kafka before the SendResult is returned (``LedgerWriteError``
        otherwise: an infrastructure fault), so a crash after this can produce the
        result again, never resend."""
        if not receipt.message_id:
            # Accepted (a 2xx) without an id: sent, with the id missing, and counted.
            self.stats.missing_message_id += 1
            self.metrics.missing_message_id(receipt.provider)
            log.warning(
                "provider %s accepted %s without a message id", receipt.provider, req.event_id
            )
        await recorded
        self.stats.sent += 1
        return self._result(
            req, receipt.provider, receipt.message_id, receipt.latency_s, now_ms(self.clock)
        )

    def _result(
        self, req: DispatchRequest, provider: str, message_id: str, latency_s: float, sent_at: int
    ) -> Emission:
        return Emission(
            SENT,
            req.event_id.encode(),
            SendResult(
                event_id=req.event_id,
                priority=req.priority,
                provider=provider,
                provider_message_id=message_id,
                attempts=req.attempts + 1,
                provider_latency_ms=latency_s * 1000.0,
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
        pinned: str | None = None,
    ) -> Emission:
        """An attempt failed: dead if ``final``, or once the email has been failing for
        ``retry_min_failing_s`` and ``max_attempts`` times; else a delayed retry."""
        self.ledger.mark_failed(req.event_id, provider)
        at = now_ms(self.clock)
        history = [*req.history, attempt_of(exc, stage="dispatch", at_ms=at, provider=provider)]
        attempts = req.attempts + 1
        policy = self.policies[provider]
        failing_s = (at - first_failure_ms(req, at)) / 1000.0
        if final or (attempts >= self.max_attempts and failing_s >= policy.retry_min_failing_s):
            return self._dead(req, payload, origin, exc, provider, history)
        delay = backoff_s(
            attempts, policy.retry_backoff_base_s, policy.retry_backoff_cap_s, self.rng
        )
        self.stats.retried += 1
        self.metrics.retry(attempts)
        retry = DispatchRequest(
            **{
                **req.asdict(),
                "attempts": attempts,
                "history": history,
                "provider": pinned,
                "not_before": at + int(delay * 1000),
            }
        )
        return Emission(retry_topic(attempts), req.event_id.encode(), retry)

    async def _after_ambiguous(
        self, req: DispatchRequest, payload: bytes, origin: Origin, exc: Exception, name: str
    ) -> Emission:
        """The request went out and its answer was lost (or 409): the provider may have
        accepted the email. Same key to the same provider while it honours keys;
        else at least once if the policy chooses it; else parked as ``ambiguous``."""
        first = first_failure_ms(req, now_ms(self.clock))
        if self.key_valid(name, (now_ms(self.clock) - first) / 1000.0):
            return self._fail(req, payload, origin, exc, name, final=False, pinned=name)
        if self.resend_ambiguous(name):
            return self._fail(req, payload, origin, exc, name, final=False)
        history = [
            *req.history,
            attempt_of(exc, stage="dispatch", at_ms=now_ms(self.clock), provider=name),
        ]
        return await self._ambiguous(
            req,
            payload,
            origin,
            AmbiguousDelivery(
                f"{req.event_id}: {name} may have accepted it ({exc}); it honours no "
                "idempotency key, so it is not resent: check the provider's log, then "
                "replay or drop it"
            ),
            name,
            history,
        )

    async def _ambiguous(
        self,
        req: DispatchRequest,
        payload: bytes,
        origin: Origin,
        exc: AmbiguousDelivery,
        provider: str | None,
        history: list[Attempt],
    ) -> Emission:
        """Parked: a dead letter with reason ``ambiguous``. The ledger says
        ``ambiguous`` (a redelivered copy is parked again, never sent; an operator's
        replay sends it), and Kafka has acknowledged that mark before the dead letter
        is returned, so its input offset can never be committed without it.
        ``LedgerWriteError`` (not acked) is raised: an infrastructure fault."""
        entry = self.ledger.get(req.event_id)
        if entry is None or entry.state != "ambiguous":
            self.ledger.mark_ambiguous(req.event_id, provider, replay_of(req, origin))
        await self.ledger.settled(req.event_id)
        self.stats.ambiguous += 1
        return self._dead(req, payload, origin, exc, provider, history)

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
        # The replay count the next operator replay starts from: at least the ledger's
        # (a retry copy of a replay carries no replay header), so that replay is newer.
        entry = self.ledger.get(req.event_id)
        replayed = max(replay_number(origin), entry.replay if entry is not None else 0)
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
                replayed=replayed,
            ),
        )


def _status_class(exc: BaseException) -> str:
    status = exc.status if isinstance(exc, ProviderError) else None
    if status is None:
        reason = getattr(exc, "reason", "")
        return "timeout" if reason == "provider_timeout" else "error"
    return "429" if status == 429 else f"{status // 100}xx"


def first_failure_ms(req: DispatchRequest, default: int) -> int:
    """When this run of failures began (unix ms): each failed attempt appended one
    history entry, so this run's are the last ``attempts`` of them (a replay starts a
    new run with ``attempts=0`` and keeps the older history)."""
    if req.attempts <= 0:
        return default
    run = req.history[-req.attempts :]
    return min((a.at for a in run if a.stage == "dispatch"), default=default)


def replay_of(req: DispatchRequest, origin: Origin) -> int:
    """The operator replay this request is (its ``spillway-replay`` number), or 0: not
    a replay, or a copy the dispatch stage made (a retry keeps ``replay`` but not the
    header, and is no new decision of the operator's)."""
    return replay_number(origin) if req.replay else 0


def lane_of(req: DispatchRequest) -> str:
    return LANES[req.priority]
