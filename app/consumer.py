"""A Faust consumer that delivers every offset of a stream partition, in order, and
commits only a contiguous prefix of what was done.

faust-streaming 0.15 keeps a *read offset* per partition: a record at or below it
is dropped as already read, and a jump above it is taken for a gap (compacted or
transactional topics have them) whose offsets are acked as if processed
(``Consumer._add_gap``). Around a worker's start both go wrong: records fetched
before "Seek stream partitions to committed offsets" are still delivered after it,
so the read offset runs ahead of the seek and the refetched records are dropped,
or a jump is acked and committed unprocessed (we lost 15 messages per partition
that way; faust-streaming issues #216, #606).

Our stream topics are neither compacted nor transactional, so ``GaplessConsumer``
takes that bookkeeping over for them (``GapTracker``, pure and property-tested):

- it tracks the next offset it expects per partition (set by every seek, forgotten
  on every assignment change), and rewinds the partition when a record skips ahead
  over offsets that still exist (at or above the partition's log start). Offsets
  below the log start are gone (retention) and only those are passed over. There
  is no "rewound once, then give up" state: that flag, never reset, once made a
  worker pass over 99 offsets still in the topic after a rebalance;
- it commits only the contiguous run of acked offsets that starts *at* the
  committed position (``next_commit``). Faust's own rule starts the run at the
  lowest acked offset, and skips its head check when the committed offset is 0
  or unknown or exactly one below it: with per-message acks out of order (a slow
  request finishing after its neighbours) that commits past a message not done.

A record below the next offset due was delivered already and is dropped (only a
seek moves that offset back). Records Faust fetched and then dropped at the end of
a partition, with no later record to show the gap, are fetched again by ``unstick``
(a timer). Changelog topics, read without acks during recovery, keep Faust's own
handling.
"""

from __future__ import annotations

import logging
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Container, Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

from faust.transport.drivers import aiokafka as faust_aiokafka
from faust.types import TP, Message

from app import faust_adapter

log = logging.getLogger(__name__)


def skipped_from(expected: int | None, offset: int) -> int | None:
    """The first offset skipped before ``offset``, if any (``expected``: the next
    offset due, None when nothing is known yet)."""
    if expected is None or offset <= expected:
        return None
    return expected


def next_commit(base: int | None, acked: Iterable[int]) -> int | None:
    """The offset to commit: the end of the run of consecutive acked offsets that
    starts at ``base`` (the committed position: the next offset not yet done), or
    None when ``base`` is unknown or not acked itself."""
    if base is None:
        return None
    done = set(acked)
    n = base
    while n in done:
        n += 1
    return n if n > base else None


@dataclass
class GapTracker:
    """Per partition: the next offset due from the fetcher, and the committed base.

    ``expected`` is set by seeks, ``base`` by seeks and by commits; both are dropped
    when the partition's ownership changes (``reset``)."""

    expected: dict[Any, int] = field(default_factory=dict)
    base: dict[Any, int] = field(default_factory=dict)

    def reset(self, tps: Iterable[Any] | None = None) -> None:
        if tps is None:
            self.expected.clear()
            self.base.clear()
            return
        for tp in tps:
            self.expected.pop(tp, None)
            self.base.pop(tp, None)

    def positioned(self, tp: Any, offset: int | None) -> None:
        """Faust seeked ``tp`` to its committed offset (or, with none, the log start):
        the next offset due and the commit base."""
        if offset is not None and offset >= 0:
            self.expected[tp] = offset
            self.base[tp] = offset
        else:
            self.expected.pop(tp, None)
            self.base.pop(tp, None)

    def seeked(self, tp: Any, offset: int | None) -> None:
        """A rewind: the next offset due changes, the commit base does not."""
        if offset is not None and offset >= 0:
            self.expected[tp] = offset
        else:
            self.expected.pop(tp, None)

    def committed(self, tp: Any, offset: int) -> None:
        self.base[tp] = max(self.base.get(tp, offset), offset)

    def check(self, tp: Any, offset: int, log_start: int | None = None) -> int | None:
        """A record at ``offset`` arrived. None: deliver it. Else the offset to
        rewind to (offsets in between exist and were never delivered).
        ``log_start``: the partition's earliest offset, when known."""
        first = skipped_from(self.expected.get(tp), offset)
        if first is not None and log_start is not None and log_start > first:
            # below log_start: gone (retention); the commit base moves past them
            self.base[tp] = max(self.base.get(tp, log_start), log_start)
            first = log_start if log_start < offset else None
        if first is not None:
            return first
        self.expected[tp] = max(self.expected.get(tp, 0), offset + 1)
        return None

    def seen(self, tp: Any, offset: int) -> bool:
        """``offset`` is below the next offset due: delivered already (or committed).
        Only a seek moves the next offset due back, to what must come again."""
        expected = self.expected.get(tp)
        return expected is not None and offset < expected

    def skip_detected(self, tp: Any, offset: int) -> bool:
        return skipped_from(self.expected.get(tp), offset) is not None


