"""The sent-ledger: one entry per event id, so an email is sent at most once.

Kept in a changelog-backed Faust table keyed by the event id (bytes), key-hashed
(``KeyHashedTable``) so each entry lands in the same
partition number as the dispatch messages keyed by that id: the worker that owns
a dispatch partition also owns its ledger entries, after any rebalance.

States:

- ``in_flight``: marked before the provider call. Found after a crash, the
  provider may have accepted the email: resent with the same idempotency key (a
  keyed provider, key alive), else parked as ``ambiguous``.
- ``accepted``: the provider accepted it (its message id), written and acked by
  Kafka before the SendResult is produced. Found again (a crash before the SendResult
  or the ``sent`` mark was acked): the SendResult is produced again from the entry,
  no request is made.
- ``sent``: the SendResult is acked too (``confirm``). Suppresses every later copy,
  replays included.
- ``ambiguous``: parked (a dead letter with reason ``ambiguous``): the provider may
  have accepted it and honours no key. Suppresses a send like ``sent`` (a
  redelivered copy is parked again, never sent) unless the request is an operator
  replay newer than the mark (``replay``: the replay number, ``spillway-replay``
  header, written with the mark; a redelivered copy of the same replay finds its own
  number and is parked again).
- ``failed``: gave up or will retry (a clean failure: nothing was accepted); a retry
  or a replay sends it.

Durable before it counts: a write returns before Kafka has it (Faust buffers
changelog records). ``settled(event_id)`` waits for the broker's ack of the last
write of that id (``KeyHashedTable.written``; acks=all) and raises
``LedgerWriteError`` if it failed or took longer than ``ack_timeout_s``. The
dispatch stage awaits it after an ``in_flight`` mark before a request to a provider
without keys, and after an ``ambiguous`` mark before its dead letter goes out; the
dispatcher awaits ``confirm`` (the ``sent`` mark's ack) before the input offset
may be committed.

Two steps after the answer, so no crash loses either fact: ``accepted`` (acked)
before the SendResult is produced, then ``sent`` once the SendResult is acked. A
crash before ``accepted`` is acked leaves ``in_flight`` (a keyed provider gets the
same key again; else parked): the only window, one broker round trip after the
answer. A crash after it re-produces the SendResult (possibly a second record of it),
never a second request. (Before, the ``sent`` mark was held in memory until the
SendResult was acked: a crash in between left ``in_flight``, and a keyless email
that had been sent was parked as ambiguous as well: 273 in 20,000 with 5 SIGKILLs.)

Bounded: an entry older than the dedupe horizon (``horizon_s``, default 7 days and
never shorter than the longest idempotency-key lifetime of a configured provider:
``Settings.ledger_horizon_s``) is removed by ``expire``, a periodic sweep that
deletes a bounded number of keys per call (a tombstone each on the
changelog, so compaction drops them there too).

Fenced: ``guard`` (``Dispatcher.fence``) runs right before every ``in_flight`` mark,
that is right before every provider request; it raises when this member may no
longer send the message, before anything is written.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable, Iterable, MutableMapping
from dataclasses import dataclass, replace
from typing import Any, Literal

from app.tables import declare_bytes_table

State = Literal["in_flight", "accepted", "sent", "failed", "ambiguous"]
TABLE_NAME = "sent-ledger"
DEFAULT_HORIZON_S = 7 * 24 * 3600.0
#: How long ``settled`` waits for the broker's ack of a ledger write: a broker outage
#: this long is waited out (nothing new is sent meanwhile: the slot stays held); longer
#: is an infrastructure fault (exit 70; the restarted worker redoes the message). 30 s
#: stopped the dispatch worker in the chaos suite's broker scenario (broker down ~30 s).
DEFAULT_ACK_TIMEOUT_S = 300.0


class LedgerWriteError(Exception):
    """A ledger write was not acknowledged by Kafka (failed, or not in time): an
    infrastructure fault. Nothing that relies on the mark may happen."""


@dataclass(frozen=True, slots=True)
class Entry:
    state: State
    provider: str | None
    message_id: str | None
    at: float
    replay: int = 0  # the replay number of the request that wrote it (0: not a replay)


class Ledger:
    """Typed view over a mapping (a Faust table in a worker, a dict in unit tests)."""

    def __init__(
        self,
        table: MutableMapping[bytes, Any],
        *,
        horizon_s: float = DEFAULT_HORIZON_S,
        clock: Callable[[], float] = time.time,
        guard: Callable[[], None] | None = None,
        ack_timeout_s: float = DEFAULT_ACK_TIMEOUT_S,
    ) -> None:
        self.table = table
        self.ack_timeout_s = ack_timeout_s
        self.horizon_s = horizon_s
        self.clock = clock
        self.guard = guard
        self._sweep: Any = None  # iterator over the keys, resumed by ``expire``

    def get(self, event_id: str) -> Entry | None:
        raw = self.table.get(event_id.encode())
        if not raw:
            return None
        return Entry(raw["s"], raw.get("p"), raw.get("m"), raw.get("t", 0.0), raw.get("r", 0))

    def _expired(self, raw: Any) -> bool:
        try:
            at = float(raw.get("t", 0.0))
        except (TypeError, ValueError, AttributeError):
            return True
        return not at > self.clock() - self.horizon_s  # NaN counts as expired

    def expire(self, budget: int = 10_000) -> int:
        """Delete up to ``budget`` entries older than the horizon, resuming where the
        last call stopped; a full pass starts over. Returns the number deleted."""
        deleted = 0
        for _ in range(budget):
            if self._sweep is None:
                self._sweep = iter(list(self.table.keys()))
            key = next(self._sweep, None)
            if key is None:
                self._sweep = None
                break
            raw = self.table.get(key)
            if raw is not None and self._expired(raw):
                del self.table[key]
                deleted += 1
        return deleted

    def _put(
        self,
        event_id: str,
        state: State,
        provider: str | None,
        message_id: str | None,
        replay: int = 0,
    ) -> None:
        replay = self._replayed(event_id, replay)
        self._write(event_id, Entry(state, provider, message_id, self.clock(), replay))

    def _replayed(self, event_id: str, replay: int) -> int:
        """The replay number a new mark keeps: never lower than the entry's (a retry
        copy of a replay carries no number; it must not let that replay's redelivered
        copy pass as a newer one)."""
        entry = self.get(event_id)
        return max(replay, entry.replay if entry is not None else 0)

    def _write(self, event_id: str, entry: Entry) -> None:
        value: dict[str, Any] = {
            "s": entry.state,
            "p": entry.provider,
            "m": entry.message_id,
            "t": entry.at,
        }
        if entry.replay:
            value["r"] = entry.replay
        self.table[event_id.encode()] = value

    async def settled(self, event_id: str) -> None:
        """Return once Kafka acknowledged the last write of ``event_id`` made in this
        process (at once if there is none pending, or the table is a plain mapping);
        raise ``LedgerWriteError`` if that write failed or is not acked in time."""
        written = getattr(self.table, "written", None)
        future = written(event_id.encode()) if written is not None else None
        if future is None:
            return
        try:
            # shielded: a timeout here must not cancel Faust's own future
            await asyncio.wait_for(asyncio.shield(future), self.ack_timeout_s)
        except TimeoutError as exc:
            raise LedgerWriteError(
                f"ledger write of {event_id} not acknowledged within {self.ack_timeout_s:.0f} s"
            ) from exc
        except asyncio.CancelledError:
            if future.cancelled():  # Faust dropped the record, not we were cancelled
                raise LedgerWriteError(f"ledger write of {event_id} was dropped") from None
            raise
        except Exception as exc:
            raise LedgerWriteError(f"ledger write of {event_id} failed: {exc!r}") from exc

    def mark_in_flight(self, event_id: str, provider: str, replay: int = 0) -> None:
        if self.guard is not None:
            self.guard()  # the fence: raises before anything is written or sent
        self._put(event_id, "in_flight", provider, None, replay)

    def mark_sent(self, event_id: str, provider: str, message_id: str) -> None:
        """The provider accepted it: written as ``accepted`` at once (await ``settled``
        before producing its SendResult); ``confirm`` makes it ``sent``."""
        self._put(event_id, "accepted", provider, message_id)

    async def confirm(self, event_ids: Iterable[str]) -> None:
        """The SendResults of these ids are acked: their ``accepted`` marks become
        ``sent``; returns once Kafka acknowledged them (``settled``)."""
        ids = list(event_ids)
        for event_id in ids:
            entry = self.get(event_id)
            if entry is not None and entry.state == "accepted":
                self._write(event_id, replace(entry, state="sent"))
        if len(ids) == 1:
            await self.settled(ids[0])
        elif ids:
            await self.settled_all(ids)

    async def settled_all(self, event_ids: Iterable[str]) -> None:
        """``settled`` for many ids with one wait (a batch's marks): raises
        ``LedgerWriteError`` naming the first id whose write failed or is not acked in
        time."""
        written = getattr(self.table, "written", None)
        if written is None:
            return
        pending = {}
        for event_id in event_ids:
            future = written(event_id.encode())
            if future is not None:
                pending[future] = event_id
        if not pending:
            return
        # asyncio.wait never cancels what it waits on (Faust's own futures)
        _done, late = await asyncio.wait(pending, timeout=self.ack_timeout_s)
        for future, event_id in pending.items():
            if future in late:
                raise LedgerWriteError(
                    f"ledger write of {event_id} not acknowledged within "
                    f"{self.ack_timeout_s:.0f} s"
                )
            if future.cancelled():
                raise LedgerWriteError(f"ledger write of {event_id} was dropped")
            exc = future.exception()
            if exc is not None:
                raise LedgerWriteError(f"ledger write of {event_id} failed: {exc!r}") from exc

    def mark_failed(self, event_id: str, provider: str | None) -> None:
        self._put(event_id, "failed", provider, None)

    def mark_ambiguous(self, event_id: str, provider: str | None, replay: int = 0) -> None:
        """Parked: never sent again except by an operator replay newer than ``replay``.
        Await ``settled`` before the dead letter's input may be committed."""
        self._put(event_id, "ambiguous", provider, None, replay)


def declare_table(app: Any, partitions: int) -> Any:
    return declare_bytes_table(
        app,
        TABLE_NAME,
        partitions,
        help=(
            "Sent-ledger: event id -> in_flight | accepted | sent | failed | ambiguous, for "
            "effectively-once sends."
        ),
        key_hashed=True,
    )
