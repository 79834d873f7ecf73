"""The sent-ledger: one entry per event id, so an email is sent at most once.

Kept in a changelog-backed Faust table keyed by the event id (bytes), key-hashed
(``KeyHashedTable``) so each entry lands in the same
partition number as the dispatch messages keyed by that id: the worker that owns
a dispatch partition also owns its ledger entries, after any rebalance.

States: ``in_flight`` (marked before the provider call), ``sent`` (after it),
``failed`` (gave up: a replay may send it). Only ``sent`` suppresses a send.
"""

from __future__ import annotations

import time
from collections.abc import MutableMapping
from dataclasses import dataclass
from typing import Any, Literal

from app.tables import declare_bytes_table

State = Literal["in_flight", "sent", "failed"]
TABLE_NAME = "sent-ledger"


@dataclass(frozen=True, slots=True)
class Entry:
    state: State
    provider: str | None
    message_id: str | None
    at: float


class Ledger:
    """Typed view over a mapping (a Faust table in a worker, a dict in unit tests)."""

    def __init__(self, table: MutableMapping[bytes, Any]) -> None:
        self.table = table

    def get(self, event_id: str) -> Entry | None:
        raw = self.table.get(event_id.encode())
        if not raw:
            return None
        return Entry(raw["s"], raw.get("p"), raw.get("m"), raw.get("t", 0.0))

    def _put(
        self, event_id: str, state: State, provider: str | None, message_id: str | None
    ) -> None:
        self.table[event_id.encode()] = {
            "s": state,
            "p": provider,
            "m": message_id,
            "t": time.time(),
        }

    def mark_in_flight(self, event_id: str, provider: str) -> None:
        self._put(event_id, "in_flight", provider, None)

    def mark_sent(self, event_id: str, provider: str, message_id: str) -> None:
        self._put(event_id, "sent", provider, message_id)

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
