"""The Dispatcher: lane admission, claim -> send -> confirm, revocation and fencing.

The dispatch agents only hand it messages (``admit``); everything that decides
whether, when and how a message is sent lives here and in its collaborators, all
passed in: ``handle`` (``DispatchStage.handle``: ledger check, provider choice,
lane gate, rate meter, breaker, provider call, outcome), ``deliver`` (produce and
wait for Kafka's ack), the ledger, and ``membership`` (does this member still own a
partition in the generation a message was fetched in).

Sends per message, outputs per batch: each admitted message is its own task and
takes one of its lane's in-flight slots (``lane_in_flight``), so a slow request costs
one slot while the lane's other messages keep flowing; their outputs are produced in
batches (``Outbox``: one produce batch, one ``sent``-mark confirm per batch). A
message is acked (Faust may then commit its offset; ``app.consumer`` commits only a
contiguous prefix) only once its output was acknowledged by Kafka; a ``sent`` ledger
mark is written only after its ``email.sent`` record was acknowledged (the stage acked
``accepted`` before producing it), and the message is acked only once that mark was
acknowledged too.

Revocation (``revoke``): at once, nothing more of those partitions is admitted,
and every task of theirs that has no request on the wire is cancelled, wherever it
waits (lane slot, lane gate, rate meter, breaker); requests on the wire get up to
``revoke_bound_s`` to finish, then are abandoned. Abandoned messages are never
acked, so their offsets are not committed and the new owner handles them again
(with the ledger's ``in_flight`` mark: the same idempotency key). Faust's own
unbounded ``wait_empty`` is switched off (``stream_wait_empty=False``).

Fencing (``fence``, run by the ledger right before the ``in_flight`` mark, that is
right before the provider request): the partition must still be owned, in the
generation the message was fetched in, and the event loop must not have stalled
for long (a SIGSTOP or GC pause past the session timeout means another member may
own the partition now): after a stall the member sends nothing until a rebalance
confirms its assignment or a session timeout passes with none (an evicted member
learns it from its next heartbeat, within one heartbeat interval, and is revoked).
Work fenced for a stall is parked and resumed if the assignment survived; work of a
partition lost is dropped. What remains: a request already on the wire when the
partition moves. The ledger's ``in_flight`` mark, written before that request, makes
the new owner resend with the same idempotency key (HTTP providers dedupe it) or
dead-letter it for reconciliation (SMTP). See docs/dispatch.md.
"""

from __future__ import annotations

import asyncio
import contextlib
import contextvars
import inspect
import logging
import time
from collections.abc import Awaitable, Callable, Iterable
from dataclasses import dataclass, field
from typing import Any, Protocol

from app.stages.common import Emission, Origin

log = logging.getLogger(__name__)


class Fenced(asyncio.CancelledError):
    """Raised at the fence: this member may not send for this message. A
    CancelledError, so no per-message handler turns it into a retry or a dead letter."""


class _FencedProvider:
    def __init__(self, provider: Any, fence: Callable[[], None]) -> None:
        self._provider = provider
        self._fence = fence

    def __getattr__(self, name: str) -> Any:
        return getattr(self._provider, name)

    async def send(self, email: Any) -> Any:
        self._fence()
        return await self._provider.send(email)


class Membership(Protocol):
    def owns(self, tp: Any, generation: int | None) -> bool: ...


@dataclass(eq=False)
class Work:
    """One message taken from a lane stream."""

    tp: Any
    offset: int
    generation: int | None
    value: bytes
    origin: Origin
    release: Callable[[], Any]  # ack it (its offset may be committed)
    lane: str = ""
    event_id: str | None = None


