"""The dispatch Outbox: the outputs of many messages go out as one produce batch with
one ``sent``-mark confirm, and each message learns only once both were acknowledged
by Kafka; a failed batch fails every message of it (none is acked)."""

from __future__ import annotations

import asyncio
from dataclasses import dataclass, field
from typing import Any

import pytest

from app.dispatcher import Dispatcher, Outbox
from app.stages.common import Emission, Origin
from app.tables.ledger import Ledger, LedgerWriteError
from tests.plugins.dispatcher import Result, until, work
from tests.plugins.ledger import AckedTable


@dataclass
class Kafka:
    """Produces a batch; holds it until the test opens ``gate`` (when not open)."""

    batches: list[list[Emission]] = field(default_factory=list)
    acked: list[str] = field(default_factory=list)
    gate: asyncio.Event = field(default_factory=asyncio.Event)
    fail: BaseException | None = None

    async def deliver(self, emissions: list[Emission]) -> None:
        self.batches.append(list(emissions))
        await self.gate.wait()
        if self.fail is not None:
            raise self.fail
        self.acked += [e.value.event_id for e in emissions]


def sent(event_id: str) -> Emission:
    return Emission("sent", event_id.encode(), Result(event_id))


def other(event_id: str) -> Emission:
    return Emission("dead", event_id.encode(), Result(event_id))


def outbox(kafka: Kafka, ledger: Ledger, **kw: Any) -> Outbox:
    return Outbox(kafka.deliver, ledger.confirm, sent_topic="sent", **kw)


def accepted(table: AckedTable, ledger: Ledger, ids: list[str]) -> None:
    for event_id in ids:
        ledger.mark_sent(event_id, "p", "m")
        table.ack(event_id.encode())


async def test_one_produce_batch_and_one_confirm_for_many_messages() -> None:
    table = AckedTable()
    ledger = Ledger(table, ack_timeout_s=5)
    kafka = Kafka()
    confirms: list[list[str]] = []

    async def confirm(ids: Any) -> None:
        ids = list(ids)
        confirms.append(ids)
        await ledger.confirm(ids)

    box = Outbox(kafka.deliver, confirm, sent_topic="sent", size=64, within_s=0.01)
    ids = [f"e{i}" for i in range(5)]
    accepted(table, ledger, ids)
    puts = [asyncio.ensure_future(box.put(sent(i))) for i in ids]
    puts.append(asyncio.ensure_future(box.put(other("x"))))
    await until(lambda: kafka.batches)
    assert [len(b) for b in kafka.batches] == [6]
    await asyncio.sleep(0.02)
    # produced, not acked: no sent mark written, no put returned
    assert confirms == [] and [s for _, s in table.writes].count("sent") == 0
    assert not any(p.done() for p in puts)
    kafka.gate.set()
    await until(lambda: confirms)
    assert confirms == [ids]  # the SendResults only, in one call
    await asyncio.sleep(0.01)
    assert not any(p.done() for p in puts)  # the marks are written, not acked
    for i in ids[:-1]:
        table.ack(i.encode())
    await asyncio.sleep(0.01)
    assert not any(p.done() for p in puts)  # one mark still not acked: no one returns
    table.ack(ids[-1].encode())
    await asyncio.wait_for(asyncio.gather(*puts), 2)
    assert [ledger.get(i).state for i in ids] == ["sent"] * 5  # type: ignore[union-attr]
    assert box.batches == 1 and box.outputs == 6


async def test_a_batch_is_cut_at_its_size() -> None:
    kafka = Kafka()
    kafka.gate.set()
    box = outbox(kafka, Ledger({}), size=3, within_s=0.05, in_flight=8)
    await asyncio.wait_for(asyncio.gather(*(box.put(other(f"e{i}")) for i in range(7))), 2)
    assert [len(b) for b in kafka.batches] == [3, 3, 1]
    assert sorted(kafka.acked) == sorted(f"e{i}" for i in range(7))


async def test_a_batch_waits_its_window_for_more_and_goes_once_full() -> None:
    kafka = Kafka()
    kafka.gate.set()
    box = outbox(kafka, Ledger({}), size=2, within_s=5.0)
    first = asyncio.ensure_future(box.put(other("a")))
    for _ in range(10):
        await asyncio.sleep(0)
    assert kafka.batches == []  # within its window: waits for more
    second = asyncio.ensure_future(box.put(other("b")))
    await asyncio.wait_for(asyncio.gather(first, second), 2)  # full: cut at once
    assert [[e.value.event_id for e in b] for b in kafka.batches] == [["a", "b"]]


