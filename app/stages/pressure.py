"""Sending at the pace a provider allows: rate meters, circuit breakers, backoff.

How the quota is shared. A provider's quota (messages/s x target utilisation) is
split evenly over the dispatch partitions: partition p is worth ``rate / P``. A
worker's share is the sum over the partitions it owns, pooled in one meter, so the
shares of all workers add up to the quota whatever their number and however
partitions move, and no worker has to ask another. Keys are event ids, hashed
evenly over partitions, so every share sees about the same load. A share is a GCRA
meter (a leaky bucket kept as a "theoretical arrival time"), persisted under each
owned partition's key in a changelog-backed table: a restarted or rebalanced
worker resumes from the stored times and neither bursts nor stalls (see
``Share.snapshot``).

Circuit breakers are per provider and worker, persisted the same way: each worker
judges the provider by its own traffic, and all of them see an outage together
because failures fall on every partition alike.
"""

from __future__ import annotations

import asyncio
import math
import random
import time
from collections import deque
from dataclasses import dataclass, field
from typing import Any, Literal

from app.providers.headers import clamp_wait
from app.settings import ProviderPolicy

BreakerState = Literal["closed", "open", "half_open"]


class Gcra:
    """Generic cell rate algorithm: ``rate`` per second, bursts of ``burst`` requests."""

    def __init__(self, rate: float, burst: float = 1.0, tat: float = 0.0) -> None:
        self.rate = rate
        self.burst = burst
        self.tat = tat  # theoretical arrival time of the next conforming request

    @property
    def interval(self) -> float:
        return 1.0 / self.rate if self.rate > 0 else float("inf")

    def wait(self, now: float, cost: float = 1.0) -> float:
        """Seconds until a request of ``cost`` conforms (0: now)."""
        if self.rate <= 0:
            return float("inf")
        tolerance = (self.burst - 1.0) * self.interval
        return max(0.0, max(self.tat, now) + (cost - 1.0) * self.interval - now - tolerance)

    def tokens(self, now: float) -> float:
        """Requests that would conform right now (the bucket's level)."""
        if self.rate <= 0:
            return 0.0
        return max(0.0, (now - self.tat) / self.interval + self.burst)

    def take(self, now: float, cost: float = 1.0) -> None:
        self.tat = max(self.tat, now) + cost * self.interval


