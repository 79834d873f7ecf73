"""The sent-ledger's entries, expiry and acknowledgements checked exactly (issue 17 pt 5:
survivors of the mutation run of app/tables/ledger.py)."""

from __future__ import annotations

import asyncio
import math
from typing import Any

import pytest

from app.tables.ledger import Entry, Ledger, LedgerWriteError
from tests.plugins.ledger import AckedTable

NOW = 1_000_000.0
HORIZON = 100.0


def ledger(table: Any = None, **kw: Any) -> Ledger:
    return Ledger({} if table is None else table, horizon_s=HORIZON, clock=lambda: NOW, **kw)


# -- entries --------------------------------------------------------------------------------


def test_an_entry_reads_every_field_and_defaults_the_missing_ones() -> None:
    lg = ledger({b"a": {"s": "failed", "p": "p1", "m": "m1", "t": 5.0, "r": 3},
                 b"b": {"s": "in_flight"}, b"c": {}})  # fmt: skip
    assert lg.get("a") == Entry("failed", "p1", "m1", 5.0, 3)
    assert lg.get("b") == Entry("in_flight", None, None, 0.0, 0)
    assert lg.get("c") is None  # an empty value is no entry
    assert lg.get("nobody") is None


def test_marks_write_state_provider_id_time_and_replay_only_when_set() -> None:
    table: dict[bytes, Any] = {}
    lg = ledger(table)
    lg.mark_in_flight("e", "p1")
    assert table[b"e"] == {"s": "in_flight", "p": "p1", "m": None, "t": NOW}
    lg.mark_sent("e", "p1", "m-9")
    assert table[b"e"] == {"s": "accepted", "p": "p1", "m": "m-9", "t": NOW}
    lg.mark_failed("f", None)
    assert table[b"f"] == {"s": "failed", "p": None, "m": None, "t": NOW}
    lg.mark_ambiguous("g", "p2", replay=2)
    assert table[b"g"] == {"s": "ambiguous", "p": "p2", "m": None, "t": NOW, "r": 2}


def test_a_mark_never_lowers_the_replay_number() -> None:
    lg = ledger()
    lg.mark_in_flight("e", "p", replay=4)
    lg.mark_failed("e", "p")  # a retry copy carries no number
    assert lg.get("e") == Entry("failed", "p", None, NOW, 4)
    lg.mark_in_flight("e", "p", replay=2)
    assert lg.get("e").replay == 4  # type: ignore[union-attr]
    lg.mark_ambiguous("e", "p", replay=6)
    assert lg.get("e").replay == 6  # type: ignore[union-attr]


def test_the_guard_runs_before_anything_is_written() -> None:
    table: dict[bytes, Any] = {}
    calls: list[str] = []

    def guard() -> None:
        calls.append("guard")
        raise RuntimeError("fenced")

    lg = ledger(table, guard=guard)
    with pytest.raises(RuntimeError, match="fenced"):
        lg.mark_in_flight("e", "p")
    assert calls == ["guard"] and table == {}
    ledger(table, guard=lambda: None).mark_in_flight("e", "p")
    assert table[b"e"]["s"] == "in_flight"


async def test_confirm_turns_accepted_into_sent_and_keeps_the_rest() -> None:
    table: dict[bytes, Any] = {}
    lg = ledger(table)
    lg.mark_in_flight("e", "p", replay=2)
    lg.mark_sent("e", "p", "m-1")
    lg.mark_failed("f", "p")
    await lg.confirm(["e", "f", "nobody"])
    assert lg.get("e") == Entry("sent", "p", "m-1", NOW, 2)
    assert lg.get("f") == Entry("failed", "p", None, NOW, 0)  # not accepted: unchanged
    assert b"nobody" not in table


async def test_confirm_returns_only_once_every_mark_is_acked() -> None:
    table = AckedTable()
    lg = ledger(table)
    lg.mark_sent("a", "p", "m-a")
    lg.mark_sent("b", "p", "m-b")
    table.ack(b"a")
    table.ack(b"b")
    task = asyncio.create_task(lg.confirm(["a", "b"]))
    for _ in range(5):
        await asyncio.sleep(0)
    assert not task.done()  # the two "sent" writes are not acked yet
    table.ack(b"a")
    for _ in range(5):
        await asyncio.sleep(0)
    assert not task.done()
    table.ack(b"b")
    await asyncio.wait_for(task, 5)
    assert [w for w in table.writes if w[1] == "sent"] == [(b"a", "sent"), (b"b", "sent")]


# -- settled ------------------------------------------------------------------------------


async def test_settled_returns_at_once_for_a_plain_mapping_or_an_acked_write() -> None:
    await asyncio.wait_for(ledger().settled("e"), 5)
    table = AckedTable(auto=True)
    lg = ledger(table)
    lg.mark_failed("e", "p")
    await asyncio.wait_for(lg.settled("e"), 5)


