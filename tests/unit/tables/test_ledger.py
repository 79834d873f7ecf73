"""The sent-ledger: a sent mark reaches the table only once its SendResult is acked."""

from __future__ import annotations

from typing import Any

from app.tables.ledger import Ledger


def test_sent_mark_is_held_until_confirmed() -> None:
    table: dict[bytes, Any] = {}
    ledger = Ledger(table)
    ledger.mark_in_flight("e1", "sim")
    ledger.mark_sent("e1", "sim", "m-1")
    # Suppresses a second copy at once, but the table (the changelog) still says
    # in_flight: a crash now resends with the same idempotency key, never drops it.
    entry = ledger.get("e1")
    assert entry is not None and entry.state == "sent" and entry.message_id == "m-1"
    assert table[b"e1"]["s"] == "in_flight"
    ledger.confirm(["e1", "unknown"])
    assert table[b"e1"]["s"] == "sent" and table[b"e1"]["m"] == "m-1"
    assert not ledger.pending
    assert ledger.get("e1") == entry


def test_a_later_state_replaces_a_held_sent_mark() -> None:
    table: dict[bytes, Any] = {}
    ledger = Ledger(table)
    ledger.mark_sent("e2", "sim", "m-2")
    ledger.mark_failed("e2", "sim")
    ledger.confirm(["e2"])  # nothing held any more: the failed mark stands
    entry = ledger.get("e2")
    assert entry is not None and entry.state == "failed"
    assert table[b"e2"]["s"] == "failed"
