"""A render or route worker stopped mid-batch acks none of the batch.

Faust's ``take_events`` acks every event of a batch in its ``finally``, so also when
the agent is cancelled by a stop before its outputs were produced; the stop's commit
then passed records that never reached the next topic (chaos ``term``: 101 of 10,000
missing). The fake stream below does what faust's does; the messages are Faust's own
(their refcount decides whether the ack is the last one, which lets the offset be
committed: ``Stream.ack`` then reports the message out).
"""

from __future__ import annotations

import asyncio
from typing import Any

import pytest
from faust.types.tuples import Message

from app.agents import delivery
from tests.plugins.agents import make_app


class Consumer:
    def __init__(self) -> None:
        self.acked: list[int] = []  # offsets whose last ack came: committable


class Event:
    def __init__(self, message: Message, value: bytes, consumer: Consumer) -> None:
        self.message, self.value, self.key = message, value, message.key
        message.incref()  # the conductor's reference for the one stream reading it
        self._consumer = consumer

    def ack(self) -> bool:
        last = self.message.ack(self._consumer)  # type: ignore[arg-type]
        if last:
            self._consumer.acked.append(self.message.offset)
        return last


class TakeStream:
    """faust Stream.take_events' contract: yield a batch, ack it in ``finally``."""

    def __init__(self, events: list[Event]) -> None:
        self.events = events
        self.generators: list[Any] = []

    def take_events(self, max_: int, within: float) -> Any:
        gen = self._take()
        self.generators.append(gen)
        return gen

    async def _take(self) -> Any:
        try:
            yield list(self.events)
        finally:
            for e in self.events:
                e.ack()

    async def close(self) -> None:
        """What the event loop's async generator finalizer does once the agent is gone."""
        for gen in self.generators:
            await gen.aclose()


def _events(topic: str, values: list[bytes], consumer: Consumer) -> list[Event]:
    return [
        Event(
            Message(topic, 0, offset, 0.0, 0, [], f"k{offset}".encode(), v, None),
            v,
            consumer,
        )
        for offset, v in enumerate(values)
    ]


def _values(stage: str, registry: Any) -> tuple[str, list[bytes]]:
    if stage == "render":
        return "email.raw-events", [b"not an event", b"{}"]
    from tests.plugins.factories import rendered_email

    app, _ = make_app("route", registry)
    serde = app.spillway.serde  # type: ignore[attr-defined]
    return "email.rendered", [
        serde.encode("email.rendered", rendered_email(event_id=f"r{i}")) for i in range(2)
    ]


@pytest.mark.parametrize("stage", ["render", "route"])
async def test_a_stop_before_the_outputs_are_acked_acks_nothing(
    stage: str, registry: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    app, _ = make_app(stage, registry)
    topic, values = _values(stage, registry)
    consumer = Consumer()
    entered = asyncio.Event()

    async def deliver_forever(rt: Any, emissions: list[Any], *, stage: str) -> None:
        entered.set()
        await asyncio.Event().wait()  # the outputs' acks never come before the stop

    monkeypatch.setattr(delivery, "deliver", deliver_forever)
    fun = app.agents[stage].fun
    stream = TakeStream(_events(topic, values, consumer))
    task = asyncio.ensure_future(fun(stream))
    await asyncio.wait_for(entered.wait(), 10)
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    await stream.close()  # faust's finally runs: its acks must not be the last
    assert consumer.acked == []  # not one offset may be committed: handled again


@pytest.mark.parametrize("stage", ["render", "route"])
async def test_a_delivered_batch_is_acked_once(
    stage: str, registry: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    app, _ = make_app(stage, registry)
    topic, values = _values(stage, registry)
    consumer = Consumer()
    delivered: list[int] = []

    async def deliver(rt: Any, emissions: list[Any], *, stage: str) -> None:
        assert consumer.acked == []  # nothing acked before its outputs are
        delivered.append(len(emissions))

    monkeypatch.setattr(delivery, "deliver", deliver)
    await app.agents[stage].fun(TakeStream(_events(topic, values, consumer)))
    assert delivered == [2]
    assert consumer.acked == [0, 1]
