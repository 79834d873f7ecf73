"""The sent-ledger: the provider's acceptance is written at once (``accepted``), ``sent``
only once its SendResult is acked, and a mark counts only once Kafka acknowledged it
(``settled``)."""

from __future__ import annotations

import asyncio
import contextlib
from typing import Any

import pytest

from app.tables.ledger import Entry, Ledger, LedgerWriteError
from tests.plugins.ledger import AckedTable


async def test_acceptance_is_written_at_once_and_sent_once_confirmed() -> None:
    table: dict[bytes, Any] = {}
    ledger = Ledger(table, clock=lambda: 9.0)
    ledger.mark_in_flight("e1", "sim")
    ledger.mark_sent("e1", "sim", "m-1")
    # In the changelog at once: a crash now produces the SendResult again from it,
    # and makes no second request.
    assert ledger.get("e1") == Entry("accepted", "sim", "m-1", 9.0)
    assert table[b"e1"]["s"] == "accepted"
    await ledger.confirm(["e1", "unknown"])
    assert ledger.get("e1") == Entry("sent", "sim", "m-1", 9.0)  # the time of acceptance
    assert b"unknown" not in table


async def test_a_later_state_replaces_an_accepted_mark() -> None:
    table: dict[bytes, Any] = {}
    ledger = Ledger(table)
    ledger.mark_sent("e2", "sim", "m-2")
    ledger.mark_failed("e2", "sim")
    await ledger.confirm(["e2"])  # nothing held any more: the failed mark stands
    entry = ledger.get("e2")
    assert entry is not None and entry.state == "failed"
    assert table[b"e2"]["s"] == "failed"


def test_entries_past_the_horizon_are_expired_in_bounded_sweeps() -> None:
    now = [1_000_000.0]
    table: dict[bytes, Any] = {}
    ledger = Ledger(table, horizon_s=100.0, clock=lambda: now[0])
    for i in range(10):
        ledger.mark_in_flight(f"old-{i}", "sim")
    now[0] += 150.0
    ledger.mark_in_flight("new", "sim")
    table[b"nan"] = {"s": "sent", "t": float("nan")}  # garbage times count as expired
    table[b"bad"] = {"s": "sent", "t": "yesterday"}
    assert ledger.expire(budget=5) == 5  # bounded: resumes where it stopped
    assert ledger.expire(budget=100) == 7
    assert set(table) == {b"new"}
    assert ledger.expire() == 0
    now[0] += 99.0
    assert ledger.expire() == 0 and b"new" in table  # inside the horizon: kept
    now[0] += 2.0
    assert ledger.expire() == 1 and table == {}


def test_the_fence_runs_before_the_in_flight_mark() -> None:
    table: dict[bytes, Any] = {}

    def fenced() -> None:
        raise RuntimeError("not owned")

    ledger = Ledger(table, guard=fenced)
    with contextlib.suppress(RuntimeError):
        ledger.mark_in_flight("e1", "sim")
    assert table == {}  # nothing written, nothing sent


def test_the_horizon_is_never_shorter_than_a_provider_key_lifetime() -> None:
    from app.settings import Settings

    assert Settings().ledger_horizon_s() == 7 * 24 * 3600.0
    s = Settings(dedupe_horizon_s=3600.0, provider_idempotency_ttl_s=86_400.0)  # type: ignore[call-arg]
    assert s.ledger_horizon_s() == 86_400.0
    smtp = Settings(provider="smtp", dedupe_horizon_s=3600.0)  # type: ignore[call-arg]
    assert smtp.ledger_horizon_s() == 3600.0  # no keys: the configured horizon


async def test_confirm_returns_only_once_kafka_acknowledged_the_sent_mark() -> None:
    table = AckedTable()
    ledger = Ledger(table)
    ledger.mark_sent("e1", "sim", "m-1")
    table.ack(b"e1")
    confirming = asyncio.ensure_future(ledger.confirm(["e1"]))
    for _ in range(10):
        await asyncio.sleep(0)
    assert table.writes == [(b"e1", "accepted"), (b"e1", "sent")] and not confirming.done()
    table.ack(b"e1")
    await asyncio.wait_for(confirming, 5)


async def test_settled_raises_when_the_write_failed_or_is_never_acked() -> None:
    table = AckedTable()
    ledger = Ledger(table, ack_timeout_s=0.05)
    ledger.mark_failed("e1", "sim")
    table.fail(b"e1", RuntimeError("NotLeaderForPartition"))
    with pytest.raises(LedgerWriteError, match="NotLeaderForPartition"):
        await ledger.settled("e1")
    ledger.mark_ambiguous("e2", "sim")
    with pytest.raises(LedgerWriteError, match="not acknowledged"):
        await ledger.settled("e2")
    await ledger.settled("never-written")  # nothing pending: at once
    await Ledger({}).settled("e1")  # a plain mapping has no acks to wait for


async def test_settled_waits_for_the_last_write_and_never_cancels_it() -> None:
    table = AckedTable()
    ledger = Ledger(table, ack_timeout_s=0.05)
    ledger.mark_in_flight("e1", "sim")
    first = table.futures[b"e1"]
    ledger.mark_ambiguous("e1", "sim")
    table.ack(b"e1")  # the last write acked (the producer keeps a partition's order)
    await ledger.settled("e1")
    assert not first.cancelled()
    ledger.mark_failed("e1", "sim")
    with pytest.raises(LedgerWriteError):
        await ledger.settled("e1")  # timed out ...
    assert not table.futures[b"e1"].cancelled()  # ... without cancelling Faust's future


def test_ambiguous_marks_keep_the_highest_replay_number() -> None:
    table: dict[bytes, Any] = {}
    ledger = Ledger(table, clock=lambda: 7.0)
    ledger.mark_in_flight("e1", "sim", replay=3)
    assert table[b"e1"] == {"s": "in_flight", "p": "sim", "m": None, "t": 7.0, "r": 3}
    ledger.mark_ambiguous("e1", "sim", replay=0)  # a copy without the replay header
    assert ledger.get("e1") == Entry("ambiguous", "sim", None, 7.0, 3)
    ledger.mark_sent("e1", "sim", "m")
    assert ledger.get("e1") == Entry("accepted", "sim", "m", 7.0, 3)
    ledger.mark_failed("e2", None)
    assert "r" not in table[b"e2"]  # entries of emails never replayed stay as they were
