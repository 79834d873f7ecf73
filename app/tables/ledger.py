"""The sent-ledger: one entry per event id, so an email is sent at most once.

Kept in a changelog-backed Faust table keyed by the event id (bytes), key-hashed
(``KeyHashedTable``) so each entry lands in the same
partition number as the dispatch messages keyed by that id: the worker that owns
a dispatch partition also owns its ledger entries, after any rebalance.

States: ``in_flight`` (marked before the provider call), ``sent`` (after it),
``failed`` (gave up: a replay may send it). Only ``sent`` suppresses a send.

A ``sent`` mark is held back in the worker (``pending``, already visible to
``get``) until the SendResult it stands for is acked by the broker, then written
by ``confirm``. Written at once, a crash could keep the mark and lose the
SendResult: the redelivered message would be suppressed and ``email.sent`` would
never hear of it. Held back, the worst case is an ``in_flight`` entry, which
HTTP resends with the same idempotency key.

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

import time
from collections.abc import Callable, Iterable, MutableMapping
from dataclasses import dataclass
from typing import Any, Literal

from app.tables import declare_bytes_table

State = Literal["in_flight", "sent", "failed"]
TABLE_NAME = "sent-ledger"
DEFAULT_HORIZON_S = 7 * 24 * 3600.0


@dataclass(frozen=True, slots=True)
class Entry:
    state: State
    provider: str | None
    message_id: str | None
    at: float


class Ledger:
    """Typed view over a mapping (a Faust table in a worker, a dict in unit tests)."""

    def __init__(
        self,
        table: MutableMapping[bytes, Any],
        *,
        horizon_s: float = DEFAULT_HORIZON_S,
        clock: Callable[[], float] = time.time,
        guard: Callable[[], None] | None = None,
    ) -> None:
        self.table = table
        self.pending: dict[str, Entry] = {}
        self.horizon_s = horizon_s
        self.clock = clock
        self.guard = guard
        self._sweep: Any = None  # iterator over the keys, resumed by ``expire``

    def get(self, event_id: str) -> Entry | None:
        held = self.pending.get(event_id)
        if held is not None:
            return held
        raw = self.table.get(event_id.encode())
        if not raw:
            return None
        return Entry(raw["s"], raw.get("p"), raw.get("m"), raw.get("t", 0.0))

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
        self, event_id: str, state: State, provider: str | None, message_id: str | None
    ) -> None:
        self.pending.pop(event_id, None)
        self._write(event_id, Entry(state, provider, message_id, self.clock()))

    def _write(self, event_id: str, entry: Entry) -> None:
        self.table[event_id.encode()] = {
            "s": entry.state,
            "p": entry.provider,
            "m": entry.message_id,
            "t": entry.at,
        }

    def mark_in_flight(self, event_id: str, provider: str) -> None:
        if self.guard is not None:
            self.guard()  # the fence: raises before anything is written or sent
        self._put(event_id, "in_flight", provider, None)

    def mark_sent(self, event_id: str, provider: str, message_id: str) -> None:
        """Held until ``confirm``: call that once the SendResult is acked."""
        self.pending[event_id] = Entry("sent", provider, message_id, self.clock())

    def confirm(self, event_ids: Iterable[str]) -> None:
        """Write the held ``sent`` marks of these ids (their SendResults are acked)."""
        for event_id in event_ids:
            entry = self.pending.pop(event_id, None)
            if entry is not None:
                self._write(event_id, entry)

    def mark_failed(self, event_id: str, provider: str | None) -> None:
        self._put(event_id, "failed", provider, None)


def declare_table(app: Any, partitions: int) -> Any:
    return declare_bytes_table(
        app,
        TABLE_NAME,
        partitions,
        help="Sent-ledger: event id -> in_flight | sent | failed, for effectively-once sends.",
        key_hashed=True,
    )
