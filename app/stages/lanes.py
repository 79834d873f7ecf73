"""Strict priority between the dispatch lanes: critical, then normal, then bulk.

A lane may start a send only while every higher lane has no backlog (messages in
its assigned partitions not yet handled) and nothing being handled. The backlog
figures come from the consumer (see ``app/agents/dispatch.py``); this module only
decides.
"""

from __future__ import annotations

import asyncio
import contextlib

from app.models import PRIORITIES


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
    def __init__(self, lanes: tuple[str, ...] = PRIORITIES, *, start_unknown: bool = False) -> None:
        """``start_unknown``: higher lanes count as busy until their backlog is first set."""
        self.lanes = lanes
        self.backlog: dict[str, int] = dict.fromkeys(lanes, 1 if start_unknown else 0)
        self.active: dict[str, int] = dict.fromkeys(lanes, 0)
        self._changed = asyncio.Event()

    def _higher(self, lane: str) -> tuple[str, ...]:
        return self.lanes[: self.lanes.index(lane)]

    def clear_for(self, lane: str) -> bool:
        return all(self.backlog[h] == 0 and self.active[h] == 0 for h in self._higher(lane))

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

    async def wait_turn(self, lane: str, poll_s: float = 0.05) -> None:
        """Return once no higher lane has work. Polls too, in case a figure goes stale."""
        while not self.clear_for(lane):
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._changed.wait(), poll_s)