class Outbox:
    """The outputs of many messages produced as one batch, and the ``sent`` marks of the
    batch's SendResults written and awaited in one ledger call (``confirm``): one produce
    batch and one confirm per batch instead of per message.

    ``put`` returns once its emission was acknowledged by Kafka and, for a SendResult,
    once its ``sent`` mark was too; when the batch's delivery or confirm failed it raises
    that error in every message of the batch (none of them may be acked). A batch is cut
    once ``size`` outputs wait, or ``within_s`` after the first of them; up to
    ``in_flight`` batches await their acks at once, and outputs that arrive meanwhile
    form the next batch. An output whose message was cancelled before its batch was cut
    is left out (that message is not acked; it is handled again)."""

    def __init__(
        self,
        deliver: Callable[[list[Emission]], Awaitable[None]],
        confirm: Callable[[Iterable[str]], Awaitable[None] | None],
        *,
        sent_topic: str = "sent",
        size: int = 256,
        within_s: float = 0.02,
        in_flight: int = 16,
    ) -> None:
        self.deliver = deliver
        self.confirm = confirm
        self.sent_topic = sent_topic
        self.size = max(1, size)
        self.within_s = max(0.0, within_s)
        self.in_flight = max(1, in_flight)
        self.batches = 0  # cut so far
        self.outputs = 0  # outputs in them
        self._waiting: list[tuple[Emission, asyncio.Future[None]]] = []
        self._full = asyncio.Event()
        self._collector: asyncio.Task[None] | None = None
        self._flushing: set[asyncio.Task[None]] = set()
        self._slot_free = asyncio.Event()

    async def put(self, emission: Emission) -> None:
        loop = asyncio.get_running_loop()
        future: asyncio.Future[None] = loop.create_future()
        self._waiting.append((emission, future))
        if len(self._waiting) >= self.size:
            self._full.set()
        if self._collector is None or self._collector.done():
            # its own context: not the message's (``_CURRENT``, the fence's work)
            self._collector = loop.create_task(self._collect(), context=contextvars.Context())
        await future

    async def _collect(self) -> None:
        while self._waiting:
            if len(self._waiting) < self.size and self.within_s > 0:
                self._full.clear()
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self._full.wait(), self.within_s)
            while len(self._flushing) >= self.in_flight:
                self._slot_free.clear()
                await self._slot_free.wait()
            cut, self._waiting = self._waiting[: self.size], self._waiting[self.size :]
            batch = [(e, f) for e, f in cut if not f.done()]
            if not batch:
                continue
            self.batches += 1
            self.outputs += len(batch)
            task = asyncio.get_running_loop().create_task(
                self._flush(batch), context=contextvars.Context()
            )
            self._flushing.add(task)
            task.add_done_callback(self._flushed)

    def _flushed(self, task: asyncio.Task[None]) -> None:
        self._flushing.discard(task)
        self._slot_free.set()

    async def _flush(self, batch: list[tuple[Emission, asyncio.Future[None]]]) -> None:
        try:
            await self.deliver([emission for emission, _ in batch])
            ids = [e.value.event_id for e, _ in batch if e.topic == self.sent_topic]
            if ids:
                # the sent marks after their email.sent records were acked (docstring above)
                confirmed = self.confirm(ids)
                if inspect.isawaitable(confirmed):
                    await confirmed
        except BaseException as exc:
            stopping = isinstance(exc, asyncio.CancelledError) and _cancelling()
            if isinstance(exc, asyncio.CancelledError) and not stopping:
                # a produce or mark future cancelled under us (Faust dropped the record),
                # not a stop: a failure of the batch, never taken for a revocation
                exc = OutputLostError(f"an output or mark of the batch was dropped: {exc!r}")
            for _, future in batch:
                if future.done():
                    continue
                if stopping:
                    future.cancel()
                else:
                    future.set_exception(exc)
            if not isinstance(exc, Exception):
                raise
            return
        for _, future in batch:
            if not future.done():
                future.set_result(None)

    async def close(self, bound_s: float) -> None:
        """At a stop, after the messages were drained: batches already cut get up to
        ``bound_s`` to be acknowledged, then are cancelled (their messages are not acked;
        see ``app.agents.delivery``); nothing new is cut."""
        if self._collector is not None and not self._collector.done():
            self._collector.cancel()
        tasks = list(self._flushing)
        if tasks:
            _done, late = await asyncio.wait(tasks, timeout=max(0.0, bound_s))
            for task in late:
                task.cancel()
            if late:
                await asyncio.wait(late, timeout=1.0)


class OutputLostError(Exception):
    """A dispatch output (or its ``sent`` mark) was dropped before Kafka acknowledged
    it: an infrastructure fault; its messages are never acked."""


def _cancelling() -> bool:
    task = asyncio.current_task()
    return task is not None and task.cancelling() > 0


@dataclass
class DispatcherStats:
    admitted: int = 0
    done: int = 0
    abandoned: int = 0
    dropped: int = 0
    fenced: int = 0


_CURRENT: contextvars.ContextVar[Work | None] = contextvars.ContextVar(
    "dispatch_work", default=None
)


