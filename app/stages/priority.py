"""Priority between the per-priority agents of one stage (render, route): issue 14.

Each stage runs one agent per priority topic (``app.topology.RAW_LANES``,
``RENDERED_LANES``), so a critical record has its own partitions and its own stream
buffer and never waits in line behind a burst of bulk. The agents share one process
and one event loop, though: ``PriorityGate`` decides whose batch uses it next.

- One batch's work at a time (the work is CPU: decoding, rendering, encoding); the
  wait for Kafka's acks happens outside the gate, so lanes overlap their acks.
- When several lanes wait, the highest priority goes first: critical, normal, bulk.
- No starvation: a waiting lane passed over ``fair_after`` times in a row goes next
  (with the default 8, bulk gets at least one batch in nine while higher lanes are
  saturated).
- A lane holding the gate hands it over between records when a higher lane waits
  (``pause``): a critical batch waits for one record, not a whole bulk batch. While a
  higher lane's records are queued and its batch not yet full, the holder idles (up to
  the batch window): Faust moves one record per loop turn into a batch, so a busy lower
  lane let critical batches fill at its own pace, one record for each of its own.

``choose`` is the whole policy, pure, and property-tested.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections import deque
from collections.abc import AsyncIterator, Callable, Mapping, Sequence

from app.models import PRIORITIES

#: Passes over a waiting lane before it goes next regardless of priority.
FAIR_AFTER = 8


def choose(
    waiting: Sequence[str],
    skipped: Mapping[str, int],
    lanes: Sequence[str] = PRIORITIES,
    fair_after: int = FAIR_AFTER,
) -> str | None:
    """The lane to serve next among ``waiting`` (None if nobody waits).

    ``skipped[lane]``: how many grants went to other lanes while it waited. A lane
    skipped ``fair_after`` times or more goes first (the most skipped; ties to the
    higher priority); else the highest-priority waiting lane.
    """
    present = [lane for lane in lanes if lane in waiting]
    if not present:
        return None
    starving = [lane for lane in present if skipped.get(lane, 0) >= fair_after]
    if starving:
        return max(starving, key=lambda lane: (skipped.get(lane, 0), -lanes.index(lane)))
    return present[0]


class PriorityGate:
    """One holder at a time; waiters served by ``choose``."""

    def __init__(self, lanes: Sequence[str] = PRIORITIES, fair_after: int = FAIR_AFTER) -> None:
        self.lanes = tuple(lanes)
        self.fair_after = fair_after
        self.holder: str | None = None
        self._waiters: dict[str, deque[asyncio.Future[None]]] = {ln: deque() for ln in lanes}
        self.skipped: dict[str, int] = dict.fromkeys(lanes, 0)
        #: Grants per lane (for tests and the status page).
        self.grants: dict[str, int] = dict.fromkeys(lanes, 0)
        #: Per lane, how many of its records are queued and not yet in a batch (its
        #: stream's buffer); a lane that does not tell counts as none.
        self.queued: dict[str, Callable[[], int]] = {}

    def waiting(self) -> list[str]:
        return [lane for lane, q in self._waiters.items() if q]

    def higher_waiting(self, lane: str) -> bool:
        """Whether a lane of higher priority than ``lane`` waits for the gate."""
        rank = self.lanes.index(lane)
        return any(self._waiters[h] for h in self.lanes[:rank])

    async def acquire(self, lane: str) -> None:
        if self.holder is None and not self.waiting():
            self._grant(lane)
            return
        future: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._waiters[lane].append(future)
        try:
            await future
        except asyncio.CancelledError:
            if future.done() and not future.cancelled():
                self.release()  # granted as we were cancelled: pass it on
            else:
                with contextlib.suppress(ValueError):
                    self._waiters[lane].remove(future)
            raise

    def release(self) -> None:
        self.holder = None
        while True:
            lane = choose(self.waiting(), self.skipped, self.lanes, self.fair_after)
            if lane is None:
                return
            future = self._waiters[lane].popleft()
            if future.done():  # cancelled while waiting
                continue
            self._grant(lane)
            future.set_result(None)
            return

    def _grant(self, lane: str) -> None:
        for other in self.waiting():
            if other != lane:
                self.skipped[other] += 1
        self.skipped[lane] = 0
        self.grants[lane] += 1
        self.holder = lane

    @contextlib.asynccontextmanager
    async def turn(self, lane: str) -> AsyncIterator[None]:
        await self.acquire(lane)
        try:
            yield
        finally:
            self.release()

    def higher_queued(self, lane: str) -> bool:
        """Whether a lane of higher priority than ``lane`` has records queued that are
        not in a batch yet."""
        rank = self.lanes.index(lane)
        return any(self.queued[h]() > 0 for h in self.lanes[:rank] if h in self.queued)

    def _should_idle(self, lane: str, deadline: float, now: float) -> bool:
        return not self.higher_waiting(lane) and self.higher_queued(lane) and now < deadline

    async def pause(self, lane: str, within: float = 0.005) -> None:
        """Between two records of a batch: let the event loop run (the consumer feeds
        the other lanes' buffers meanwhile), and hand the gate to a higher lane that
        waits, coming back when ``choose`` says so. Call only while holding it.

        A higher lane with records queued but no batch yet gets up to ``within`` (its
        batch window) of idle loop turns first: Faust moves one record per turn into a
        batch, so working on meanwhile would let it fill at our pace, one record for
        each of ours (critical got half of render in a burst)."""
        await asyncio.sleep(0)
        if self.higher_queued(lane):
            loop = asyncio.get_running_loop()
            deadline = loop.time() + within
            # idle turns are the point (Faust moves one record per turn), not an Event
            while self._should_idle(lane, deadline, loop.time()):  # noqa: ASYNC110
                await asyncio.sleep(0)
        if self.higher_waiting(lane):
            self.release()
            await self.acquire(lane)


#: Records handled between two ``pause`` calls. One: Faust's stream moves one record
#: per event-loop turn from its queue to an agent's batch buffer, so every pause is
#: also what brings a waiting critical record to its agent (with 16, a critical
#: record was seen 13 s late behind a 3,600-event burst in the integration test).
PAUSE_EVERY = 1