@dataclass
class Breaker:
    """Closed -> open when the error rate over the window passes the threshold (after a
    minimum number of requests); open for ``cooldown``; then a few half-open probes
    close it again, or one failed probe reopens it."""

    policy: ProviderPolicy
    state: BreakerState = "closed"
    opened_at: float = 0.0
    probes_sent: int = 0
    probes_ok: int = 0
    window: deque[tuple[float, bool]] = field(default_factory=deque)
    errors: int = 0  # failures in ``window``, kept so a record costs O(1)

    def _trim(self, now: float) -> None:
        horizon = now - self.policy.breaker_window_s
        while self.window and self.window[0][0] < horizon:
            if not self.window.popleft()[1]:
                self.errors -= 1

    def error_rate(self, now: float) -> tuple[float, int]:
        self._trim(now)
        n = len(self.window)
        return (self.errors / n if n else 0.0), n

    def peek(self, now: float) -> float:
        """What ``admit`` would answer, without taking a probe: for choosing a provider
        before waiting for its pace."""
        if self.state == "open":
            return max(0.0, self.opened_at + self.policy.breaker_cooldown_s - now)
        if self.state == "half_open" and self.probes_sent >= self.policy.breaker_half_open_probes:
            return 0.05  # wait for the probes in flight to decide
        return 0.0

    def admit(self, now: float) -> float:
        """0 if a request may go now (possibly as a probe), else seconds to wait. Asked
        right before the send: a request that waited for its pace while the breaker
        tripped must not go out."""
        wait = self.peek(now)
        if wait > 0:
            return wait
        if self.state == "open":  # cooled down
            self.state, self.probes_sent, self.probes_ok = "half_open", 0, 0
        if self.state == "half_open":
            self.probes_sent += 1
        return 0.0

    def throttled(self, now: float) -> None:
        """A 429. Closed: not a breaker matter (requests bunched over one window
        boundary would otherwise stop all traffic for a whole cooldown). Half-open:
        the probe ends the half-open state by reopening it for a cooldown: a throttled
        probe delivered nothing, so it cannot show the provider healthy, and leaving it
        unanswered would hold the breaker half-open forever (its probe slot taken)."""
        if self.state == "half_open":
            self._open(now)

    def release_probe(self) -> None:
        """An admitted request that never reached the provider (fenced, cancelled, or
        the message could not be encoded) gives its probe slot back."""
        if self.state == "half_open" and self.probes_sent > 0:
            self.probes_sent -= 1

    def record(self, ok: bool, now: float) -> None:
        if self.state == "half_open":
            if not ok:
                self._open(now)
                return
            self.probes_ok += 1
            if self.probes_ok >= self.policy.breaker_half_open_probes:
                self.state = "closed"
                self._clear()
            return
        if self.state == "open":
            return  # a late answer from before the trip
        self.window.append((now, ok))
        self.errors += not ok
        rate, n = self.error_rate(now)
        if n >= self.policy.breaker_min_requests and rate > self.policy.breaker_error_threshold:
            self._open(now)

    def _open(self, now: float) -> None:
        self.state, self.opened_at = "open", now
        self._clear()

    def _clear(self) -> None:
        self.window.clear()
        self.errors = 0


@dataclass
class RateLimitView:
    """What the provider last said about our quota (X-RateLimit-*), and 429 pauses."""

    limit: int | None = None
    remaining: int | None = None
    reset_at: float | None = None
    seen_at: float = 0.0
    paused_until: float = 0.0
    throttles: int = 0  # 429s in a row: the backoff step when Retry-After is unusable

    def low(self, threshold: int, now: float, pace: float | None = None) -> bool:
        """Remaining is under the threshold and, at ``pace`` (our own target rate, all
        workers together; None: unlimited), would run out before the reset. With a
        short provider window (say 200/s) Remaining dips under 100 every second while
        our pace fits the quota: that is not a reason to hold anything."""
        if self.remaining is None or self.reset_at is None or now >= self.reset_at:
            return False
        if self.remaining >= threshold:
            return False
        return pace is None or self.remaining < pace * (self.reset_at - now)