@dataclass
class Dispatcher:
    handle: Callable[[bytes, Origin, str], Awaitable[Emission | None]]
    deliver: Callable[[Emission], Awaitable[None]]
    membership: Membership
    lanes: tuple[str, ...]
    lane_in_flight: int = 256
    revoke_bound_s: float = 5.0
    stall_s: float = 3.0  # a loop stall longer than this fences sending
    session_timeout_s: float = 10.0
    #: ledger.confirm: turns ``accepted`` marks into ``sent``; awaited (when it returns
    #: an awaitable) until Kafka acknowledged them, before the message is acked
    confirm: Callable[[Iterable[str]], Awaitable[None] | None] = lambda ids: None
    sent_topic: str = "sent"
    enter: Callable[[str], None] = lambda lane: None  # LaneGate.enter/leave
    leave: Callable[[str], None] = lambda lane: None
    on_fatal: Callable[[BaseException], None] | None = None
    clock: Callable[[], float] = time.monotonic
    # Lane admission (H1b): a lane takes its next message off its stream only while
    # ``may_take`` (LaneGate: its priority turn) says so and fewer than ``lookahead``
    # of its messages wait before the wire; ``take`` tells the gate one was taken.
    # So nothing taken waits on priority: commits of a held-back lane keep advancing.
    may_take: Callable[[str], bool] = lambda lane: True
    take: Callable[[str], None] = lambda lane: None
    lookahead: int = 32
    #: when set, every output goes through it (one produce batch and one ``sent``-mark
    #: confirm per batch) in place of ``deliver`` and ``confirm`` per message
    outbox: Outbox | None = None
    stats: DispatcherStats = field(default_factory=DispatcherStats)

    def __post_init__(self) -> None:
        self.active: dict[str, int] = dict.fromkeys(self.lanes, 0)
        self.tasks: dict[Any, dict[int, asyncio.Task[None]]] = {}
        self.works: dict[asyncio.Task[None], Work] = {}
        self.on_wire: set[Work] = set()
        self.wire: dict[str, int] = dict.fromkeys(self.lanes, 0)  # on_wire, per lane
        self.closed: set[Any] = set()  # partitions revoked: admit nothing of them
        self.stopping = False
        self.suspect_since: float | None = None
        self.parked: list[Work] = []
        self._changed = asyncio.Event()
        self._last_beat: float | None = None

    # -- admission -------------------------------------------------------------------
    def admissible(self, work: Work) -> bool:
        return (
            not self.stopping
            and work.tp not in self.closed
            and self.membership.owns(work.tp, work.generation)
        )

    def _notify(self) -> None:
        self._changed.set()
        self._changed = asyncio.Event()

    def pending(self, lane: str) -> int:
        """Messages of ``lane`` taken and not yet on the wire (waiting for the meter,
        a connection slot or a breaker)."""
        return self.active[lane] - self.wire[lane]

    def can_take(self, lane: str) -> bool:
        return (
            not self.stopping
            and self.active[lane] < self.lane_in_flight
            and self.pending(lane) < self.lookahead
            and self.may_take(lane)
        )

    async def turn(self, lane: str, poll_s: float = 0.05) -> None:
        """Wait until ``lane`` may take its next message off its stream, and count it
        taken. Polls too: the gate's figures change without telling us."""
        while not self.can_take(lane):
            changed = self._changed
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(changed.wait(), poll_s)
        self.take(lane)

    async def admit(self, lane: str, work: Work) -> bool:
        """Start handling ``work`` once its lane has a free slot. False: dropped
        (partition revoked or fenced, or stopping), never acked."""
        work.lane = lane
        while self.active[lane] >= self.lane_in_flight:
            if not self.admissible(work):
                break
            changed = self._changed
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(changed.wait(), 0.5)
        if not self.admissible(work):
            self.stats.dropped += 1
            return False
        self._start(work)
        return True

    def _start(self, work: Work) -> None:
        self.stats.admitted += 1
        self.active[work.lane] += 1
        self.enter(work.lane)
        task = asyncio.get_running_loop().create_task(self._run(work))
        self.tasks.setdefault(work.tp, {})[work.offset] = task
        self.works[task] = work
        task.add_done_callback(self._finished)

    def _finished(self, task: asyncio.Task[None]) -> None:
        work = self.works.pop(task)
        if task.cancelled():  # also when cancelled before it ever ran
            self.stats.abandoned += 1
        if work in self.on_wire:
            self.on_wire.discard(work)
            self.wire[work.lane] -= 1
        by_offset = self.tasks.get(work.tp)
        if by_offset is not None and by_offset.get(work.offset) is task:
            del by_offset[work.offset]
            if not by_offset:
                del self.tasks[work.tp]
        self.active[work.lane] -= 1
        self.leave(work.lane)
        self._notify()

    async def _run(self, work: Work) -> None:
        _CURRENT.set(work)
        try:
            emission = await self.handle(work.value, work.origin, work.lane)
            # still "on the wire" until its output is acked: a revocation lets it
            # finish within the bound rather than resend what the provider accepted
            if emission is not None and self.outbox is not None:
                await self.outbox.put(emission)  # acked, and its sent mark too
            elif emission is not None:
                await self.deliver(emission)  # returns once Kafka acknowledged it
                if emission.topic == self.sent_topic:
                    # the sent mark in Kafka before the offset may be committed: else a
                    # crash redelivers it as in_flight (resent with its key, or parked)
                    confirmed = self.confirm([emission.value.event_id])
                    if inspect.isawaitable(confirmed):
                        await confirmed
            work.release()
            self.stats.done += 1
        except Fenced:
            self.stats.fenced += 1
            if self.suspect_since is not None and work.tp not in self.closed:
                self.parked.append(work)  # resumed if the assignment survives the stall
            else:
                self.stats.abandoned += 1
        except asyncio.CancelledError:
            raise  # revoked or stopping: not acked, redone elsewhere (``_finished``)
        except Exception as exc:  # an infrastructure fault (the stage catches the rest)
            log.critical("dispatch: %s at %s:%d not done: %r", work.lane, work.tp, work.offset, exc)
            if self.on_fatal is not None:
                self.on_fatal(exc)

    # -- the fence -----------------------------------------------------------------
    def fence(self) -> None:
        """Right before a provider request (the ledger's in_flight mark): raise
        ``Fenced`` unless this member may send the current message now."""
        work = _CURRENT.get()
        if work is None:
            return  # not dispatched through us (unit tests of the stage)
        now = self.clock()
        if (
            self.suspect_since is None
            and self._last_beat is not None
            and now - self._last_beat > self.stall_s
        ):
            # the process was stopped and this task runs before the stall timer does
            log.warning("event loop stalled %.1f s: sends fenced", now - self._last_beat)
            self.suspect_since = now
        if self.suspect_since is not None or not self.admissible(work):
            raise Fenced(f"{work.tp}:{work.offset}: not owned by this member now")
        if work not in self.on_wire:
            self.on_wire.add(work)
            self.wire[work.lane] += 1
            self._notify()  # one fewer pending: its lane may take another

    def fenced_provider(self, provider: Any) -> Any:
        """``provider`` with the fence checked again right before each send (after the
        in_flight mark and, for SMTP, its flush), so the window is the send itself."""
        return _FencedProvider(provider, self.fence)

    def heartbeat(self, now: float | None = None) -> None:
        """Called by a timer: a gap since the last call longer than ``stall_s`` means
        this process was stopped or starved; fence until ownership is known again."""
        now = self.clock() if now is None else now
        last, self._last_beat = self._last_beat, now
        if last is not None and now - last > self.stall_s and self.suspect_since is None:
            log.warning("event loop stalled %.1f s: sends fenced", now - last)
            self.suspect_since = now
        elif self.suspect_since is not None and now - self.suspect_since > self.session_timeout_s:
            self._clear_suspicion()  # no revocation came: still the owner

    def _clear_suspicion(self) -> None:
        self.suspect_since = None
        parked, self.parked = self.parked, []
        for work in parked:
            if self.admissible(work):
                self._start(work)
            else:
                self.stats.abandoned += 1

    # -- the group -----------------------------------------------------------------
    def assigned(self, tps: Iterable[Any]) -> None:
        tps = set(tps)
        self.closed -= tps
        # a rebalance answered: parked work is fetched again in the new generation
        self.parked = []
        self.suspect_since = None

    async def revoke(self, tps: Iterable[Any], bound_s: float | None = None) -> None:
        """Stop admitting ``tps`` at once; give their requests on the wire up to the
        bound, abandon the rest. Returns within the bound (plus a moment)."""
        tps = set(tps)
        self.closed |= tps
        self.parked = [w for w in self.parked if w.tp not in tps]
        self._notify()  # admission waits re-check
        bound = self.revoke_bound_s if bound_s is None else bound_s
        await self._drain(lambda w: w.tp in tps, bound)

    async def stop(self, bound_s: float) -> None:
        """Shutdown: admit nothing more; finish what is on the wire within the bound."""
        self.stopping = True
        self.parked.clear()
        self._notify()
        started = self.clock()
        await self._drain(lambda w: True, bound_s)
        if self.outbox is not None:
            await self.outbox.close(bound_s - (self.clock() - started))

    async def _drain(self, which: Callable[[Work], bool], bound_s: float) -> None:
        tasks = [t for t, w in self.works.items() if which(w)]
        waiting = [t for t in tasks if self.works[t] not in self.on_wire]
        for task in waiting:
            task.cancel()
        wire = [t for t in tasks if t not in waiting]
        if wire:
            _done, pending = await asyncio.wait(wire, timeout=max(0.0, bound_s))
            for task in pending:
                task.cancel()
        if tasks:
            await asyncio.wait(tasks, timeout=1.0)  # let the cancelled ones unwind
