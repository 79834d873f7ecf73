"""Changelog-backed Faust tables. Each module declares one table and a typed view."""

from __future__ import annotations

from typing import Any


def declare_bytes_table(
    app: Any, name: str, partitions: int, *, help: str, use_partitioner: bool
) -> Any:
    """A table with raw ``bytes`` keys and JSON values.

    ``use_partitioner``: the changelog partition comes from the key (Kafka's default
    partitioner), so it can be written outside stream iteration and from concurrent
    sends; keys must then hash like the messages they belong with.
    """
    import faust

    return app.Table(
        name,
        default=None,
        partitions=partitions,
        # key_type as well as the schema: recovery derives the changelog's key
        # serializer from key_type alone (json otherwise, which cannot read raw keys).
        key_type=bytes,
        schema=faust.Schema(key_type=bytes, key_serializer="raw", value_serializer="json"),
        use_partitioner=use_partitioner,
        help=help,
    )
