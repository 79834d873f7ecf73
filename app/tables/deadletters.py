"""Dead-letter counts of the analyser: a changelog-backed table of time buckets.

Key ``<partition>|<bucket start, epoch s>|<dimension>|<value>`` (bytes) -> count,
for the dimensions in :data:`app.stages.deadletters.DIMENSIONS`. Written without
the key partitioner: a Faust table writes each change to the changelog partition of
the event being handled, and the key starts with that partition, so each key lives
in exactly one changelog partition and is restored exactly after a restart or a
rebalance, however many analyser workers share ``email.dead``. Windows are read as
sums of buckets (see :func:`app.stages.deadletters.summarize_counts`); buckets older
than the retention are deleted (tombstones) as newer dead letters of their
partition arrive.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import MutableMapping
from typing import Any

from app.models import DeadLetter
from app.stages.deadletters import (
    LabelBounds,
    bucket_of,
    count_key,
    dimension_values,
    parse_count_key,
)
from app.tables import declare_bytes_table

TABLE_NAME = "dead-letter-counts"


class DeadLetterCounts:
    """Bucketed counts over a mapping (a Faust table in a worker, a dict in tests).

    ``add`` must run while the stream handles the dead letter (so a table writes to
    the changelog partition of ``partition``); it also drops that partition's
    buckets older than the retention.
    """

    def __init__(
        self,
        table: MutableMapping[bytes, Any],
        *,
        bucket_s: int,
        retention_s: int,
        bounds: LabelBounds | None = None,
    ) -> None:
        self.table = table
        #: Maps producer-chosen values into a configured set (None: counted as they are;
        #: the analyser always passes bounds, so its keys and labels stay bounded).
        self.bounds = bounds
        self.bucket_s = bucket_s
        self.retention_s = retention_s
        # partition -> bucket -> keys, to expire old buckets without scanning the table
        self._index: dict[int, dict[int, set[bytes]]] = {}

    def _buckets(self, partition: int) -> dict[int, set[bytes]]:
        buckets = self._index.get(partition)
        if buckets is None:  # first sight since start or rebalance: index what was restored
            buckets = self._index[partition] = defaultdict(set)
            for key in list(self.table.keys()):
                p, bucket, _, _ = parse_count_key(key)
                if p == partition:
                    buckets[bucket].add(key)
        return buckets

    def reset_index(self) -> None:
        """Forget the expiry index (after a rebalance: another worker may have written)."""
        self._index.clear()

    def add(self, dl: DeadLetter, partition: int) -> None:
        bucket = bucket_of(dl.dead_at, self.bucket_s)
        buckets = self._buckets(partition)
        values = self.bounds.values(dl) if self.bounds else dimension_values(dl)
        for dimension, value in values.items():
            key = count_key(partition, bucket, dimension, value)
            self.table[key] = int(self.table.get(key) or 0) + 1
            buckets[bucket].add(key)
        self._expire(buckets, before=bucket - self.retention_s)

    def _expire(self, buckets: dict[int, set[bytes]], before: int) -> None:
        for old in [b for b in buckets if b < before]:
            for key in buckets.pop(old):
                self.table.pop(key, None)

    def items(self) -> list[tuple[bytes, int]]:
        return [(k, int(v or 0)) for k, v in list(self.table.items())]


def declare_table(app: Any, partitions: int) -> Any:
    return declare_bytes_table(
        app,
        TABLE_NAME,
        partitions,
        help="Dead letters per partition, time bucket, dimension and value.",
        key_hashed=False,
    )
