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

    def __init__(self, events: list[Event], hang: bool = False) -> None:
        self.events = events
        self.hang = hang  # after the batch, wait for the next one (until cancelled)
        self.generators: list[Any] = []

    def take_events(self, max_: int, within: float) -> Any:
        gen = self._take()
        self.generators.append(gen)
        return gen

    async def _take(self) -> Any:
        try:
            yield list(self.events)
            if self.hang:
                await asyncio.Event().wait()
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

    class Exited(Exception):
        pass

    exits: list[int] = []

    def fake_exit(code: int) -> None:
        exits.append(code)
        raise Exited(code)

    monkeypatch.setattr(delivery, "deliver", deliver_forever)
    monkeypatch.setattr(delivery, "STOP_WAIT_S", 0.05)
    monkeypatch.setattr(delivery.os, "_exit", fake_exit)
    monkeypatch.setattr(delivery.logging, "shutdown", lambda: None)
    fun = app.agents[stage].fun
    stream = TakeStream(_events(topic, values, consumer), hang=True)
    task = asyncio.ensure_future(fun(stream))
    await asyncio.wait_for(entered.wait(), 10)
    task.cancel()  # the outputs' acks are still missing after STOP_WAIT_S: exit
    with pytest.raises(Exited):
        await task
    await stream.close()  # faust's finally runs: its acks must not be the last
    assert consumer.acked == []  # not one offset may be committed: handled again
    assert exits == [70]


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


class BatchesStream(TakeStream):
    """Several batches, each acked by faust's ``finally`` when the loop moves on."""

    def __init__(self, batches: list[list[Event]]) -> None:
        super().__init__([e for batch in batches for e in batch])
        self.batches = batches

    async def _take(self) -> Any:
        for batch in self.batches:
            try:
                yield list(batch)
            finally:
                for e in batch:
                    e.ack()


@pytest.mark.parametrize("in_flight", [1, 2])
async def test_the_next_batch_is_handled_while_the_last_awaits_its_acks(
    in_flight: int, registry: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Up to ``stage_batches_in_flight`` batches await their acks at once; each batch's
    input is acked only once its own outputs were acknowledged, in any order."""
    monkeypatch.setenv("SPILLWAY_STAGE_BATCHES_IN_FLIGHT", str(in_flight))
    app, _ = make_app("render", registry)
    consumer = Consumer()
    events = _events("email.raw-events", [b"not an event"] * 6, consumer)
    batches = [events[0:2], events[2:4], events[4:6]]
    acks: list[asyncio.Future[None]] = []
    started = asyncio.Event()

    async def deliver(rt: Any, emissions: list[Any], *, stage: str) -> None:
        ack: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        acks.append(ack)
        started.set()
        await ack

    async def deliveries(n: int) -> None:
        await _until(lambda: len(acks) >= n)

    monkeypatch.setattr(delivery, "deliver", deliver)
    task = asyncio.ensure_future(app.agents["render"].fun(BatchesStream(batches)))
    await asyncio.wait_for(deliveries(in_flight), 5)
    for _ in range(100):
        await asyncio.sleep(0)
    assert len(acks) == in_flight  # the limit: no further batch handled meanwhile
    assert consumer.acked == []  # no input acked before its outputs
    if in_flight == 2:
        acks[1].set_result(None)  # the second batch's outputs first
        for _ in range(100):
            await asyncio.sleep(0)
        assert len(acks) == 2  # the first batch still holds its place
        assert consumer.acked == []  # and nothing is acked before the stream moves on
    acks[0].set_result(None)
    await asyncio.wait_for(deliveries(in_flight + 1), 5)
    await asyncio.wait_for(_until(lambda: {0, 1} <= set(consumer.acked)), 5)
    assert not {4, 5} & set(consumer.acked)  # the third batch awaits its acks
    for ack in acks[1:]:
        if not ack.done():
            ack.set_result(None)
    await asyncio.wait_for(deliveries(3), 5)
    if not acks[2].done():
        acks[2].set_result(None)
    await asyncio.wait_for(task, 5)
    assert sorted(consumer.acked) == [0, 1, 2, 3, 4, 5]


async def _until(check: Any, turns: int = 10_000) -> None:
    """Wait for ``check()`` for at most ``turns`` event-loop turns (no clock)."""
    for _ in range(turns):
        if check():
            return
        await asyncio.sleep(0)
    raise AssertionError("the condition never came true")
