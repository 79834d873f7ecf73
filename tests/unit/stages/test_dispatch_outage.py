"""Retries outlast outages (issue 13): a 2-minute provider outage while one email
arrives every 5 s ends with every email delivered and none dead.

The real DispatchStage and PressureBoard with default policies, on a virtual clock:
the stage's and the board's sleeps advance it, and a scheduler plays the delayed
retry topics (each retry comes back at its ``not_before``). The provider answers 503
during the outage (and, in the second case, drops the connection before sending,
which is unambiguous too). Run with ``-s`` to see the figures.
"""

from __future__ import annotations

import asyncio
import heapq
import itertools
from dataclasses import dataclass, field
from typing import Any

import pytest

from app.errors import TransientProviderError
from app.models import DispatchRequest
from app.providers.base import OutboundEmail, SendReceipt
from app.serde import Serde
from app.settings import ProviderPolicy
from app.stages.common import Origin
from app.stages.dispatch import DispatchStage
from app.stages.lanes import LaneGate
from app.stages.pressure import PressureBoard
from app.tables.ledger import Ledger
from app.tables.pressure import key_for

OUTAGE = (30.0, 150.0)  # seconds of virtual time: 2 minutes
EVERY_S = 5.0
LAST_ARRIVAL_S = 240.0


@dataclass
class Down:
    """Fails every request during the outage, then accepts."""

    clock: list[float]
    status: int | None
    name: str = "p"
    requests: list[tuple[float, str]] = field(default_factory=list)
    accepted: list[str] = field(default_factory=list)

    async def send(self, email: OutboundEmail) -> SendReceipt:
        now = self.clock[0]
        self.requests.append((now, email.event_id))
        if OUTAGE[0] <= now < OUTAGE[1]:
            what = "503" if self.status else "connection refused"
            raise TransientProviderError(what, provider=self.name, status=self.status)
        self.accepted.append(email.event_id)
        return SendReceipt(provider=self.name, message_id=f"m-{email.event_id}", latency_s=0.05)

    async def aclose(self) -> None:
        pass


def request(i: int, at_s: float) -> DispatchRequest:
    return DispatchRequest(
        event_id=f"e-{i}",
        priority="normal",
        to="a@b.example",
        from_address="s@b.example",
        subject="s",
        html="<p>h</p>",
        text="h",
        template="t",
        template_version="v1",
        source="src",
        accepted_at=int(at_s * 1000),
        rendered_at=int(at_s * 1000),
    )


@pytest.mark.parametrize("status", [503, None], ids=["5xx", "refused"])
async def test_a_two_minute_outage_delivers_every_email_and_kills_none(
    serde: Serde, status: int | None
) -> None:
    now = [0.0]

    async def sleep(s: float) -> None:
        now[0] += max(s, 0.001)
        await asyncio.sleep(0)

    policy = ProviderPolicy(name="p")  # the defaults: min failing 15 min, breaker 20 requests
    provider = Down(now, status)
    board = PressureBoard({"p": policy}, 4, {}, key_for, clock=lambda: now[0], sleep=sleep)
    stage = DispatchStage(
        serde,
        {"p": provider},
        {"p": policy},
        "p",
        Ledger({}, clock=lambda: now[0]),
        LaneGate(),
        board,
        clock=lambda: now[0],
        sleep=sleep,
    )
    queue: list[tuple[float, int, bytes]] = []
    n = 0
    while n * EVERY_S <= LAST_ARRIVAL_S:
        req = request(n, n * EVERY_S)
        heapq.heappush(queue, (n * EVERY_S, n, serde.encode("email.dispatch.normal", req)))
        n += 1
    seq = n
    sent: dict[str, Any] = {}
    dead: dict[str, Any] = {}
    retries = 0
    while queue:
        due, _, payload = heapq.heappop(queue)
        now[0] = max(now[0], due)
        origin = Origin("email.dispatch.normal", 0, seq, None, b"k")
        out = await asyncio.wait_for(stage.handle(payload, origin, "normal"), 10)
        assert out is not None
        if out.topic == "sent":
            sent[out.value.event_id] = out.value
        elif out.topic == "dead":
            dead[out.value.event_id] = out.value
        else:
            retries += 1
            seq += 1
            nb = out.value.not_before / 1000.0
            heapq.heappush(queue, (nb, seq, serde.encode("email.dispatch.normal", out.value)))
    waits = [(r.sent_at - r.accepted_at) / 1000.0 for r in sent.values()]
    attempts = [r.attempts for r in sent.values()]
    print(
        f"\noutage {OUTAGE[1] - OUTAGE[0]:.0f} s ({'503' if status else 'refused'}), one email "
        f"every {EVERY_S:.0f} s: {n} emails, {len(sent)} sent, {len(dead)} dead, "
        f"{len(provider.requests)} requests, {retries} delayed retries, most attempts "
        f"{max(attempts)}, longest accepted->sent {max(waits):.1f} s, last sent at "
        f"{max(r.sent_at for r in sent.values()) / 1000.0:.1f} s"
    )
    assert not dead, {k: v.reason for k, v in dead.items()}
    assert len(sent) == n and sorted(provider.accepted) == sorted(sent)
    assert len(provider.accepted) == n  # each accepted exactly once
    # the outage really hit: some emails failed and waited it out
    assert max(attempts) > 3 and max(waits) >= 60
    # never sent faster than the retries' backoff: no email came back within 0.5 s
    by_email: dict[str, list[float]] = {}
    for at, eid in provider.requests:
        by_email.setdefault(eid, []).append(at)
    gaps = [b - a for ts in by_email.values() for a, b in itertools.pairwise(ts)]
    assert min(gaps) >= 0.5