async def test_settled_raises_when_the_write_failed() -> None:
    table = AckedTable()
    lg = ledger(table)
    lg.mark_failed("e", "p")
    table.fail(b"e", RuntimeError("broker refused"))
    with pytest.raises(LedgerWriteError) as exc:
        await lg.settled("e")
    assert str(exc.value) == "ledger write of e failed: RuntimeError('broker refused')"
    assert isinstance(exc.value.__cause__, RuntimeError)


async def test_settled_raises_when_the_ack_does_not_come_in_time() -> None:
    table = AckedTable()
    lg = ledger(table, ack_timeout_s=0.01)
    lg.mark_failed("e", "p")
    with pytest.raises(LedgerWriteError) as exc:
        await lg.settled("e")
    assert str(exc.value) == "ledger write of e not acknowledged within 0 s"
    assert not table.futures[b"e"].cancelled()  # Faust's own future is left alone
    table.ack(b"e")
    await asyncio.wait_for(lg.settled("e"), 5)


class DroppingTable(dict[bytes, Any]):
    """Faust cancelled the record's future (dropped it, e.g. on a producer reset)."""

    def written(self, key: bytes) -> asyncio.Future[None]:
        future: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        future.cancel()
        return future


async def test_settled_raises_when_the_record_was_dropped() -> None:
    lg = ledger(DroppingTable())
    lg.mark_failed("e", "p")
    with pytest.raises(LedgerWriteError) as exc:
        await lg.settled("e")
    assert str(exc.value) == "ledger write of e was dropped"


async def test_a_cancelled_waiter_stays_cancelled() -> None:
    table = AckedTable()
    lg = ledger(table)
    lg.mark_failed("e", "p")
    task = asyncio.create_task(lg.settled("e"))
    await asyncio.sleep(0)
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    assert not table.futures[b"e"].done()  # shielded: the write itself goes on


# -- expiry -------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("raw", "expired"),
    [
        ({"s": "sent", "t": NOW}, False),
        ({"s": "sent", "t": NOW - HORIZON + 0.5}, False),
        ({"s": "sent", "t": NOW - HORIZON}, True),  # exactly the horizon: gone
        ({"s": "sent", "t": NOW - HORIZON - 1}, True),
        ({"s": "sent"}, True),  # no time
        ({"s": "sent", "t": None}, True),
        ({"s": "sent", "t": "yesterday"}, True),
        ({"s": "sent", "t": math.nan}, True),
        ({"s": "sent", "t": str(NOW)}, False),  # a number as text still reads
        ("garbage", True),
    ],
)
def test_what_counts_as_expired(raw: Any, expired: bool) -> None:
    table = {b"k": raw}
    assert ledger(table).expire() == (1 if expired else 0)
    assert (b"k" not in table) is expired


def test_expire_works_through_the_keys_within_its_budget_and_starts_over() -> None:
    old = {"s": "sent", "t": 0.0}
    table: dict[bytes, Any] = {f"k{i}".encode(): dict(old) for i in range(5)}
    table[b"new"] = {"s": "sent", "t": NOW}
    lg = ledger(table)
    assert lg.expire(budget=2) == 2
    assert set(table) == {b"k2", b"k3", b"k4", b"new"}  # in key order, from the start
    assert lg.expire(budget=2) == 2
    assert set(table) == {b"k4", b"new"}
    assert lg.expire(budget=10) == 1  # the rest of the pass, then it ends
    table[b"late"] = dict(old)  # written after the pass began
    assert lg.expire(budget=10) == 1  # a new pass sees it
    assert set(table) == {b"new"}
    assert lg.expire(budget=0) == 0


def test_expire_skips_a_key_deleted_during_the_pass() -> None:
    old = {"s": "sent", "t": 0.0}
    table: dict[bytes, Any] = {b"a": dict(old), b"b": dict(old), b"c": dict(old)}
    lg = ledger(table)
    assert lg.expire(budget=1) == 1
    del table[b"b"]  # gone meanwhile (another path deleted it)
    assert lg.expire(budget=5) == 1
    assert table == {}


def test_a_parking_mark_without_a_replay_number_records_none() -> None:
    table: dict[bytes, Any] = {}
    lg = ledger(table)
    lg.mark_ambiguous("e", "p")
    assert table[b"e"] == {"s": "ambiguous", "p": "p", "m": None, "t": NOW}
    assert lg.get("e") == Entry("ambiguous", "p", None, NOW, 0)


def test_the_table_is_declared_key_hashed_with_its_states(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    from app.tables import ledger as ledger_module

    calls: list[tuple[Any, ...]] = []

    def declare(app: Any, name: str, partitions: int, *, help: str, key_hashed: bool) -> str:
        calls.append((app, name, partitions, help, key_hashed))
        return "table"

    monkeypatch.setattr(ledger_module, "declare_bytes_table", declare)
    assert ledger_module.declare_table("app", 12) == "table"
    assert calls == [
        (
            "app",
            "sent-ledger",
            12,
            "Sent-ledger: event id -> in_flight | accepted | sent | failed | ambiguous, for "
            "effectively-once sends.",
            True,
        )
    ]