async def test_outputs_arriving_while_batches_await_acks_form_the_next_batch() -> None:
    kafka = Kafka()
    box = outbox(kafka, Ledger({}), size=100, within_s=0, in_flight=1)
    first = asyncio.ensure_future(box.put(other("a")))
    await until(lambda: kafka.batches)
    rest = [asyncio.ensure_future(box.put(other(f"b{i}"))) for i in range(4)]
    await asyncio.sleep(0.01)
    assert len(kafka.batches) == 1  # the one batch in flight holds the only slot
    kafka.gate.set()
    await asyncio.wait_for(asyncio.gather(first, *rest), 2)
    assert [len(b) for b in kafka.batches] == [1, 4]


async def test_at_most_in_flight_batches_await_their_acks() -> None:
    kafka = Kafka()
    box = outbox(kafka, Ledger({}), size=1, within_s=0, in_flight=2)
    puts = [asyncio.ensure_future(box.put(other(f"e{i}"))) for i in range(5)]
    await until(lambda: len(kafka.batches) == 2)
    await asyncio.sleep(0.02)
    assert len(kafka.batches) == 2
    kafka.gate.set()
    await asyncio.wait_for(asyncio.gather(*puts), 2)
    assert len(kafka.batches) == 5


async def test_a_failed_produce_fails_every_message_of_its_batch_and_writes_no_mark() -> None:
    table = AckedTable(auto=True)
    ledger = Ledger(table)
    kafka = Kafka(fail=RuntimeError("broker gone"))
    box = outbox(kafka, ledger, size=10, within_s=0.01)
    accepted(table, ledger, ["e1", "e2"])
    puts = [asyncio.ensure_future(box.put(sent(i))) for i in ("e1", "e2")]
    await until(lambda: kafka.batches)
    kafka.gate.set()
    results = await asyncio.gather(*puts, return_exceptions=True)
    assert all(isinstance(r, RuntimeError) for r in results)
    assert [s for _, s in table.writes] == ["accepted", "accepted"]  # no sent mark
    # the next batch goes out on its own
    kafka.fail = None
    accepted(table, ledger, ["e3"])
    await asyncio.wait_for(box.put(sent("e3")), 2)
    assert ledger.get("e3").state == "sent"  # type: ignore[union-attr]


async def test_a_mark_kafka_refused_fails_the_whole_batch() -> None:
    table = AckedTable()
    ledger = Ledger(table, ack_timeout_s=5)
    kafka = Kafka()
    kafka.gate.set()
    box = outbox(kafka, ledger, size=10, within_s=0.01)
    accepted(table, ledger, ["e1", "e2"])
    puts = [asyncio.ensure_future(box.put(sent(i))) for i in ("e1", "e2")]
    await until(lambda: [s for _, s in table.writes].count("sent") == 2)
    table.ack(b"e1")
    table.fail(b"e2")
    results = await asyncio.gather(*puts, return_exceptions=True)
    assert all(isinstance(r, LedgerWriteError) and "e2" in str(r) for r in results)


async def test_a_message_cancelled_before_its_batch_was_cut_is_left_out() -> None:
    kafka = Kafka()
    kafka.gate.set()
    box = outbox(kafka, Ledger({}), size=10, within_s=0.05)
    keep = asyncio.ensure_future(box.put(other("keep")))
    drop = asyncio.ensure_future(box.put(other("drop")))
    await asyncio.sleep(0)
    drop.cancel()
    await asyncio.wait_for(keep, 2)
    assert [[e.value.event_id for e in b] for b in kafka.batches] == [["keep"]]
    assert drop.cancelled()


async def test_the_dispatcher_acks_a_message_only_after_its_batch_and_marks_were_acked() -> None:
    table = AckedTable()
    ledger = Ledger(table, ack_timeout_s=5)
    kafka = Kafka()

    async def handle(payload: bytes, origin: Origin, lane: str) -> Emission:
        event_id = payload.decode()
        ledger.mark_in_flight(event_id, "p")
        ledger.mark_sent(event_id, "p", "m")
        table.ack(event_id.encode())
        return sent(event_id)

    async def per_message(emission: Emission) -> None:
        raise AssertionError("the outbox replaces per-message delivery")

    fatal: list[BaseException] = []
    d = Dispatcher(
        handle=handle,
        deliver=per_message,
        membership=type("G", (), {"owns": lambda self, tp, g: True})(),
        lanes=("normal",),
        confirm=ledger.confirm,
        on_fatal=fatal.append,
        outbox=outbox(kafka, ledger, size=8, within_s=0.01),
    )
    acks: list[tuple[Any, int]] = []
    for offset in range(3):
        assert await d.admit("normal", work(("lane", 0), offset, acks, generation=None))
    await until(lambda: kafka.batches)
    assert [len(b) for b in kafka.batches] == [3]
    kafka.gate.set()
    await until(lambda: [s for _, s in table.writes].count("sent") == 3)
    await asyncio.sleep(0.01)
    assert acks == []  # the sent marks are not acked yet
    for offset in range(3):
        table.ack(f"e0-{offset}".encode())
    await until(lambda: len(acks) == 3)
    assert sorted(acks) == [(("lane", 0), o) for o in range(3)] and not fatal