def dropped_from(expected: int | None, position: int | None) -> int | None:
    """The first offset the client handed out that never reached the stream, if any:
    the client's ``position`` (next offset it hands out) is past ``expected`` (next
    offset due at the stream) between two fetches."""
    if expected is None or position is None or position <= expected:
        return None
    return expected


@dataclass
class LostWatch:
    """Per partition: a message the stage took past (``taken``: the next offset after
    the last one it took), never done (not acked) and not in hand is lost on its way
    (dropped between the fetch and the stage, or at admission), and the partition's
    commit would wait for it for ever. ``check`` names its offset once that has held
    for ``after_s`` (a message may sit a moment between being taken and in hand)."""

    after_s: float = 3.0
    since: dict[Any, tuple[int, float]] = field(default_factory=dict)

    def check(
        self,
        tp: Any,
        base: int | None,
        taken: int | None,
        in_hand: Container[int],
        acked: Container[int],
        now: float,
    ) -> int | None:
        if base is None or taken is None or base >= taken or base in in_hand or base in acked:
            self.since.pop(tp, None)
            return None
        first = self.since.get(tp)
        if first is None or first[0] != base:
            self.since[tp] = (base, now)
            return None
        if now - first[1] < self.after_s:
            return None
        del self.since[tp]
        return base

    def forget(self, keep: Iterable[Any] = ()) -> None:
        keep = set(keep)
        for tp in set(self.since) - keep:
            del self.since[tp]


