"""The analyser waits until the consumer's metadata knows its changelog's partitions
(Faust's PartitionsMismatch "changelog has 0 partitions" right after creating it),
asking for a refresh through ``app.faust_adapter.refresh_metadata`` (the aiokafka
client of Faust's consumer thread, whose shape tests/unit/test_faust_adapter.py pins)."""

from __future__ import annotations

import asyncio
from types import SimpleNamespace
from typing import Any

from app.agents.deadletters import changelog_known


class FakeClient:
    def __init__(self, consumer: FakeConsumer) -> None:
        self.consumer = consumer
        self.updates = 0

    async def force_metadata_update(self) -> None:  # aiokafka's returns an awaitable
        self.updates += 1
        if self.updates >= self.consumer.after:
            self.consumer.known = 4


class FakeConsumer:
    def __init__(self, after: int) -> None:
        self.after = after
        self.known = 0
        self.client = FakeClient(self)
        aiokafka_consumer = SimpleNamespace(_client=self.client)

        async def call_thread(fun: Any, *args: Any) -> Any:
            return await fun(*args)

        self._thread = SimpleNamespace(
            _ensure_consumer=lambda: aiokafka_consumer, call_thread=call_thread
        )

    def topic_partitions(self, topic: str) -> int | None:
        assert topic == "p-analyser-dead-letter-counts-changelog"
        return self.known


def app_with(consumer: Any) -> Any:
    return SimpleNamespace(consumer=consumer)


TABLE = SimpleNamespace(changelog_topic_name="p-analyser-dead-letter-counts-changelog")


def test_waits_for_a_metadata_refresh() -> None:
    consumer = FakeConsumer(after=3)
    assert asyncio.run(changelog_known(app_with(consumer), TABLE, timeout_s=10))
    assert consumer.client.updates == 3


def test_gives_up_after_the_timeout() -> None:
    consumer = FakeConsumer(after=10**9)
    assert not asyncio.run(changelog_known(app_with(consumer), TABLE, timeout_s=0.3))
    assert consumer.client.updates >= 1


def test_unknown_topic_or_no_consumer_does_not_wait() -> None:
    consumer = FakeConsumer(after=1)
    consumer.known = None  # type: ignore[assignment]  # not in the snapshot: Faust skips
    assert asyncio.run(changelog_known(app_with(consumer), TABLE, timeout_s=0.1))
    assert consumer.client.updates == 0
    assert asyncio.run(changelog_known(SimpleNamespace(), {}, timeout_s=0.1))