@dataclass
class Share:
    """One provider's share on this worker (``owned`` of ``partitions``): meters and
    breaker."""

    policy: ProviderPolicy
    partitions: int
    owned: int = -1  # -1: all of them
    total: Gcra = field(init=False)
    non_critical: Gcra = field(init=False)
    breaker: Breaker = field(init=False)

    def __post_init__(self) -> None:
        self.total = Gcra(0.0)
        self.non_critical = Gcra(0.0)
        self.breaker = Breaker(self.policy)
        self.resize(self.partitions if self.owned < 0 else self.owned)

    def resize(self, owned: int) -> None:
        """Normal and bulk mail aim at ``quota x target_utilisation``; critical mail may
        also use the reserve above it, up to the whole quota."""
        self.owned = owned
        policy = self.policy
        quota = (policy.quota_per_s or 0.0) * owned / self.partitions
        self.non_critical.rate = quota * policy.target_utilisation
        self.total.rate = quota * min(1.0, policy.target_utilisation + policy.critical_reserve)
        # Tolerate a burst of 10% of the rate, so late timers on a busy machine do not
        # lose capacity, but never so much that one second could pass the quota.
        for meter in (self.total, self.non_critical):
            meter.burst = max(1.0, min(0.1 * meter.rate, quota - meter.rate))

    @property
    def limited(self) -> bool:
        return self.policy.rate_per_s is not None

    def snapshot(self, now: float, flush_every_s: float) -> dict[str, Any]:
        """What to persist. Meter times are pushed ahead by one flush interval, so a
        worker restored from a snapshot up to that old never sends early: at worst
        it idles that long."""
        ahead = flush_every_s + self.total.interval if self.limited else 0.0
        return {
            "tat": max(self.total.tat, now) + ahead if self.limited else 0.0,
            "tat_nc": max(self.non_critical.tat, now) + ahead if self.limited else 0.0,
            "breaker": self.breaker.state,
            "opened_at": self.breaker.opened_at,
            "at": now,
        }

    def restore(self, snap: dict[str, Any]) -> None:
        """Merge a stored snapshot (of a partition this worker now owns): the later
        meter times win, and an open breaker stays open."""
        self.total.tat = max(self.total.tat, float(snap.get("tat", 0.0)))
        self.non_critical.tat = max(self.non_critical.tat, float(snap.get("tat_nc", 0.0)))
        state = snap.get("breaker", "closed")
        opened_at = float(snap.get("opened_at", 0.0))
        if state in ("open", "half_open") and (
            self.breaker.state == "closed" or opened_at > self.breaker.opened_at
        ):
            # A half-open breaker restarts as open: its probes were lost with the worker.
            self.breaker.state = "open"
            self.breaker.opened_at = opened_at


#: The send window: a worker's requests to a provider in any window this long stay
#: within its share of the quota. A little over a second, so that requests that leave
#: within a second of each other cannot land in one provider second above the quota
#: when their way to the provider takes a few ms more or less (arrival jitter); at
#: the meters' pace (at most 95% of the quota) it never holds a request back.
SEND_WINDOW_S = 1.05


class SendWindow:
    """The times this worker's last requests to a provider went out (a sliding window)."""

    def __init__(self) -> None:
        self.sent: deque[float] = deque()

    def wait(self, now: float, limit: int, window_s: float = SEND_WINDOW_S) -> float:
        """Seconds until one more request keeps at most ``limit`` in any ``window_s``."""
        while self.sent and self.sent[0] <= now - window_s:
            self.sent.popleft()
        if len(self.sent) < limit:
            return 0.0
        if limit <= 0:
            return window_s
        return max(0.0, self.sent[len(self.sent) - limit] + window_s - now)

    def take(self, now: float) -> None:
        self.sent.append(now)


class PacedProvider:
    """A provider whose ``send`` first waits for this worker's send window
    (``PressureBoard.on_wire``): the last step before the request goes out."""

    def __init__(self, provider: Any, board: PressureBoard, name: str) -> None:
        self._provider = provider
        self._board = board
        self._name = name

    def __getattr__(self, attr: str) -> Any:
        return getattr(self._provider, attr)

    async def send(self, email: Any) -> Any:
        await self._board.on_wire(self._name)
        return await self._provider.send(email)


def backoff_s(attempt: int, base_s: float, cap_s: float, rng: random.Random | None = None) -> float:
    """Exponential backoff with full jitter: uniform in [0, min(cap, base * 2**(n-1))],
    but never under half of it, so retries do not come back at once."""
    ceiling = min(cap_s, base_s * (2 ** max(0, attempt - 1)))
    r = (rng or random).random()
    return ceiling * (0.5 + 0.5 * r)