class GaplessConsumer(faust_aiokafka.Consumer):
    _gaps: GapTracker
    _behind: dict[Any, tuple[int, int, float]]  # tp -> (expected, position, since)

    def tracker(self) -> GapTracker:
        if not hasattr(self, "_gaps"):
            self._gaps = GapTracker()
        return self._gaps

    def commit_base(self, tp: TP) -> int | None:
        """The next offset of ``tp`` not known done: where its commit stands."""
        known = [
            b
            for b in (faust_adapter.committed_offsets(self).get(tp), self.tracker().base.get(tp))
            if b is not None
        ]
        return max(known) if known else None

    async def redeliver(self, tp: TP, offset: int) -> None:
        """Deliver ``tp`` again from ``offset``: a message there was delivered and then
        lost on its way to being done (the stage knows; see the dispatch agent). What
        follows it comes again too (done ones are duplicates the stage absorbs)."""
        await self.seek(tp, offset)

    async def find_missing_topics(self, every_s: float = 5.0, now: float | None = None) -> set[str]:
        """A topic this member subscribed to before it existed (the worker creates its
        topics while its consumer joins the group) is left out of the assignment and,
        without a metadata refresh, never read: render and route logged "Ignoring
        missing topic" and read nothing. While one is missing from the client's
        metadata, refresh it (at most every ``every_s``); once the topic shows up the
        client rejoins and the topic is assigned."""
        missing = faust_adapter.topics_missing_from_metadata(self)
        if not missing:
            return missing
        now = time.monotonic() if now is None else now
        last = self.__dict__.get("_metadata_asked", -every_s)
        if now - last < every_s:
            return missing
        self.__dict__["_metadata_asked"] = now
        log.info("subscribed topics %s not in metadata yet: refreshing", sorted(missing))
        try:
            await faust_adapter.refresh_metadata(self)
        except Exception as exc:  # the next tick asks again
            log.warning("metadata refresh failed: %r", exc)
        return missing

    async def unstick(self, idle_s: float = 2.0, now: float | None = None) -> list[TP]:
        """Seek back partitions whose records were fetched and then dropped before
        reaching the stream, with no later record to show the gap.

        Faust drops the rest of a fetched batch when the partition is paused (a
        rebalance, a held-back lane) or the generation changes while it iterates; the
        client's position is past them. A later record of the partition makes
        ``getmany`` rewind (``GapTracker.check``); at the end of a partition none
        comes, and those records were never read again (a whole bulk tail stalled
        after a rebalance). Call it from a timer: between two fetches, a position
        past the next offset due, unchanged for ``idle_s``, is such a drop. (Or the
        rest of a batch still waiting for a full stream buffer: fetched again, those
        records are dropped as duplicates by ``getmany``, so the seek is safe.)"""
        if not faust_adapter.may_pause(self.app):
            return []
        now = time.monotonic() if now is None else now
        behind = self.__dict__.setdefault("_behind", {})
        tracker = self.tracker()
        acks_enabled: Callable[[str], bool] = self.app.topics.acks_enabled_for
        sought: list[TP] = []
        try:
            assigned = set(self.assignment())
        except Exception:
            return []
        for tp in list(behind):
            if tp not in assigned:
                del behind[tp]
        for tp in assigned:
            if not acks_enabled(tp.topic):
                continue
            expected = tracker.expected.get(tp)
            position = faust_adapter.fetch_position(self, tp)
            first = dropped_from(expected, position)
            if first is None or expected is None or position is None:
                behind.pop(tp, None)
                continue
            seen = behind.get(tp)
            if seen is None or seen[:2] != (expected, position):
                behind[tp] = (expected, position, now)
                continue
            if now - seen[2] < idle_s:
                continue
            log.warning(
                "%s: offsets %d..%d were fetched but never reached the stream; "
                "fetching them again",
                tp,
                first,
                position - 1,
            )
            del behind[tp]
            await self.seek(tp, first)
            sought.append(tp)
        return sought

    async def seek_to_committed(self) -> Mapping[TP, int]:
        offsets = await super().seek_to_committed()
        tracker = self.tracker()
        # No committed offset: the consumer starts at the log start (earliest), which
        # is then the commit base; never the first offset that happens to arrive.
        fresh = [tp for tp, o in offsets.items() if o is None or o < 0]
        starts = await self.earliest_offsets(*fresh) if fresh else {}
        for tp, offset in offsets.items():
            tracker.positioned(tp, offset if offset is not None and offset >= 0 else starts.get(tp))
        return offsets

    def ack(self, message: Message) -> bool:
        """A message fetched in an earlier generation is not counted as done: its
        partition was handed back and fetched again from the committed offset, and
        its ack (Faust acks such a message when it skips it) would let the commit
        pass the new copy of that offset before it is done."""
        generation = faust_adapter.message_generation(message)
        stale = generation is not None and generation != faust_adapter.generation(self.app)
        if stale and self.app.topics.acks_enabled_for(message.topic):
            message.acked = True
            return False
        return bool(super().ack(message))

    async def seek(self, partition: TP, offset: int) -> None:
        await super().seek(partition, offset)
        self.tracker().seeked(partition, offset)

    async def on_partitions_revoked(self, revoked: set[TP]) -> None:
        # ``app.spillway_before_revoke`` (the dispatch stage's bounded drain) runs
        # before Faust forgets the revoked partitions' acks; then their done prefix
        # is committed.
        hook: Callable[[set[TP]], Awaitable[None]] | None = getattr(
            self.app, "spillway_before_revoke", None
        )
        if hook is not None and revoked:
            try:
                await hook(set(revoked))
                # Faust forgets the revoked partitions' acks next: commit their done
                # prefix now, while they are still ours.
                await self.commit(set(revoked))
            except Exception as exc:  # never fail a rebalance: the new owner redoes it
                log.warning("commit before revocation failed: %r", exc)
        self.tracker().reset(revoked)
        await super().on_partitions_revoked(revoked)

    async def on_partitions_assigned(self, assigned: set[TP], generation_id: int = 0) -> None:
        self.tracker().reset()  # every assignment: Faust seeks to committed afterwards
        faust_adapter.forget_acks(self)  # acks from the rebalance window are not work done
        # ``app.spillway_on_assigned`` (the dispatcher reopens admission) runs before any
        # record of the new generation can be fetched; Faust's own signal comes later,
        # after the flow resumed, and records dropped meanwhile were never fetched again.
        hook: Callable[[set[TP]], None] | None = getattr(self.app, "spillway_on_assigned", None)
        if hook is not None:
            hook(set(assigned))
        await super().on_partitions_assigned(assigned, generation_id)

    async def _getmany(self, active_partitions: set[TP] | None, timeout: float) -> Any:  # noqa: ASYNC109 (Faust's signature)
        """Records of the urgent topics (the critical lanes) first, whatever else is
        buffered: the client hands out a fetch's records partition after partition
        (500 at a time, ``kafka.max_poll_records``), so a critical partition listed
        after eight buffered bulk partitions waited for all of them (13 s in a 30,000
        burst). Then everything, as before."""
        first = urgent_partitions(active_partitions, urgent_topics(self.app))
        if first:
            records = await super()._getmany(first, 0.0)
            if records:
                return records
        return await super()._getmany(active_partitions, timeout)

    def _new_offset(self, tp: TP) -> int | None:
        if not self.app.topics.acks_enabled_for(tp.topic):
            return super()._new_offset(tp)
        acked, index = faust_adapter.acked_offsets(self, tp)
        committed = faust_adapter.committed_offsets(self).get(tp)
        tracker = self.tracker()
        known = [b for b in (committed, tracker.base.get(tp)) if b is not None]
        base = max(known) if known else None
        new = next_commit(base, acked)
        if new is None:
            return None
        done = [o for o in acked if o < new]
        acked[:] = [o for o in acked if o >= new]
        index.difference_update(done)
        tracker.committed(tp, new)
        return new

    async def getmany(self, timeout: float) -> AsyncIterator[tuple[TP, Message]]:  # noqa: ASYNC109 (Faust's signature)
        acks_enabled: Callable[[str], bool] = self.app.topics.acks_enabled_for
        rewound: set[TP] = set()
        async for tp, message in self._getmany_checked(timeout, acks_enabled, rewound):
            yield tp, message

    async def _getmany_checked(
        self, wait_s: float, acks_enabled: Callable[[str], bool], rewound: set[TP]
    ) -> AsyncIterator[tuple[TP, Message]]:
        tracker = self.tracker()

        def generation() -> int:
            return faust_adapter.generation(self.app)

        async for tp, message in super().getmany(wait_s):
            if tp in rewound:
                continue  # fetched again after the rewind
            if acks_enabled(message.topic):  # stream topics, not changelogs
                if faust_adapter.message_generation(message) not in (None, generation()):
                    # fetched before the last rebalance: the stream would skip it, so it
                    # must not count as delivered (the next record rewinds to it)
                    continue
                if tracker.seen(tp, message.offset):
                    continue  # delivered already (fetched again after a seek back)
                log_start = None
                if tracker.skip_detected(tp, message.offset):
                    log_start = (await self.earliest_offsets(tp)).get(tp)
                first = tracker.check(tp, message.offset, log_start)
                if first is not None:
                    log.warning(
                        "%s: offsets %d..%d skipped on the way to the stream; rewinding",
                        tp,
                        first,
                        message.offset - 1,
                    )
                    rewound.add(tp)
                    await self.seek(tp, first)
                    continue
                faust_adapter.forget_read_offset(self, tp)  # no drop, no gap ack
            yield tp, message


