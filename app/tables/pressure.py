"""Rate-meter and breaker state per provider and partition (see app/stages/pressure.py).

Written with the key partitioner, like the sent-ledger; the key of (provider, p) is
chosen so that it hashes to partition p, so the entry lives in the changelog
partition of the dispatch partition whose share it holds, and moves with it.
"""

from __future__ import annotations

from functools import cache
from typing import Any

from aiokafka.partitioner import murmur2

from app.tables import declare_bytes_table

TABLE_NAME = "dispatch-pressure"


@cache
def key_for(provider: str, partition: int, partitions: int) -> bytes:
    """A table key for (provider, partition) that Kafka's default partitioner
    (murmur2, as in the Java client and aiokafka) sends to ``partition``."""
    for salt in range(100_000):
        key = f"{provider}|p{partition}|{salt}".encode()
        if (murmur2(key) & 0x7FFFFFFF) % partitions == partition:
            return key
    raise ValueError(f"no key found for partition {partition} of {partitions}")


def declare_table(app: Any, partitions: int) -> Any:
    return declare_bytes_table(
        app,
        TABLE_NAME,
        partitions,
        help="Per provider and partition: rate-meter times and breaker state.",
        use_partitioner=True,
    )
