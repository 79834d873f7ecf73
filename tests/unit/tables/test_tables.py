"""Table declarations: key-hashed changelog partitions match Kafka's partitioner."""

from __future__ import annotations

import asyncio
from types import SimpleNamespace
from typing import Any

from aiokafka.partitioner import DefaultPartitioner

from app.factory import create_app
from app.settings import Settings
from app.tables import KeyHashedTable, deadletters, key_partition, ledger, pressure


def test_key_partition_matches_kafka_default_partitioner() -> None:
    partitioner = DefaultPartitioner()
    for n in (1, 3, 8):
        for i in range(500):
            key = f"evt-{i}".encode()
            assert key_partition(key, n) == partitioner(key, list(range(n)), list(range(n)))


def test_ledger_and_pressure_hash_keys_without_the_producer() -> None:
    settings = Settings(stage="dispatch", store="memory://")  # type: ignore[arg-type]
    app = create_app(settings)  # declares the dispatch stage's tables
    n = settings.kafka.topic_partitions
    table = app.tables[ledger.TABLE_NAME]
    assert isinstance(table, KeyHashedTable)
    # No producer, no metadata, no current event: the partition is the key's hash.
    assert table.partition_for_key(b"order-42") == key_partition(b"order-42", n)
    board = app.tables[pressure.TABLE_NAME]
    assert isinstance(board, KeyHashedTable)
    for p in range(n):
        assert board.partition_for_key(pressure.key_for("sim", p, n)) == p


async def test_dead_letter_counts_follow_the_event_partition() -> None:
    """A count written while handling an event of partition p goes to changelog
    partition p (its key starts with p, so a restart restores it with that partition)."""
    app = create_app(Settings(stage="route", store="memory://"))  # type: ignore[arg-type]
    table = deadletters.declare_table(app, 6)
    assert not isinstance(table, KeyHashedTable)
    assert app.tables[deadletters.TABLE_NAME] is table
    written: list[tuple[int | None, bytes]] = []

    def send_changelog(partition: int | None, key: bytes, value: Any, *a: Any, **k: Any) -> Any:
        written.append((partition, key))
        return SimpleNamespace(message=SimpleNamespace(partition=partition))

    table.send_changelog = send_changelog  # type: ignore[method-assign]
    topic = app.topic("t-counts", value_serializer="raw", key_serializer="raw")

    @app.agent(topic)
    async def count(stream: Any) -> None:
        async for _event in stream.events():
            table[b"4|0|reason|x"] = 1

    async with count.test_context() as agent:
        await agent.put(b"v", key=b"k", partition=4)
        await agent.put(b"v", key=b"k", partition=2)
    assert written == [(4, b"4|0|reason|x"), (2, b"4|0|reason|x")]


async def test_a_key_hashed_table_keeps_each_key_s_changelog_future_until_acked() -> None:
    """``written`` is what ``Ledger.settled`` awaits: the future Faust's ``on_key_set``
    and ``on_key_del`` get from ``send_changelog`` (and discard), per key, until the
    broker acknowledged that record. Pins that a table write reaches our override."""
    settings = Settings(stage="dispatch", store="memory://")  # type: ignore[arg-type]
    app = create_app(settings)
    table: Any = app.tables[ledger.TABLE_NAME]
    produced: list[Any] = []
    app.producer.send_soon = produced.append  # type: ignore[method-assign,assignment]
    assert table.written(b"e1") is None
    table[b"e1"] = {"s": "in_flight"}
    first = table.written(b"e1")
    assert first is not None and produced == [first] and not first.done()
    assert first.message.partition == key_partition(b"e1", settings.kafka.topic_partitions)
    table[b"e1"] = {"s": "ambiguous"}  # a later write of the key is the one to await
    second = table.written(b"e1")
    assert second is produced[1] and second is not first
    first.set_result(None)
    await asyncio.sleep(0)
    assert table.written(b"e1") is second  # an older ack does not clear a newer write
    second.set_exception(RuntimeError("broker down"))
    await asyncio.sleep(0)
    assert table.written(b"e1") is second  # a failed write stays visible
    del table[b"e1"]  # a delete (expiry) is a changelog write too
    third = table.written(b"e1")
    assert third is produced[2]
    third.set_result(None)
    await asyncio.sleep(0)
    assert table.written(b"e1") is None  # acked: nothing to wait for
