"""The sent-ledger's entries, field by field, and the edges of its expiry (written to
kill the mutants scripts/mutation found surviving in app/tables/ledger.py)."""

from __future__ import annotations

from typing import Any

import pytest

from app.tables.ledger import Entry, Ledger


def at(now: list[float]) -> Ledger:
    return Ledger({}, horizon_s=100.0, clock=lambda: now[0])


async def test_every_mark_records_provider_message_id_and_time() -> None:
    now = [5000.0]
    ledger = at(now)
    ledger.mark_in_flight("a", "sim-a")
    assert ledger.table[b"a"] == {"s": "in_flight", "p": "sim-a", "m": None, "t": 5000.0}
    assert ledger.get("a") == Entry("in_flight", "sim-a", None, 5000.0)
    now[0] = 5001.0
    ledger.mark_sent("a", "sim-b", "m-1")
    assert ledger.table[b"a"] == {"s": "accepted", "p": "sim-b", "m": "m-1", "t": 5001.0}
    now[0] = 5002.0
    await ledger.confirm(["a"])
    assert ledger.table[b"a"] == {"s": "sent", "p": "sim-b", "m": "m-1", "t": 5001.0}
    ledger.mark_failed("b", "sim-c")
    assert ledger.table[b"b"] == {"s": "failed", "p": "sim-c", "m": None, "t": 5002.0}
    ledger.mark_failed("c", None)
    assert ledger.get("c") == Entry("failed", None, None, 5002.0)


def test_an_entry_without_a_time_reads_as_time_zero() -> None:
    ledger = at([10.0])
    ledger.table[b"old"] = {"s": "sent", "p": "sim", "m": "m"}
    assert ledger.get("old") == Entry("sent", "sim", "m", 0.0)
    assert ledger.get("missing") is None
    ledger.table[b"empty"] = {}
    assert ledger.get("empty") is None


@pytest.mark.parametrize(
    ("now", "kept"),
    [
        (50.0, True),  # time 0 is inside a horizon that reaches back before 0
        (100.5, False),  # ... and outside once the horizon starts after 0
    ],
)
def test_an_entry_without_a_time_expires_as_time_zero(now: float, kept: bool) -> None:
    ledger = at([now])
    ledger.table[b"old"] = {"s": "sent"}
    assert ledger.expire() == (0 if kept else 1)
    assert (b"old" in ledger.table) is kept


def test_an_entry_exactly_one_horizon_old_is_expired() -> None:
    now = [1000.0]
    ledger = at(now)
    ledger.table[b"edge"] = {"s": "sent", "t": 900.0}
    ledger.table[b"inside"] = {"s": "sent", "t": 900.001}
    assert ledger.expire() == 1
    assert set(ledger.table) == {b"inside"}


@pytest.mark.parametrize("bad", [None, "soon", [], {"t": 1}, float("nan"), float("-inf")])
def test_garbage_times_expire(bad: Any) -> None:
    ledger = at([1000.0])
    ledger.table[b"x"] = {"s": "sent", "t": bad}
    assert ledger.expire() == 1 and ledger.table == {}


def test_a_future_time_is_kept() -> None:
    ledger = at([1000.0])
    ledger.table[b"x"] = {"s": "sent", "t": float("inf")}
    assert ledger.expire() == 0


def test_the_default_sweep_deletes_at_most_ten_thousand() -> None:
    ledger = at([1_000_000.0])
    for i in range(10_001):
        ledger.table[str(i).encode()] = {"s": "sent", "t": 1.0}
    assert ledger.expire() == 10_000
    assert len(ledger.table) == 1
    assert ledger.expire() == 1
