"""A Faust consumer that delivers every offset of a stream partition, in order.

faust-streaming 0.15 keeps a *read offset* per partition: a record at or below it
is dropped as already read, and a jump above it is taken for a gap (compacted or
transactional topics have them) whose offsets are acked as if processed
(``Consumer._add_gap``). Around a worker's start both go wrong: records fetched
before "Seek stream partitions to committed offsets" are still delivered after it,
so the read offset runs ahead of the seek and the refetched records are dropped,
or a jump is acked and committed unprocessed (we lost 15 messages per partition
that way; faust-streaming issues #216, #606).

Our stream topics are neither compacted nor transactional, so ``GaplessConsumer``
takes that bookkeeping over for them: it tracks the next offset it expects per
partition (reset by every seek), rewinds the partition when a record skips ahead,
and lets Faust deliver everything else (a record seen twice is a duplicate, which
at-least-once processing and the sent-ledger already absorb). Changelog topics,
read without acks during recovery, keep Faust's own handling.
"""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator, Callable, Mapping
from typing import Any

from faust.transport.drivers import aiokafka as faust_aiokafka
from faust.types import TP, Message

log = logging.getLogger(__name__)


def skipped_from(expected: int | None, offset: int) -> int | None:
    """The first offset skipped before ``offset``, if any (``expected``: the next
    offset due, None when nothing is known yet)."""
    if expected is None or offset <= expected:
        return None
    return expected


class GaplessConsumer(faust_aiokafka.Consumer):
    _expected: dict[TP, int]
    _rewound_to: dict[TP, int]

    def _tracking(self) -> dict[TP, int]:
        if not hasattr(self, "_expected"):
            self._expected, self._rewound_to = {}, {}
        return self._expected

    async def seek_to_committed(self) -> Mapping[TP, int]:
        offsets = await super().seek_to_committed()
        expected = self._tracking()
        for tp, offset in offsets.items():
            if offset is not None and offset >= 0:
                expected[tp] = offset
            else:
                expected.pop(tp, None)
        return offsets

    async def seek(self, partition: TP, offset: int) -> None:
        await super().seek(partition, offset)
        self._tracking()[partition] = offset

    async def getmany(self, timeout: float) -> AsyncIterator[tuple[TP, Message]]:  # noqa: ASYNC109 (Faust's signature)
        acks_enabled: Callable[[str], bool] = self.app.topics.acks_enabled_for
        expected = self._tracking()
        rewound: set[TP] = set()
        async for tp, message in super().getmany(timeout):
            if tp in rewound:
                continue  # fetched again after the rewind
            if acks_enabled(message.topic):  # stream topics, not changelogs
                first = skipped_from(expected.get(tp), message.offset)
                if first is not None and self._rewound_to.get(tp) != first:
                    log.warning(
                        "%s: offsets %d..%d skipped on the way to the stream; rewinding",
                        tp,
                        first,
                        message.offset - 1,
                    )
                    self._rewound_to[tp] = first
                    rewound.add(tp)
                    await self.seek(tp, first)
                    continue
                if first is not None:  # rewound there once: gone (retention), go on
                    log.warning("%s: offsets %d..%d are gone", tp, first, message.offset - 1)
                expected[tp] = max(expected.get(tp, 0), message.offset + 1)
                self._read_offset[tp] = None  # Faust neither drops it nor acks a gap
            yield tp, message


class GaplessTransport(faust_aiokafka.Transport):
    Consumer = GaplessConsumer


def install(app: Any) -> None:
    """Use ``GaplessConsumer`` (before anything touches ``app.transport``)."""
    app.transport = GaplessTransport(app.conf.broker_consumer, app)
