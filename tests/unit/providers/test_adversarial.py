"""The real DispatchStage and HttpProvider against a provider that misbehaves at socket
level: a raw asyncio server answering from a script (Retry-After 0, nan, -1, inf, an
HTTP date, huge values; 429 to every probe; 2xx with garbage; accept-then-hang;
accept-then-close). Each test counts what the server saw.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from email.utils import formatdate
from typing import Any

import pytest

from app.models import DispatchRequest
from app.providers.http import HttpProvider
from app.serde import Serde
from app.settings import ProviderPolicy
from app.stages.common import Origin
from app.stages.dispatch import DispatchStage
from app.stages.lanes import LaneGate
from app.stages.pressure import PressureBoard
from app.tables.ledger import Ledger
from app.tables.pressure import key_for
from tests.plugins.factories import dispatch_request
from tests.plugins.metrics import RecordingMetrics

ORIGIN = Origin("email.dispatch.critical", 1, 3, None, b"e-1")


@dataclass
class Seen:
    at: float  # time.monotonic() at arrival
    key: str
    answer: str


@dataclass
class Adversary:
    """Answers each request with the next scripted behaviour (the last one repeats).

    Behaviours: ``"202"`` (with an X-Message-Id), ``"202-garbage"`` (no id, garbage
    body), ``"429:<Retry-After value>"``, ``"429"`` (no Retry-After), ``"500"``,
    ``"409"``, ``"hang"`` (read the request, never answer), ``"close"`` (read the
    request, close the connection without a byte)."""

    script: list[str]
    seen: list[Seen] = field(default_factory=list)
    port: int = 0
    server: Any = None
    hung: list[asyncio.StreamWriter] = field(default_factory=list)

    async def start(self) -> None:
        self.server = await asyncio.start_server(self._conn, "127.0.0.1", 0)
        self.port = self.server.sockets[0].getsockname()[1]

    async def stop(self) -> None:
        for w in self.hung:
            w.close()
        self.server.close()
        await self.server.wait_closed()

    def keys(self) -> list[str]:
        return [s.key for s in self.seen]

    async def _conn(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            while True:
                head = await reader.readuntil(b"\r\n\r\n")
                headers = {}
                for line in head.decode("latin-1").split("\r\n")[1:]:
                    if ":" in line:
                        k, v = line.split(":", 1)
                        headers[k.strip().lower()] = v.strip()
                await reader.readexactly(int(headers.get("content-length", "0")))
                n = len(self.seen)
                answer = self.script[min(n, len(self.script) - 1)]
                self.seen.append(Seen(time.monotonic(), headers.get("idempotency-key", ""), answer))
                if answer == "hang":
                    self.hung.append(writer)
                    await asyncio.Event().wait()
                if answer == "close":
                    writer.transport.abort()
                    return
                writer.write(_response(answer, n))
                await writer.drain()
        except (asyncio.IncompleteReadError, ConnectionError, asyncio.CancelledError):
            writer.close()


def _response(answer: str, n: int) -> bytes:
    extra = ""
    body = b""
    if answer == "202":
        status, extra = "202 Accepted", f"X-Message-Id: m-{n}\r\n"
    elif answer == "202-garbage":
        status, body = "202 Accepted", b"\x00\xff{not json"
    elif answer.startswith("429"):
        status = "429 Too Many Requests"
        if ":" in answer:
            extra = f"Retry-After: {answer.split(':', 1)[1]}\r\n"
        body = b'{"errors": [{"message": "slow down"}]}'
    elif answer == "409":
        status, body = "409 Conflict", b'{"name": "concurrent_idempotent_requests"}'
    else:
        status = "500 Internal Server Error"
    return (
        f"HTTP/1.1 {status}\r\n{extra}Content-Length: {len(body)}\r\n\r\n".encode() + body
    )


@pytest.fixture
async def adversaries() -> AsyncIterator[list[Adversary]]:
    made: list[Adversary] = []
    yield made
    for a in made:
        await a.stop()


async def serve(made: list[Adversary], *script: str) -> Adversary:
    a = Adversary(list(script))
    await a.start()
    made.append(a)
    return a


def request(event_id: str, priority: str = "critical") -> DispatchRequest:
    return dispatch_request(event_id, priority, from_address="Sender\u2028Name <s@b.example>")


def stage_for(serde: Serde, *pairs: tuple[Adversary, ProviderPolicy]) -> DispatchStage:
    policies = {p.name: p for _, p in pairs}
    providers = {
        p.name: HttpProvider(
            name=p.name, base_url=f"http://127.0.0.1:{a.port}", api_key="k", timeout_s=p.timeout_s
        )
        for a, p in pairs
    }
    metrics = RecordingMetrics()
    stage = DispatchStage(
        serde,
        providers,  # type: ignore[arg-type]
        policies,
        pairs[0][1].name,
        Ledger({}),
        LaneGate(),
        PressureBoard(policies, 4, {}, key_for),
        metrics=metrics,
    )
    stage.recorded = metrics  # type: ignore[attr-defined]
    return stage


def fast(name: str = "p", **over: Any) -> ProviderPolicy:
    """A policy on a short time scale: pauses within [0.2 s, 0.6 s]."""
    fields: dict[str, Any] = dict(
        name=name,
        retry_after_min_s=0.2,
        retry_after_max_s=0.6,
        retry_backoff_base_s=0.2,
        retry_backoff_cap_s=0.4,
        timeout_s=0.5,
    )
    fields.update(over)
    return ProviderPolicy(**fields)


async def send(
    stage: DispatchStage, serde: Serde, event_id: str, lane: str = "critical", close: bool = True
) -> Any:
    payload = serde.encode("email.dispatch.critical", request(event_id, lane))
    try:
        return await asyncio.wait_for(stage.handle(payload, ORIGIN, lane), 20)
    finally:
        if close:
            for p in stage.providers.values():
                await p.aclose()


@pytest.mark.parametrize(
    "retry_after",
    [
        "0",
        "nan",
        "-1",
        "inf",
        "1.5",
        "99999999999999999999999999",
        "",
        "\u2028",
        formatdate(time.time() + 3600, usegmt=True),  # an hour ahead: clamped
        formatdate(time.time() - 3600, usegmt=True),  # in the past: the minimum
        None,
    ],
)
async def test_retry_after_values_are_paced_and_bounded(
    serde: Serde, adversaries: list[Adversary], retry_after: str | None
) -> None:
    answer = "429" if retry_after is None else f"429:{retry_after}"
    adv = await serve(adversaries, answer, answer, answer, "202")
    stage = stage_for(serde, (adv, fast()))
    pauses: list[float] = []
    real_pause = stage.board.pause

    def pause(name: str, seconds: float | None) -> float:
        got = real_pause(name, seconds)
        pauses.append(stage.board.views[name].paused_until - stage.board.clock())
        return got

    stage.board.pause = pause  # type: ignore[method-assign,assignment]
    out = await send(stage, serde, "e-1")
    assert out is not None and out.topic == "sent"
    assert [s.answer for s in adv.seen] == [answer] * 3 + ["202"]
    # never faster than the policy: every retry after a 429 waited at least the minimum
    gaps = [b.at - a.at for a, b in zip(adv.seen, adv.seen[1:], strict=False)]
    assert min(gaps) >= 0.2 - 0.01
    # never stopped (critical mail) longer than the configured maximum
    assert len(pauses) == 3 and all(0.0 < p <= 0.6 + 1e-6 for p in pauses)
    assert out.value.attempts == 1  # 429s are not attempts


async def test_every_probe_throttled_reopens_the_breaker_instead_of_hanging_half_open(
    serde: Serde, adversaries: list[Adversary]
) -> None:
    adv = await serve(adversaries, "500", "429:0", "429:0", "202", "202", "202")
    policy = fast(
        breaker_min_requests=1, breaker_cooldown_s=0.2, breaker_half_open_probes=1
    )
    stage = stage_for(serde, (adv, policy))
    out = await send(stage, serde, "e-1")
    assert out is not None and out.topic == "sent"
    # 500 opens; each throttled probe (half-open) reopens it; the 202 probe closes it
    states = [s for _, s in stage.recorded.of("breaker_state")]  # type: ignore[attr-defined]
    assert states == ["open", "open", "open", "closed"]
    assert len(adv.seen) == 4


@pytest.mark.parametrize("misbehaviour", ["hang", "close"])
async def test_an_accepted_then_lost_request_is_never_sent_again_without_a_key(
    serde: Serde, adversaries: list[Adversary], misbehaviour: str
) -> None:
    # SendGrid-shaped: no idempotency key, so no resend and no failover
    first = await serve(adversaries, misbehaviour, "202")
    fallback = await serve(adversaries, "202")
    stage = stage_for(
        serde,
        (first, fast("a", fallback="b", breaker_min_requests=1)),
        (fallback, fast("b")),
    )
    out = await send(stage, serde, "e-1")
    assert out is not None and (out.topic, out.value.reason) == ("dead", "ambiguous")
    assert first.keys() == ["e-1"] and fallback.keys() == []
    # parked: a redelivery is parked again, an operator replay sends it
    assert stage.ledger.get("e-1").state == "ambiguous"  # type: ignore[union-attr]


@pytest.mark.parametrize("misbehaviour", ["hang", "close", "409"])
async def test_a_keyed_provider_gets_the_same_key_and_no_failover(
    serde: Serde, adversaries: list[Adversary], misbehaviour: str
) -> None:
    first = await serve(adversaries, misbehaviour, "202")
    fallback = await serve(adversaries, "202")
    stage = stage_for(
        serde,
        (
            first,
            fast(
                "a",
                fallback="b",
                idempotency_ttl_s=86_400,
                breaker_min_requests=1,
                breaker_cooldown_s=0.2,
            ),
        ),
        (fallback, fast("b")),
    )
    out = await send(stage, serde, "e-1", close=False)
    assert out is not None and out.topic == "dispatch.retry-1"
    assert out.value.provider == "a"  # pinned: only the provider holding the key
    retry = serde.encode("email.dispatch.critical", out.value)
    try:
        out = await asyncio.wait_for(stage.handle(retry, ORIGIN, "critical"), 20)
    finally:
        for p in stage.providers.values():
            await p.aclose()
    assert out is not None and out.topic == "sent"
    # the retry waited for a's breaker (opened by the timeout) rather than fail over
    assert first.keys() == ["e-1", "e-1"] and fallback.keys() == []


async def test_at_least_once_is_a_setting(serde: Serde, adversaries: list[Adversary]) -> None:
    adv = await serve(adversaries, "close", "202")
    stage = stage_for(serde, (adv, fast(ambiguous_resend=True)))
    out = await send(stage, serde, "e-1")
    assert out is not None and out.topic == "dispatch.retry-1"


async def test_a_refused_connection_fails_over(serde: Serde, adversaries: list[Adversary]) -> None:
    gone = await serve(adversaries, "202")
    await gone.stop()
    adversaries.remove(gone)  # nothing listens there now: connection refused
    fallback = await serve(adversaries, "202")
    stage = stage_for(
        serde, (gone, fast("a", fallback="b", breaker_min_requests=1)), (fallback, fast("b"))
    )
    out = await send(stage, serde, "e-1")
    assert out is not None and out.topic == "sent" and out.value.provider == "b"
    assert fallback.keys() == ["e-1"]


async def test_a_2xx_with_garbage_is_sent_with_the_id_missing(
    serde: Serde, adversaries: list[Adversary]
) -> None:
    adv = await serve(adversaries, "202-garbage")
    stage = stage_for(serde, (adv, fast()))
    out = await send(stage, serde, "e-1")
    assert out is not None and out.topic == "sent" and out.value.provider_message_id == ""
    assert stage.stats.missing_message_id == 1 and len(adv.seen) == 1


async def test_a_header_the_client_cannot_encode_is_the_messages_fault(
    serde: Serde, adversaries: list[Adversary]
) -> None:
    adv = await serve(adversaries, "202")
    stage = stage_for(serde, (adv, fast(breaker_min_requests=1)))
    out = await send(stage, serde, "\u00e9v\u00e9nement-1")  # non-ASCII Idempotency-Key
    assert out is not None and (out.topic, out.value.reason) == ("dead", "invalid_header")
    assert adv.seen == []
    breaker = stage.board.state("p", ORIGIN.partition).breaker
    assert breaker.state == "closed" and len(breaker.window) == 0


async def test_the_quota_holds_against_an_answering_provider(
    serde: Serde, adversaries: list[Adversary]
) -> None:
    adv = await serve(adversaries, "202")
    quota = 20.0
    stage = stage_for(serde, (adv, fast(quota_per_s=quota)))
    stage.board.own({0, 1, 2, 3})  # this worker owns every partition: the whole quota
    payloads = [
        serde.encode("email.dispatch.critical", request(f"e-{i}", "normal")) for i in range(30)
    ]
    try:
        outs = await asyncio.wait_for(
            asyncio.gather(*(stage.handle(p, ORIGIN, "normal") for p in payloads)), 30
        )
    finally:
        for p in stage.providers.values():
            await p.aclose()
    assert all(o is not None and o.topic == "sent" for o in outs)
    times = [s.at for s in adv.seen]
    # in any one-second window no more than the quota (arrivals can only be later than sends)
    worst = max(sum(1 for t in times if t0 <= t < t0 + 1.0) for t0 in times)
    assert len(times) == 30 and worst <= quota