def urgent_topics(app: Any) -> frozenset[str]:
    """The topics whose records a worker fetches first (``prefer``)."""
    topics: frozenset[str] = getattr(app, "spillway_urgent_topics", frozenset())
    return topics


def prefer(app: Any, topics: Iterable[str]) -> None:
    """Hand out the records of ``topics`` before any other's (see ``_getmany``)."""
    app.spillway_urgent_topics = frozenset(topics)


def urgent_partitions(active: set[TP] | None, urgent: Container[str]) -> set[TP] | None:
    """The partitions of ``active`` to drain first: those of ``urgent`` topics, if
    there are some and others too (else None: one plain fetch)."""
    if not active:
        return None
    first = {tp for tp in active if tp.topic in urgent}
    return first if first and len(first) < len(active) else None


class GaplessTransport(faust_aiokafka.Transport):
    Consumer = GaplessConsumer


UNSTICK_EVERY_S = 1.0
UNSTICK_IDLE_S = 2.0


def install(app: Any) -> None:
    """Use ``GaplessConsumer`` (before anything touches ``app.transport``), and look
    for records dropped at the end of a partition every ``UNSTICK_EVERY_S``."""
    app.transport = GaplessTransport(app.conf.broker_consumer, app)

    @app.timer(UNSTICK_EVERY_S, name="gapless-unstick")
    async def unstick() -> None:
        consumer = app.consumer
        if isinstance(consumer, GaplessConsumer):
            await consumer.find_missing_topics()
            await consumer.unstick(UNSTICK_IDLE_S)
