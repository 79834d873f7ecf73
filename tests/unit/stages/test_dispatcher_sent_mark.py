"""The Dispatcher acks a message (its offset may then be committed) only once the
``sent`` mark of its email is in Kafka, after its ``email.sent`` record: a crash
in between redelivers it as ``in_flight`` (resent with its key, or parked), never
as an email the ledger forgot it sent."""

from __future__ import annotations

import asyncio
from typing import Any

from app.dispatcher import Dispatcher, Work
from app.stages.common import Emission, Origin
from app.tables.ledger import Ledger
from tests.plugins.dispatcher import Result
from tests.plugins.ledger import AckedTable


class Group:
    def owns(self, tp: Any, generation: int | None) -> bool:
        return True


def setup(
    table: AckedTable, fail_deliver: bool = False
) -> tuple[Dispatcher, list[str], list[BaseException]]:
    ledger = Ledger(table, ack_timeout_s=0.2)
    events: list[str] = []
    fatal: list[BaseException] = []

    async def handle(payload: bytes, origin: Origin, lane: str) -> Emission:
        event_id = payload.decode()
        ledger.mark_in_flight(event_id, "p")
        table.ack(event_id.encode())
        ledger.mark_sent(event_id, "p", "m")  # "accepted" (the stage awaits its ack)
        table.ack(event_id.encode())
        return Emission("sent", payload, Result(event_id))

    async def deliver(emission: Emission) -> None:
        await asyncio.sleep(0)
        if fail_deliver:
            raise RuntimeError("produce failed")
        events.append("email.sent acked")

    d = Dispatcher(
        handle=handle,
        deliver=deliver,
        membership=Group(),
        lanes=("normal",),
        confirm=ledger.confirm,
        on_fatal=fatal.append,
    )
    return d, events, fatal


def work(events: list[str]) -> Work:
    return Work(
        tp=("lane", 0),
        offset=7,
        generation=None,
        value=b"e1",
        origin=Origin(topic="lane", partition=0, offset=7),
        release=lambda: events.append("released"),
    )


async def spin(n: int = 30) -> None:
    for _ in range(n):
        await asyncio.sleep(0)


async def test_the_message_is_acked_only_after_its_sent_mark_was_acked() -> None:
    table = AckedTable()
    d, events, fatal = setup(table)
    assert await d.admit("normal", work(events))
    await spin()
    # email.sent is acked, the mark written after it, and not acked yet: no release
    assert events == ["email.sent acked"]
    assert table.writes == [(b"e1", "in_flight"), (b"e1", "accepted"), (b"e1", "sent")]
    table.ack(b"e1")
    await spin()
    assert events == ["email.sent acked", "released"] and not fatal


async def test_a_sent_mark_kafka_refused_is_never_acked() -> None:
    table = AckedTable()
    d, events, fatal = setup(table)
    assert await d.admit("normal", work(events))
    await spin()
    table.fail(b"e1")
    await spin()
    assert events == ["email.sent acked"]  # not released: handled again after a restart
    assert len(fatal) == 1 and "e1" in str(fatal[0])


async def test_no_sent_mark_before_its_email_sent_record_was_acked() -> None:
    table = AckedTable(auto=True)
    d, events, fatal = setup(table, fail_deliver=True)
    assert await d.admit("normal", work(events))
    await spin()
    assert [state for _, state in table.writes] == ["in_flight", "accepted"]
    assert events == [] and len(fatal) == 1
