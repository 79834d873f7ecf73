"""Sending at the pace a provider allows: rate meters, circuit breakers, backoff.

How the quota is shared. A provider's quota (messages/s x target utilisation) is
split evenly over the dispatch partitions: partition p owns ``rate / P``. The
worker that owns a partition owns its share, whatever the number of workers and
however partitions move, so the shares always add up to the quota and no worker
has to ask another. Keys are event ids, hashed evenly over partitions, so every
share sees about the same load. Each share is a GCRA meter (a leaky bucket kept
as a "theoretical arrival time"), persisted in a changelog-backed table: a
restarted or rebalanced worker resumes from the stored time and neither bursts
nor stalls (see ``PartitionState.snapshot``).

Circuit breakers are per provider and partition too: each partition owner judges
the provider by its own share of the traffic, and all of them see an outage
together because failures fall on every partition alike.
"""

from __future__ import annotations

import asyncio
import random
import time
from collections import deque
from dataclasses import dataclass, field
from typing import Any, Literal

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

    def _trim(self, now: float) -> None:
        horizon = now - self.policy.breaker_window_s
        while self.window and self.window[0][0] < horizon:
            self.window.popleft()

    def error_rate(self, now: float) -> tuple[float, int]:
        self._trim(now)
        n = len(self.window)
        errors = sum(1 for _, ok in self.window if not ok)
        return (errors / n if n else 0.0), n

    def admit(self, now: float) -> float:
        """0 if a request may go now (possibly as a probe), else seconds to wait."""
        if self.state == "open":
            remaining = self.opened_at + self.policy.breaker_cooldown_s - now
            if remaining > 0:
                return remaining
            self.state, self.probes_sent, self.probes_ok = "half_open", 0, 0
        if self.state == "half_open":
            if self.probes_sent >= self.policy.breaker_half_open_probes:
                return 0.05  # wait for the probes in flight to decide
            self.probes_sent += 1
        return 0.0

    def record(self, ok: bool, now: float) -> None:
        if self.state == "half_open":
            if not ok:
                self._open(now)
                return
            self.probes_ok += 1
            if self.probes_ok >= self.policy.breaker_half_open_probes:
                self.state = "closed"
                self.window.clear()
            return
        if self.state == "open":
            return  # a late answer from before the trip
        self.window.append((now, ok))
        rate, n = self.error_rate(now)
        if n >= self.policy.breaker_min_requests and rate > self.policy.breaker_error_threshold:
            self._open(now)

    def _open(self, now: float) -> None:
        self.state, self.opened_at = "open", now
        self.window.clear()


@dataclass
class RateLimitView:
    """What the provider last said about our quota (X-RateLimit-*), and 429 pauses."""

    limit: int | None = None
    remaining: int | None = None
    reset_at: float | None = None
    seen_at: float = 0.0
    paused_until: float = 0.0

    def low(self, threshold: int, now: float) -> bool:
        return (
            self.remaining is not None
            and self.remaining < threshold
            and self.reset_at is not None
            and now < self.reset_at
        )


@dataclass
class PartitionState:
    """One provider's share on one partition: meters and breaker."""

    policy: ProviderPolicy
    partitions: int
    total: Gcra = field(init=False)
    non_critical: Gcra = field(init=False)
    breaker: Breaker = field(init=False)

    def __post_init__(self) -> None:
        rate = self.policy.rate_per_s / self.partitions if self.policy.rate_per_s else 0.0
        reserve = self.policy.critical_reserve
        self.total = Gcra(rate)
        self.non_critical = Gcra(rate * (1.0 - reserve))
        self.breaker = Breaker(self.policy)

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
        self.total.tat = float(snap.get("tat", 0.0))
        self.non_critical.tat = float(snap.get("tat_nc", 0.0))
        state = snap.get("breaker", "closed")
        if state in ("open", "half_open"):
            # A half-open breaker restarts as open: its probes were lost with the worker.
            self.breaker.state = "open"
            self.breaker.opened_at = float(snap.get("opened_at", 0.0))


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
    ) -> None:
        self.policies = policies
        self.partitions = partitions
        self.store = store
        self.key_for = key_for
        self.clock = clock
        self.states: dict[tuple[str, int], PartitionState] = {}
        self.views: dict[str, RateLimitView] = {name: RateLimitView() for name in policies}
        self._locks: dict[tuple[str, int, str], asyncio.Lock] = {}

    def state(self, provider: str, partition: int) -> PartitionState:
        key = (provider, partition)
        st = self.states.get(key)
        if st is None:
            st = PartitionState(self.policies[provider], self.partitions)
            snap = self.store.get(self.key_for(provider, partition, self.partitions))
            if snap:
                st.restore(snap)
            self.states[key] = st
        return st

    def forget(self, partitions: set[int]) -> None:
        """Drop shares of partitions this worker no longer owns (after persisting them)."""
        for key in [k for k in self.states if k[1] in partitions]:
            del self.states[key]

    def flush(self, flush_every_s: float) -> int:
        now = self.clock()
        for (provider, partition), st in self.states.items():
            self.store[self.key_for(provider, partition, self.partitions)] = st.snapshot(
                now, flush_every_s
            )
        return len(self.states)

    def persist_breaker(self, provider: str, partition: int, flush_every_s: float) -> None:
        st = self.state(provider, partition)
        self.store[self.key_for(provider, partition, self.partitions)] = st.snapshot(
            self.clock(), flush_every_s
        )

    def observe(
        self, provider: str, limit: int | None, remaining: int | None, reset_at: float | None
    ) -> None:
        view = self.views[provider]
        view.limit, view.remaining, view.reset_at = limit, remaining, reset_at
        view.seen_at = self.clock()

    def pause(self, provider: str, seconds: float | None) -> None:
        """A 429: nothing goes to this provider from this worker until Retry-After."""
        view = self.views[provider]
        pause = 1.0 if seconds is None else seconds
        view.paused_until = max(view.paused_until, self.clock() + pause)

    def wait_s(self, provider: str, partition: int, lane: str) -> float:
        """Seconds before a ``lane`` message may go to ``provider`` on ``partition``."""
        now = self.clock()
        policy = self.policies[provider]
        view = self.views[provider]
        wait = view.paused_until - now
        if lane == "bulk" and view.low(policy.remaining_threshold, now):
            return max(wait, (view.reset_at or now) - now, 0.05)  # held until the reset
        st = self.state(provider, partition)
        if not st.limited and wait <= 0:
            return 0.0
        cost = 2.0 if lane == "normal" and view.low(policy.remaining_threshold, now) else 1.0
        meters = [st.total] if lane == "critical" else [st.total, st.non_critical]
        return max([wait, *(m.wait(now, cost) for m in meters if st.limited)])

    async def acquire(self, provider: str, partition: int, lane: str, gate: Any) -> None:
        """Wait for a slot at the provider's pace, then take it. One waiter per
        (provider, partition, lane) polls the meters; the lane's others queue behind it."""
        lock = self._locks.setdefault((provider, partition, lane), asyncio.Lock())
        async with lock:
            while True:
                await gate.wait_turn(lane)
                wait = self.wait_s(provider, partition, lane)
                if wait <= 0:
                    break
                await asyncio.sleep(min(wait, 0.25))
            st = self.state(provider, partition)
            if st.limited:
                now = self.clock()
                view = self.views[provider]
                cost = (
                    2.0
                    if lane == "normal"
                    and view.low(self.policies[provider].remaining_threshold, now)
                    else 1.0
                )
                st.total.take(now, cost)
                if lane != "critical":
                    st.non_critical.take(now, cost)
