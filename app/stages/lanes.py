"""Priority between the dispatch lanes: critical, then normal, then bulk, without
starving the lower lanes.

The decision is taken where a message is *taken from its lane's stream*, not after:
a message taken and then held back would hold its partition's commit (offsets commit
only as a contiguous prefix of what is done) and be read again by every restart.
So a lane takes its next message only while ``may_take`` says so, and a worker
pauses fetching a lane whose turn it is not (``app/agents/dispatch.py``); what it has
taken goes on to the rate meter at once.

A lane may take while every higher lane has no backlog (messages in its assigned
partitions not yet taken) and nothing being handled. So that a lower lane is not
starved by a higher lane that never runs dry (a normal backlog under a saturated
quota), a held-back lane earns one turn for every ``every`` messages the lanes above
it take (at most one turn banked): with the default 10, bulk takes one message for
every ten the lanes above it take, about 9% of the sends while they are backlogged.
The backlog figures come from the consumer; this module only decides.
"""

from __future__ import annotations

import asyncio
import contextlib

from app.models import PRIORITIES

EVERY = 10  # a held-back lane earns a turn per this many messages taken above it


def waiting_work(lag: int, buffered: int, delivery_stalled: bool) -> int:
    """The backlog a lane holds lower lanes back with.

    Normally its lag (handled up to the partition ends). But one consumer feeds every
    lane's buffer in fetch order, and stops while any buffer is full: when a held-back
    lane's buffer fills, a higher lane's lag cannot arrive until the held-back lane
    takes some. Then only what the higher lane has in its buffer counts, or both would
    wait on each other for ever.
    """
    return buffered if delivery_stalled else lag


class LaneGate:
    def __init__(
        self,
        lanes: tuple[str, ...] = PRIORITIES,
        *,
        start_unknown: bool = False,
        every: int = EVERY,
    ) -> None:
        """``start_unknown``: higher lanes count as busy until their backlog is first set.
        ``every``: a held-back lane earns a turn per ``every`` messages the lanes above
        it take (0: never, strict priority, a lower lane may starve)."""
        if every < 0:
            raise ValueError(f"every must be 0 or more, not {every!r}")
        self.lanes = lanes
        self.every = every
        self.backlog: dict[str, int] = dict.fromkeys(lanes, 1 if start_unknown else 0)
        self.active: dict[str, int] = dict.fromkeys(lanes, 0)
        self.credit: dict[str, int] = dict.fromkeys(lanes, 0)  # takes above, while held
        self.taken: dict[str, int] = dict.fromkeys(lanes, 0)
        self.by_credit: dict[str, int] = dict.fromkeys(lanes, 0)
        self._changed = asyncio.Event()

    def _higher(self, lane: str) -> tuple[str, ...]:
        return self.lanes[: self.lanes.index(lane)]

    def _lower(self, lane: str) -> tuple[str, ...]:
        return self.lanes[self.lanes.index(lane) + 1 :]

    def clear_for(self, lane: str) -> bool:
        """No higher lane has work: ``lane`` goes by right."""
        return all(self.backlog[h] == 0 and self.active[h] == 0 for h in self._higher(lane))

    def may_take(self, lane: str) -> bool:
        """``lane`` may take its next message now: by right, or with a turn earned
        while it was held back."""
        return self.clear_for(lane) or (self.every > 0 and self.credit[lane] >= self.every)

    def take(self, lane: str) -> None:
        """``lane`` takes a message (``may_take`` was true, nothing awaited since):
        a turn taken without the right spends the turn, and every lower lane counts
        one more message taken above it (up to one turn's worth)."""
        self.taken[lane] += 1
        if not self.clear_for(lane):
            self.credit[lane] = max(0, self.credit[lane] - self.every)
            self.by_credit[lane] += 1
        for lower in self._lower(lane):
            self.credit[lower] = min(self.every, self.credit[lower] + 1)
        self._notify()

    def set_backlog(self, lane: str, n: int) -> None:
        if self.backlog[lane] != n:
            self.backlog[lane] = n
            self._notify()

    def enter(self, lane: str) -> None:
        self.active[lane] += 1

    def leave(self, lane: str) -> None:
        self.active[lane] -= 1
        self._notify()

    def _notify(self) -> None:
        self._changed.set()
        self._changed = asyncio.Event()

    async def changed(self, poll_s: float) -> None:
        """Return when a figure changes, or after ``poll_s`` (a figure may be written
        without a notification)."""
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self._changed.wait(), poll_s)

    async def wait_turn(self, lane: str, poll_s: float = 0.05) -> None:
        """Return once no higher lane has work. Polls too, in case a figure goes stale."""
        while not self.clear_for(lane):
            await self.changed(poll_s)
