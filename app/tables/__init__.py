"""Changelog-backed Faust tables. Each module declares one table and a typed view."""

from __future__ import annotations

import asyncio
import functools
from typing import Any

import faust
from aiokafka.partitioner import murmur2


def key_partition(key: bytes, partitions: int) -> int:
    """The partition Kafka's default partitioner (murmur2, as in the Java client and
    aiokafka) gives a key."""
    return (murmur2(key) & 0x7FFFFFFF) % partitions


class KeyHashedTable(faust.Table):
    """A table whose changelog partition is the hash of its raw key.

    Faust's ``use_partitioner=True`` does the same through the producer, which reads
    the changelog's partition count from aiokafka's metadata cache without waiting
    for it; a write that comes before the cache is filled fails with ``TypeError``.
    Hashing here needs only the partition count we declared, and the send itself
    waits for metadata.
    """

    def partition_for_key(self, key: Any) -> int | None:
        assert self.partitions, "declared with an explicit partition count"
        return key_partition(key, self.partitions)

    def send_changelog(self, partition: Any, key: Any, value: Any, *args: Any, **kw: Any) -> Any:
        """Faust's changelog send (a set or a delete of ``key``), keeping its future
        until the broker acknowledged it (``written``). Faust itself discards it."""
        future = super().send_changelog(partition, key, value, *args, **kw)
        writes = self._spillway_writes()
        writes[key] = future
        future.add_done_callback(functools.partial(self._forget_write, key))
        return future

    def _spillway_writes(self) -> dict[Any, asyncio.Future[Any]]:
        writes: dict[Any, asyncio.Future[Any]] | None = self.__dict__.get("spillway_writes")
        if writes is None:
            writes = self.__dict__["spillway_writes"] = {}
        return writes

    def _forget_write(self, key: Any, done: asyncio.Future[Any]) -> None:
        """A write acknowledged is forgotten; a failed one stays (``written`` shows
        it) until the next write of the key."""
        writes = self._spillway_writes()
        if writes.get(key) is done and not done.cancelled() and done.exception() is None:
            del writes[key]

    def written(self, key: Any) -> asyncio.Future[Any] | None:
        """The future of the last changelog write of ``key`` in this process that has
        not succeeded yet: it resolves once the broker acknowledged the record (the
        producer runs with acks=all), or holds the error that stopped it. None: every
        write of ``key`` made here was acknowledged (or none was made)."""
        return self._spillway_writes().get(key)


def declare_bytes_table(
    app: Any, name: str, partitions: int, *, help: str, key_hashed: bool
) -> Any:
    """A table with raw ``bytes`` keys and JSON values.

    ``key_hashed``: the changelog partition comes from the key, so the table can be
    written outside stream iteration and from concurrent sends; keys must then hash
    like the messages they belong with. Otherwise it is the current event's partition.
    """
    cls = KeyHashedTable if key_hashed else faust.Table
    table: faust.Table = cls(
        app,
        name=name,
        default=None,
        beacon=app.tables.beacon,
        partitions=partitions,
        # key_type as well as the schema: recovery derives the changelog's key
        # serializer from key_type alone (json otherwise, which cannot read raw keys).
        key_type=bytes,
        schema=faust.Schema(key_type=bytes, key_serializer="raw", value_serializer="json"),
        help=help,
    )
    return app.tables.add(table)