# -- Ledger.settled_all ---------------------------------------------------------------


async def test_settled_all_returns_once_every_write_is_acked() -> None:
    table = AckedTable()
    ledger = Ledger(table, ack_timeout_s=5)
    for i in range(3):
        ledger.mark_sent(f"e{i}", "p", "m")
    waiting = asyncio.ensure_future(ledger.settled_all(["e0", "e1", "e2"]))
    table.ack(b"e0")
    table.ack(b"e2")
    await asyncio.sleep(0.01)
    assert not waiting.done()
    table.ack(b"e1")
    await asyncio.wait_for(waiting, 2)


@pytest.mark.parametrize("outcome", ["late", "dropped", "failed"])
async def test_settled_all_names_the_write_that_did_not_make_it(outcome: str) -> None:
    table = AckedTable()
    ledger = Ledger(table, ack_timeout_s=0.05)
    for i in range(3):
        ledger.mark_sent(f"e{i}", "p", "m")
    table.ack(b"e0")
    table.ack(b"e2")
    if outcome == "dropped":
        table.futures[b"e1"].cancel()
    elif outcome == "failed":
        table.fail(b"e1")
    with pytest.raises(LedgerWriteError, match="e1") as err:
        await ledger.settled_all(["e0", "e1", "e2"])
    expected = {"late": "not acknowledged", "dropped": "dropped", "failed": "failed"}[outcome]
    assert expected in str(err.value)
    assert not table.futures[b"e1"].done() or outcome != "late"  # never cancelled by us


async def test_settled_all_without_pending_writes_or_a_plain_table_returns() -> None:
    await Ledger({}).settled_all(["a", "b"])
    await Ledger(AckedTable()).settled_all([])
    await Ledger(AckedTable()).settled_all(["never-written"])


def dispatcher_with(box: Outbox, fatal: list[BaseException]) -> Dispatcher:
    async def handle(payload: bytes, origin: Origin, lane: str) -> Emission:
        return other(payload.decode())

    async def per_message(emission: Emission) -> None:
        raise AssertionError("the outbox replaces per-message delivery")

    return Dispatcher(
        handle=handle,
        deliver=per_message,
        membership=type("G", (), {"owns": lambda self, tp, g: True})(),
        lanes=("normal",),
        on_fatal=fatal.append,
        outbox=box,
    )


async def test_an_output_dropped_under_the_batch_is_a_failure_not_a_revocation() -> None:
    """A produce future cancelled by the client (Faust dropped the record) while no
    one stops the worker: every message of the batch goes to on_fatal (the worker
    exits; nothing is acked), none is silently taken for revoked."""

    async def dropped(emissions: list[Emission]) -> None:
        future = asyncio.get_running_loop().create_future()
        future.cancel()
        await future

    fatal: list[BaseException] = []
    d = dispatcher_with(Outbox(dropped, lambda ids: None, size=8, within_s=0.01), fatal)
    acks: list[tuple[Any, int]] = []
    for offset in range(3):
        assert await d.admit("normal", work(("lane", 0), offset, acks, generation=None))
    await until(lambda: len(fatal) == 3)
    assert acks == [] and d.stats.abandoned == 0
    assert all("dropped" in str(f) for f in fatal)


async def test_stop_leaves_no_outbox_task_behind() -> None:
    kafka = Kafka()  # never acks: the batch is still out at the stop
    box = outbox(kafka, Ledger({}), size=8, within_s=0.01)
    fatal: list[BaseException] = []
    d = dispatcher_with(box, fatal)
    acks: list[tuple[Any, int]] = []
    for offset in range(2):
        assert await d.admit("normal", work(("lane", 0), offset, acks, generation=None))
    await until(lambda: kafka.batches)
    await asyncio.wait_for(d.stop(0.05), 3)
    pending = [t for t in asyncio.all_tasks() if t is not asyncio.current_task()]
    assert pending == [] and acks == [] and not fatal


async def test_the_next_output_after_an_all_cancelled_window_starts_a_new_batch() -> None:
    kafka = Kafka()
    kafka.gate.set()
    box = outbox(kafka, Ledger({}), size=8, within_s=0.01)
    gone = [asyncio.ensure_future(box.put(other(f"g{i}"))) for i in range(3)]
    await asyncio.sleep(0)
    for g in gone:
        g.cancel()
    await until(lambda: box._collector is not None and box._collector.done())
    await asyncio.wait_for(box.put(other("next")), 2)
    assert [[e.value.event_id for e in b] for b in kafka.batches] == [["next"]]
