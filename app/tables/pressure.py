"""Rate-meter and breaker state per provider and partition (see app/stages/pressure.py).

Key-hashed, like the sent-ledger; the key of (provider, p) is
chosen so that it hashes to partition p, so the entry lives in the changelog
partition of the dispatch partition whose share it holds, and moves with it.
"""

from __future__ import annotations

from functools import cache
from typing import Any

from app.tables import declare_bytes_table, key_partition

TABLE_NAME = "dispatch-pressure"


@cache
def key_for(provider: str, partition: int, partitions: int) -> bytes:
    """A table key for (provider, partition) that hashes to ``partition``."""
    for salt in range(100_000):
        key = f"{provider}|p{partition}|{salt}".encode()
        if key_partition(key, partitions) == partition:
            return key
    raise ValueError(f"no key found for partition {partition} of {partitions}")


def declare_table(app: Any, partitions: int) -> Any:
    return declare_bytes_table(
        app,
        TABLE_NAME,
        partitions,
        help="Per provider and partition: rate-meter times and breaker state.",
        key_hashed=True,
    )