class PressureBoard:
    """Every provider's shares, breakers and provider-reported limits on this worker.

    ``store`` is the changelog-backed table (a dict in unit tests) that snapshots
    are written to and restored from; keys come from ``key_for``.
    """

    def __init__(
        self,
        policies: dict[str, ProviderPolicy],
        partitions: int,
        store: Any,
        key_for: Any,
        *,
        clock: Any = time.time,
        sleep: Any = asyncio.sleep,
    ) -> None:
        self.policies = policies
        self.sleep = sleep  # injectable with ``clock`` (a virtual clock in tests)
        self.partitions = partitions
        self.store = store
        self.key_for = key_for
        self.clock = clock
        self.shares: dict[str, Share] = {}
        self.owned: set[int] = set()
        self.views: dict[str, RateLimitView] = {name: RateLimitView() for name in policies}
        self._locks: dict[tuple[str, int, str], asyncio.Lock] = {}
        self._windows: dict[str, SendWindow] = {}
        self._wire_locks: dict[str, asyncio.Lock] = {}

    def state(self, provider: str, partition: int | None = None) -> Share:
        """This worker's share of ``provider``. ``partition``, the message's, is owned
        by this worker: counted as owned if the assignment has not said so yet."""
        if partition is not None and partition not in self.owned:
            self.own({*self.owned, partition})
        share = self.shares.get(provider)
        if share is None:
            share = Share(self.policies[provider], self.partitions, len(self.owned))
            for p in self.owned:
                self._restore(share, provider, p)
            self.shares[provider] = share
        return share

    def _restore(self, share: Share, provider: str, partition: int) -> None:
        snap = self.store.get(self.key_for(provider, partition, self.partitions))
        if snap:
            share.restore(snap)

    def own(self, partitions: set[int]) -> None:
        """The dispatch partitions this worker owns now (from its assignment)."""
        partitions = set(partitions)
        if partitions == self.owned:
            return
        added = partitions - self.owned
        self.owned = partitions
        for provider, share in self.shares.items():
            for p in added:
                self._restore(share, provider, p)
            share.resize(len(partitions))

    def flush(self, flush_every_s: float) -> int:
        now = self.clock()
        n = 0
        for provider, share in self.shares.items():
            snap = share.snapshot(now, flush_every_s)
            for p in self.owned:
                self.store[self.key_for(provider, p, self.partitions)] = snap
                n += 1
        return n

    def persist_breaker(self, provider: str, partition: int, flush_every_s: float) -> None:
        snap = self.state(provider, partition).snapshot(self.clock(), flush_every_s)
        for p in self.owned:
            self.store[self.key_for(provider, p, self.partitions)] = snap

    def observe(
        self, provider: str, limit: int | None, remaining: int | None, reset_at: float | None
    ) -> None:
        """An accepted request's X-RateLimit-* view. A reset time is untrusted: one in
        the past, non-finite or garbage is dropped, and one further ahead than
        ``retry_after_max_s`` is pulled in to that, so no header holds bulk longer."""
        now = self.clock()
        view = self.views[provider]
        if reset_at is not None:
            if not math.isfinite(reset_at) or reset_at <= now:
                reset_at = None
            else:
                reset_at = min(reset_at, now + self.policies[provider].retry_after_max_s)
        view.limit, view.remaining, view.reset_at = limit, remaining, reset_at
        view.seen_at = now
        view.throttles = 0

    def pause_s(self, provider: str, retry_after: float | None) -> float:
        """How long a 429 pauses ``provider``: Retry-After if usable, else the policy's
        backoff for this many 429s in a row; clamped to [retry_after_min_s,
        retry_after_max_s] either way (0 or a past date: the minimum; huge: the maximum)."""
        policy = self.policies[provider]
        view = self.views[provider]
        fallback = backoff_s(
            max(1, view.throttles), policy.retry_backoff_base_s, policy.retry_backoff_cap_s
        )
        return clamp_wait(
            retry_after, policy.retry_after_min_s, policy.retry_after_max_s, fallback
        )

    def pause(self, provider: str, retry_after: float | None) -> float:
        """A 429: nothing goes to this provider from this worker, critical included,
        for ``pause_s`` (at most ``retry_after_max_s``). Returns the pause."""
        view = self.views[provider]
        view.throttles += 1
        pause = self.pause_s(provider, retry_after)
        now = self.clock()
        # A later, shorter pause may not shorten a standing one, but nothing may push
        # it beyond the maximum from now.
        cap = now + self.policies[provider].retry_after_max_s
        view.paused_until = min(max(view.paused_until, now + pause), cap)
        return pause

    def succeeded(self, provider: str) -> None:
        """An accepted request ends a run of 429s."""
        self.views[provider].throttles = 0

    def blocked(self, provider: str, lane: str) -> bool:
        """Paused by a 429, or (bulk) held for low Remaining: checked again right
        before a send, since many messages may have passed ``acquire`` meanwhile."""
        now = self.clock()
        view = self.views[provider]
        if view.paused_until > now:
            return True
        policy = self.policies[provider]
        return lane == "bulk" and view.low(policy.remaining_threshold, now, policy.rate_per_s)

    def wait_s(self, provider: str, partition: int, lane: str) -> float:
        """Seconds before a ``lane`` message may go to ``provider`` on ``partition``."""
        now = self.clock()
        policy = self.policies[provider]
        view = self.views[provider]
        wait = view.paused_until - now
        low = view.low(policy.remaining_threshold, now, policy.rate_per_s)
        if lane == "bulk" and low:
            return max(wait, (view.reset_at or now) - now, 0.05)  # held until the reset
        st = self.state(provider, partition)
        if not st.limited and wait <= 0:
            return 0.0
        cost = 2.0 if lane == "normal" and low else 1.0
        meters = [st.total] if lane == "critical" else [st.total, st.non_critical]
        return max([wait, *(m.wait(now, cost) for m in meters if st.limited)])

    def send_limit(self, provider: str) -> int | None:
        """Requests this worker may send to ``provider`` in any ``SEND_WINDOW_S``: its
        share of the whole quota (the partitions it owns), rounded down, so the limits
        of all workers add up to the quota at most. None: no quota."""
        quota = self.policies[provider].quota_per_s
        if quota is None:
            return None
        owned = self.state(provider).owned
        return max(1, math.floor(quota * owned / self.partitions + 1e-9))

    async def on_wire(self, provider: str) -> None:
        """Right before a request goes out (after the meters, a connection slot and the
        ledger mark, whose waits vary): wait until it keeps this worker within its
        share in every ``SEND_WINDOW_S``. The meters pace the requests when they are
        admitted; this keeps them paced when they reach the provider, however they
        bunched on the way (a late ack of the in_flight mark, a busy event loop, a
        takeover). Measured before: 51 requests in one second of a quota of 50."""
        lock = self._wire_locks.setdefault(provider, asyncio.Lock())
        async with lock:
            window = self._windows.setdefault(provider, SendWindow())
            while True:
                limit = self.send_limit(provider)
                now = self.clock()
                if limit is None:
                    return
                wait = window.wait(now, limit)
                if wait <= 0:
                    window.take(now)
                    return
                await self.sleep(min(wait, 0.25))

    async def acquire(self, provider: str, partition: int, lane: str, gate: Any = None) -> None:
        """Wait for a slot at the provider's pace, then take it. One waiter per
        (provider, partition, lane) polls the meters; the lane's others queue behind it.

        ``gate`` is not asked: priority between lanes is decided before a message is
        taken off its stream (``LaneGate.may_take``, ``Dispatcher.turn``); a message
        taken and then held back for priority would hold its partition's commit."""
        lock = self._locks.setdefault((provider, partition, lane), asyncio.Lock())
        async with lock:
            while True:
                wait = self.wait_s(provider, partition, lane)
                if wait <= 0:
                    break
                await self.sleep(min(wait, 0.25))
            st = self.state(provider, partition)
            if st.limited:
                now = self.clock()
                policy = self.policies[provider]
                low = self.views[provider].low(policy.remaining_threshold, now, policy.rate_per_s)
                cost = 2.0 if lane == "normal" and low else 1.0
                st.total.take(now, cost)
                if lane != "critical":
                    st.non_critical.take(now, cost)
