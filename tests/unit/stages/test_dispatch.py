from __future__ import annotations

import asyncio
import itertools
import time
from typing import Any

import pytest

from app.errors import PermanentProviderError, ThrottledError, TransientProviderError
from app.models import DispatchRequest, SendResult
from app.providers.base import OutboundEmail, SendReceipt
from app.serde import Serde
from app.settings import ProviderPolicy
from app.stages.common import Origin
from app.stages.dispatch import DispatchStage
from app.stages.lanes import LaneGate
from app.stages.pressure import PressureBoard
from app.tables.ledger import Ledger
from app.tables.pressure import key_for
from tests.plugins.factories import dispatch_request as request
from tests.plugins.fakes import FakeProvider
from tests.plugins.ledger import AckedTable

ORIGIN = Origin("email.dispatch.normal", 1, 3, None, b"e-1")


async def no_sleep(_: float) -> None:
    await asyncio.sleep(0)


def make(
    serde: Serde,
    *providers: FakeProvider,
    table: dict[bytes, Any] | None = None,
    policies: list[ProviderPolicy] | None = None,
    max_attempts: int = 3,
    clock: Any = lambda: 2.5,
) -> DispatchStage:
    pols = {p.name: p for p in (policies or [ProviderPolicy(name=pr.name) for pr in providers])}
    board = PressureBoard(pols, 4, {}, key_for, clock=clock)
    return DispatchStage(
        serde,
        {p.name: p for p in providers},
        pols,
        next(iter(pols)),
        Ledger({} if table is None else table),
        LaneGate(),
        board,
        max_attempts=max_attempts,
        clock=clock,
        sleep=no_sleep,
    )


def encode(serde: Serde, req: DispatchRequest) -> bytes:
    return serde.encode("email.dispatch.normal", req)


async def test_sends_and_records_result(serde: Serde) -> None:
    provider = FakeProvider()
    stage = make(serde, provider)
    out = await stage.handle(encode(serde, request()), ORIGIN, "normal")
    assert out is not None and out.topic == "sent"
    result = out.value
    assert isinstance(result, SendResult)
    assert (result.provider_message_id, result.attempts, result.time_to_send_ms) == (
        "m-e-1",
        1,
        1_500.0,
    )
    entry = stage.ledger.get("e-1")  # sent once its SendResult is acked (confirm)
    assert entry is not None and (entry.state, entry.message_id) == ("accepted", "m-e-1")


async def test_already_sent_is_suppressed(serde: Serde) -> None:
    provider = FakeProvider()
    stage = make(serde, provider)
    await stage.handle(encode(serde, request()), ORIGIN, "normal")
    await stage.ledger.confirm(["e-1"])  # its SendResult was acked
    assert await stage.handle(encode(serde, request()), ORIGIN, "normal") is None
    assert len(provider.calls) == 1 and stage.stats.duplicates_suppressed == 1


@pytest.mark.parametrize("replay", [False, True])
async def test_an_accepted_email_gets_its_result_again_and_no_request(
    serde: Serde, replay: bool
) -> None:
    # a crash after the provider accepted it (mark acked), before its SendResult (or
    # the sent mark) was acked: the result is produced again from the ledger
    table = {b"e-1": {"s": "accepted", "p": "p", "m": "m-9", "t": 2.25}}
    provider = FakeProvider(name="p")
    stage = make(serde, provider, table=table, policies=[ProviderPolicy(name="p")])
    origin = replayed(5) if replay else ORIGIN
    out = await stage.handle(encode(serde, request(replay=replay)), origin, "normal")
    assert out is not None and out.topic == "sent" and provider.calls == []
    result = out.value
    assert (result.event_id, result.provider, result.provider_message_id) == ("e-1", "p", "m-9")
    assert (result.sent_at, result.time_to_send_ms, result.attempts) == (2_250, 1_250.0, 1)


async def test_the_accepted_mark_is_acked_by_kafka_before_the_send_result_is_returned(
    serde: Serde,
) -> None:
    # else email.sent could be acked with the mark still buffered: a crash then finds
    # in_flight, and an email that was sent is parked (or resent with its key)
    table = AckedTable()
    policy = ProviderPolicy(name="p", idempotency_ttl_s=60)
    stage = make(serde, FakeProvider(name="p"), table=table, policies=[policy])
    task = asyncio.ensure_future(stage.handle(encode(serde, request()), ORIGIN, "normal"))
    for _ in range(20):
        await asyncio.sleep(0)
    assert table.writes == [(b"e-1", "in_flight"), (b"e-1", "accepted")] and not task.done()
    table.ack(b"e-1")
    out = await asyncio.wait_for(task, 5)
    assert out is not None and out.topic == "sent"


async def test_concurrent_duplicates_send_once(serde: Serde) -> None:
    # the copies wait for the first attempt, then find it accepted: its SendResult
    # again from the ledger (a duplicate record, never a second request)
    provider = FakeProvider(delay=0.01)
    stage = make(serde, provider)
    payload = encode(serde, request())
    outs = await asyncio.gather(*(stage.handle(payload, ORIGIN, "normal") for _ in range(5)))
    assert len(provider.calls) == 1
    assert all(o is not None and o.topic == "sent" for o in outs)
    assert {o.value.provider_message_id for o in outs if o is not None} == {"m-e-1"}


async def test_a_copy_of_an_email_in_flight_here_is_sent_when_that_attempt_never_sends(
    serde: Serde,
) -> None:
    """A redelivered copy arrives while the first attempt waits (its pace, a breaker);
    that attempt then ends without a request (fenced after a stall, or revoked). The
    copy must send the email: acked at once, as before, it let the offset be committed
    with the email never sent (10 lost in a SIGKILL run on a starved machine)."""
    table: dict[bytes, Any] = {}
    provider = FakeProvider()
    stage = make(serde, provider, table=table)
    payload = encode(serde, request())
    hold = asyncio.Event()
    real_acquire = stage.board.acquire

    async def stuck_first(*args: Any, **kw: Any) -> None:
        if not hold.is_set():
            hold.set()
            await asyncio.sleep(3600)  # the first attempt: waits until cancelled
        await real_acquire(*args, **kw)

    stage.board.acquire = stuck_first  # type: ignore[method-assign]
    first = asyncio.ensure_future(stage.handle(payload, ORIGIN, "normal"))
    await asyncio.wait_for(hold.wait(), 2)
    copy = asyncio.ensure_future(stage.handle(payload, ORIGIN, "normal"))
    for _ in range(20):
        await asyncio.sleep(0)
    assert not copy.done()  # waits for the first attempt, is not acked meanwhile
    first.cancel()  # fenced or revoked before its request
    out = await asyncio.wait_for(copy, 5)
    assert out is not None and out.topic == "sent"
    assert [c.event_id for c in provider.calls] == ["e-1"]
    assert table[b"e-1"]["s"] == "accepted"


async def test_in_flight_http_is_resent_with_the_same_key(serde: Serde) -> None:
    # only to a provider that honours keys, and while the key lives
    table = {b"e-1": {"s": "in_flight", "p": "fake", "m": None, "t": 2.0}}
    provider = FakeProvider()
    policies = [ProviderPolicy(name="fake", idempotency_ttl_s=86_400)]
    out = await make(serde, provider, table=table, policies=policies).handle(
        encode(serde, request()), ORIGIN, "normal"
    )
    assert out is not None and out.topic == "sent"
    assert provider.calls[0].event_id == "e-1"


@pytest.mark.parametrize(
    ("ttl", "at"),
    [(None, 2.0), (0.0, 2.0), (86_400.0, 2.5 - 86_400.0)],
    ids=["declared", "0", "expired"],
)
async def test_in_flight_without_a_valid_key_is_parked_ambiguous(
    serde: Serde, ttl: float | None, at: float
) -> None:
    table = {b"e-1": {"s": "in_flight", "p": "fake", "m": None, "t": at}}
    provider = FakeProvider()
    policies = [ProviderPolicy(name="fake", idempotency_ttl_s=ttl)]
    stage = make(serde, provider, table=table, policies=policies)
    out = await stage.handle(encode(serde, request()), ORIGIN, "normal")
    assert out is not None and (out.topic, out.value.reason) == ("dead", "ambiguous")
    assert not provider.calls and stage.ledger.get("e-1").state == "ambiguous"  # type: ignore[union-attr]


async def test_in_flight_is_resent_when_the_policy_chooses_at_least_once(serde: Serde) -> None:
    table = {b"e-1": {"s": "in_flight", "p": "fake", "m": None, "t": 2.0}}
    provider = FakeProvider()
    policies = [ProviderPolicy(name="fake", ambiguous_resend=True)]
    out = await make(serde, provider, table=table, policies=policies).handle(
        encode(serde, request()), ORIGIN, "normal"
    )
    assert out is not None and out.topic == "sent" and len(provider.calls) == 1


async def test_in_flight_smtp_is_held_for_reconciliation(serde: Serde) -> None:
    table = {b"e-1": {"s": "in_flight", "p": "smtp", "m": None, "t": 0}}
    provider = FakeProvider(name="smtp")
    stage = make(serde, provider, table=table, policies=[ProviderPolicy(name="smtp", kind="smtp")])
    out = await stage.handle(encode(serde, request()), ORIGIN, "normal")
    assert out is not None and out.topic == "dead"
    assert out.value.reason == "ambiguous" and not provider.calls


async def test_permanent_rejection_is_dead_at_once(serde: Serde) -> None:
    stage = make(
        serde, FakeProvider(PermanentProviderError("bad rcpt", provider="fake", status=400))
    )
    out = await stage.handle(encode(serde, request()), ORIGIN, "normal")
    assert out is not None and out.topic == "dead"
    dl = out.value
    assert (dl.reason, dl.retriable, dl.provider, dl.event_id) == (
        "provider_rejected",
        False,
        "fake",
        "e-1",
    )
    assert [a.reason for a in dl.history] == ["provider_rejected"]
    assert stage.ledger.get("e-1").state == "failed"  # type: ignore[union-attr]


async def test_server_error_goes_to_a_delayed_retry(serde: Serde) -> None:
    stage = make(serde, FakeProvider(TransientProviderError("503", provider="fake", status=503)))
    out = await stage.handle(encode(serde, request()), ORIGIN, "normal")
    assert out is not None and out.topic == "dispatch.retry-1"
    retry = out.value
    assert retry.attempts == 1 and len(retry.history) == 1
    # backoff base 1 s with jitter in [0.5, 1] x base
    assert 2_500 + 500 <= retry.not_before <= 2_500 + 1_000


async def test_third_failure_is_dead_with_three_attempts(serde: Serde) -> None:
    err = TransientProviderError("500", provider="fake", status=500)
    policies = [ProviderPolicy(name="fake", retry_min_failing_s=0)]
    stage = make(serde, FakeProvider(err, err, err), policies=policies)
    payload = encode(serde, request())
    for n in (1, 2):
        out = await stage.handle(payload, ORIGIN, "normal")
        assert out is not None and out.topic == f"dispatch.retry-{n}"
        payload = encode(serde, out.value)
    out = await stage.handle(payload, ORIGIN, "normal")
    assert out is not None and out.topic == "dead"
    assert len(out.value.history) == 3 and out.value.reason == "provider_unavailable"


async def test_failures_dead_letter_only_after_the_minimum_time_of_failing(serde: Serde) -> None:
    # three failures within seconds are not enough: the email keeps retrying until it
    # has failed for retry_min_failing_s (default 15 min) and max_attempts times
    err = TransientProviderError("500", provider="fake", status=500)
    now = [1_000.0]
    stage = make(serde, FakeProvider(*[err] * 100), clock=lambda: now[0])
    assert stage.policies["fake"].retry_min_failing_s >= 900
    payload = encode(serde, request())
    topics = []
    while True:
        out = await stage.handle(payload, ORIGIN, "normal")
        assert out is not None
        topics.append(out.topic)
        if out.topic == "dead":
            break
        now[0] = out.value.not_before / 1000.0  # come back when the retry is due
        payload = encode(serde, out.value)
    dead = out.value
    first, last = dead.history[0].at, dead.history[-1].at
    assert (last - first) / 1000.0 >= 900 and len(topics) > 3
    gaps = [b.at - a.at for a, b in zip(dead.history, dead.history[1:], strict=False)]
    assert max(gaps) <= 60_000  # backoff capped at retry_backoff_cap_s
    assert gaps[:4] == sorted(gaps[:4])  # growing (exponential, jitter within [0.5, 1])


async def test_throttling_waits_and_is_not_an_attempt(serde: Serde) -> None:
    provider = FakeProvider(ThrottledError("429", provider="fake", retry_after=0.05))
    stage = make(serde, provider, clock=time.time)
    out = await stage.handle(encode(serde, request()), ORIGIN, "normal")
    assert out is not None and out.topic == "sent"
    assert out.value.attempts == 1 and len(provider.calls) == 2 and stage.stats.throttled == 1


async def test_open_breaker_fails_over_without_counting_attempts(serde: Serde) -> None:
    err = TransientProviderError("500", provider="a", status=500)
    a, b = FakeProvider(err, err, err, name="a"), FakeProvider(name="b")
    policies = [
        ProviderPolicy(name="a", breaker_min_requests=2, breaker_error_threshold=0.4, fallback="b"),
        ProviderPolicy(name="b"),
    ]
    stage = make(serde, a, b, policies=policies)
    first = await stage.handle(encode(serde, request("e-1")), ORIGIN, "normal")
    assert first is not None and first.topic == "dispatch.retry-1"  # breaker still closed
    second = await stage.handle(encode(serde, request("e-2")), ORIGIN, "normal")
    # the second failure opens a's breaker: not the message's fault, so it goes to b
    assert second is not None and second.topic == "sent" and second.value.provider == "b"
    assert second.value.attempts == 1
    assert stage.board.state("a", ORIGIN.partition).breaker.state == "open"


async def test_a_message_waiting_for_its_pace_does_not_pass_a_breaker_that_tripped(
    serde: Serde,
) -> None:
    # e-2 picks "a" while its breaker is closed, then waits its turn at a's pace;
    # meanwhile e-1's error opens the breaker, so e-2 must not be sent to "a".
    err = TransientProviderError("500", provider="a", status=500)
    a, b = FakeProvider(err, name="a"), FakeProvider(name="b")
    policies = [
        ProviderPolicy(name="a", quota_per_s=40, breaker_min_requests=1, fallback="b"),
        ProviderPolicy(name="b"),
    ]
    stage = make(serde, a, b, policies=policies, clock=time.time)
    outs = await asyncio.gather(
        stage.handle(encode(serde, request("e-1")), ORIGIN, "normal"),
        stage.handle(encode(serde, request("e-2")), ORIGIN, "normal"),
    )
    assert [(o.topic, o.value.provider) for o in outs if o is not None] == [("sent", "b")] * 2
    assert [c.event_id for c in a.calls] == ["e-1"]


async def test_undecodable_goes_dead(serde: Serde) -> None:
    out = await make(serde, FakeProvider()).handle(b"\x00\x00\x00\x99\x01zz", ORIGIN, "bulk")
    assert out is not None and (out.topic, out.value.reason) == ("dead", "undecodable")


@pytest.mark.parametrize("lane", ["critical", "bulk"])
async def test_lanes_share_the_stage(serde: Serde, lane: str) -> None:
    out = await make(serde, FakeProvider()).handle(
        encode(serde, request(priority=lane)), ORIGIN, lane
    )
    assert out is not None and out.topic == "sent"


@pytest.mark.parametrize(("kind", "waits"), [("smtp", True), ("http", True), ("keyed", False)])
async def test_in_flight_mark_is_acked_by_kafka_before_a_send_without_a_key(
    serde: Serde, kind: str, waits: bool
) -> None:
    # The order matters: a send before the mark's ack leaves a window where a crash
    # loses the in_flight mark of an email the provider may have accepted (a producer
    # flush did not prove it: the mark's own ack is awaited).
    table = AckedTable()
    events: list[str] = []
    provider = FakeProvider(name="p")
    policy = (
        ProviderPolicy(name="p", idempotency_ttl_s=86_400)
        if kind == "keyed"
        else ProviderPolicy(name="p", kind=kind)
    )
    stage = make(serde, provider, table=table, policies=[policy])
    real_send = provider.send

    async def send(email: OutboundEmail) -> SendReceipt:
        events.append("send:" + ("acked" if table.acked(b"e-1") else "pending"))
        return await real_send(email)

    provider.send = send  # type: ignore[method-assign]
    task = asyncio.ensure_future(stage.handle(encode(serde, request()), ORIGIN, "normal"))
    for _ in range(20):
        await asyncio.sleep(0)
    assert table.writes[0] == (b"e-1", "in_flight")
    if waits:
        assert events == [] and not task.done()  # holds the request until the ack
        table.ack(b"e-1")
    for _ in range(20):
        await asyncio.sleep(0)
    table.ack(b"e-1")  # the accepted mark
    out = await asyncio.wait_for(task, 5)
    assert out is not None and out.topic == "sent"
    assert events == ["send:acked" if waits else "send:pending"]


async def test_an_in_flight_mark_kafka_refused_sends_nothing_and_retries(serde: Serde) -> None:
    table = AckedTable()
    provider = FakeProvider(name="p")
    stage = make(
        serde, provider, table=table, policies=[ProviderPolicy(name="p", breaker_min_requests=1)]
    )
    task = asyncio.ensure_future(stage.handle(encode(serde, request()), ORIGIN, "normal"))
    for _ in range(20):
        await asyncio.sleep(0)
    table.fail(b"e-1")
    out = await asyncio.wait_for(task, 5)
    assert out is not None and out.topic == "dispatch.retry-1" and not provider.calls
    assert stage.board.state("p", ORIGIN.partition).breaker.state == "closed"


async def test_an_in_flight_mark_never_acked_sends_nothing(serde: Serde) -> None:
    table = AckedTable()
    provider = FakeProvider(name="p")
    stage = make(serde, provider, table=table, policies=[ProviderPolicy(name="p")])
    stage.ledger.ack_timeout_s = 0.05
    out = await asyncio.wait_for(stage.handle(encode(serde, request()), ORIGIN, "normal"), 5)
    assert out is not None and out.topic == "dispatch.retry-1" and not provider.calls


async def test_a_429_pauses_the_provider_for_its_retry_after(serde: Serde) -> None:
    # a virtual clock that sleeping advances: the second request must not go out before
    # Retry-After has passed (PressureBoard.pause as a no-op would send it at once)
    now = [100.0]

    async def sleep(s: float) -> None:
        now[0] += s
        await asyncio.sleep(0)

    sent_at: list[float] = []
    provider = FakeProvider(ThrottledError("429", provider="fake", retry_after=7.0))
    real_send = provider.send

    async def send(email: OutboundEmail) -> SendReceipt:
        sent_at.append(now[0])
        return await real_send(email)

    provider.send = send  # type: ignore[method-assign]
    stage = make(serde, provider, clock=lambda: now[0])
    stage.sleep = sleep
    stage.board.sleep = sleep
    out = await asyncio.wait_for(stage.handle(encode(serde, request()), ORIGIN, "critical"), 5)
    assert out is not None and out.topic == "sent"
    assert len(sent_at) == 2 and sent_at[1] - sent_at[0] >= 7.0


@pytest.mark.parametrize("retry_after", [0.0, float("nan"), float("inf"), -1.0, 1e12])
async def test_retry_after_garbage_neither_floods_nor_stops_critical_mail(
    serde: Serde, retry_after: float
) -> None:
    now = [100.0]

    async def sleep(s: float) -> None:
        now[0] += s
        await asyncio.sleep(0)

    sent_at: list[float] = []
    err = ThrottledError("429", provider="fake", retry_after=retry_after)
    provider = FakeProvider(err, err, err)
    real_send = provider.send

    async def send(email: OutboundEmail) -> SendReceipt:
        sent_at.append(now[0])
        return await real_send(email)

    provider.send = send  # type: ignore[method-assign]
    policy = ProviderPolicy(name="fake", retry_after_min_s=1, retry_after_max_s=900)
    stage = make(serde, provider, policies=[policy], clock=lambda: now[0])
    stage.sleep = sleep
    stage.board.sleep = sleep
    out = await asyncio.wait_for(stage.handle(encode(serde, request()), ORIGIN, "critical"), 5)
    assert out is not None and out.topic == "sent" and len(sent_at) == 4
    gaps = [b - a for a, b in itertools.pairwise(sent_at)]
    assert all(1.0 <= g <= 900.0 + 0.25 for g in gaps), gaps  # + one poll step


async def test_an_unencodable_message_is_dead_and_never_touches_the_breaker(serde: Serde) -> None:
    from app.errors import UnsendableError

    policy = ProviderPolicy(name="fake", breaker_min_requests=1)
    provider = FakeProvider(UnsendableError("U+2028 in a header"))
    stage = make(serde, provider, policies=[policy])
    out = await stage.handle(encode(serde, request()), ORIGIN, "normal")
    assert out is not None and (out.topic, out.value.reason) == ("dead", "invalid_header")
    breaker = stage.board.state("fake", ORIGIN.partition).breaker
    assert breaker.state == "closed" and len(breaker.window) == 0


async def test_a_replay_starts_a_new_run_of_failures(serde: Serde) -> None:
    # a replayed dead letter keeps its history but has attempts=0: its old failures do
    # not count toward the minimum time of failing, so an outage cannot kill it at once
    from app.models import Attempt

    old = [
        Attempt(at=0, stage="dispatch", error_class="E", reason="provider_unavailable",
                message="503", retriable=True, provider="fake")
        for _ in range(20)
    ]  # fmt: skip
    err = TransientProviderError("500", provider="fake", status=500)
    stage = make(serde, FakeProvider(err, err, err), clock=lambda: 10_000.0)
    payload = encode(serde, request(history=old, attempts=0, replay=True))
    for n in (1, 2, 3):
        out = await stage.handle(payload, ORIGIN, "normal")
        assert out is not None and out.topic == f"dispatch.retry-{n}", out.topic
        payload = encode(serde, out.value)


async def test_a_pinned_email_stays_pinned_after_a_clean_failure(serde: Serde) -> None:
    # e-1 may already be at "a" (an earlier ambiguous failure): a 503 from "a" now does
    # not prove "a" never accepted it, so it must not move to the fallback
    err = TransientProviderError("503", provider="a", status=503)
    a, b = FakeProvider(err, name="a"), FakeProvider(name="b")
    policies = [
        ProviderPolicy(name="a", fallback="b", idempotency_ttl_s=86_400, breaker_min_requests=1),
        ProviderPolicy(name="b"),
    ]
    stage = make(serde, a, b, policies=policies)
    out = await stage.handle(encode(serde, request(provider="a")), ORIGIN, "normal")
    assert out is not None and out.topic == "dispatch.retry-1" and out.value.provider == "a"
    assert not b.calls


# -- parked as ambiguous: never sent again by a redelivery, sent by an operator replay --


def replayed(n: int) -> Origin:
    """The origin of a record the replay tool produced (its n-th replay of the email)."""
    header = ("spillway-replay", str(n).encode())
    return Origin("email.dispatch.normal", 1, 3, None, b"e-1", (header,))


@pytest.mark.parametrize("kind", ["http", "smtp", "expired-key"])
async def test_a_redelivered_parked_email_is_parked_again_and_never_sent(
    serde: Serde, kind: str
) -> None:
    # a crash after parking, before the lane offset was committed: the redelivered
    # copy must not find "failed" (which sends) but "ambiguous" (issue 13)
    at = 2.5 - 86_401.0 if kind == "expired-key" else 2.0
    table = {b"e-1": {"s": "in_flight", "p": "p", "m": None, "t": at}}
    policy = {
        "http": ProviderPolicy(name="p"),
        "smtp": ProviderPolicy(name="p", kind="smtp"),
        "expired-key": ProviderPolicy(name="p", idempotency_ttl_s=86_400),
    }[kind]
    provider = FakeProvider(name="p")
    stage = make(serde, provider, table=table, policies=[policy])
    payload = encode(serde, request())
    for _ in range(3):
        out = await stage.handle(payload, ORIGIN, "normal")
        assert out is not None and (out.topic, out.value.reason) == ("dead", "ambiguous")
        assert out.value.event_id == "e-1" and out.value.provider == "p"
    assert provider.calls == []
    assert stage.ledger.get("e-1").state == "ambiguous"  # type: ignore[union-attr]


async def test_an_answer_lost_on_the_wire_is_parked_and_its_redelivery_is_not_sent(
    serde: Serde,
) -> None:
    lost = TransientProviderError("read timeout", provider="p", ambiguous=True)
    provider = FakeProvider(lost, name="p")
    stage = make(serde, provider, policies=[ProviderPolicy(name="p")])
    payload = encode(serde, request())
    first = await stage.handle(payload, ORIGIN, "normal")
    assert first is not None and (first.topic, first.value.reason) == ("dead", "ambiguous")
    again = await stage.handle(payload, ORIGIN, "normal")  # redelivered after a crash
    assert again is not None and (again.topic, again.value.reason) == ("dead", "ambiguous")
    assert len(provider.calls) == 1


@pytest.mark.parametrize("state", ["ambiguous", "in_flight"])
async def test_an_operator_replay_sends_a_parked_email(serde: Serde, state: str) -> None:
    table = {b"e-1": {"s": state, "p": "p", "m": None, "t": 2.0}}
    provider = FakeProvider(name="p")
    stage = make(serde, provider, table=table, policies=[ProviderPolicy(name="p")])
    out = await stage.handle(encode(serde, request(replay=True)), replayed(1), "normal")
    assert out is not None and out.topic == "sent" and out.value.replay
    assert [c.event_id for c in provider.calls] == ["e-1"]


async def test_a_redelivered_replay_is_parked_again_but_a_newer_replay_sends(serde: Serde) -> None:
    # replay 1 was parked again (its answer was lost): a redelivered copy of replay 1
    # is no new decision of the operator's; replay 2 is
    lost = TransientProviderError("read timeout", provider="p", ambiguous=True)
    provider = FakeProvider(lost, name="p")
    table = {b"e-1": {"s": "ambiguous", "p": "p", "m": None, "t": 2.0}}
    stage = make(serde, provider, table=table, policies=[ProviderPolicy(name="p")])
    payload = encode(serde, request(replay=True))
    out = await stage.handle(payload, replayed(1), "normal")
    assert out is not None and out.value.reason == "ambiguous" and len(provider.calls) == 1
    assert table[b"e-1"]["s"] == "ambiguous" and table[b"e-1"]["r"] == 1
    out = await stage.handle(payload, replayed(1), "normal")
    assert out is not None and out.value.reason == "ambiguous" and len(provider.calls) == 1
    out = await stage.handle(payload, replayed(2), "normal")
    assert out is not None and out.topic == "sent" and len(provider.calls) == 2


async def test_a_replay_that_crashed_in_flight_is_not_resent_by_its_redelivery(
    serde: Serde,
) -> None:
    # replay 3's in_flight mark carries its number: its redelivery after a crash finds
    # it and parks, as for any email found in flight
    table = {b"e-1": {"s": "in_flight", "p": "p", "m": None, "t": 2.0, "r": 3}}
    provider = FakeProvider(name="p")
    stage = make(serde, provider, table=table, policies=[ProviderPolicy(name="p")])
    out = await stage.handle(encode(serde, request(replay=True)), replayed(3), "normal")
    assert out is not None and out.value.reason == "ambiguous" and provider.calls == []
    assert out.value.replayed == 3  # the next replay is number 4, which may send


async def test_a_retry_copy_of_a_replay_does_not_pass_a_parked_mark(serde: Serde) -> None:
    # a retry record keeps replay=True but carries no replay header: not an operator's
    # decision, and it must not lower the mark's number either
    table = {b"e-1": {"s": "ambiguous", "p": "p", "m": None, "t": 2.0, "r": 2}}
    provider = FakeProvider(name="p")
    stage = make(serde, provider, table=table, policies=[ProviderPolicy(name="p")])
    out = await stage.handle(encode(serde, request(replay=True)), ORIGIN, "normal")
    assert out is not None and out.value.reason == "ambiguous" and provider.calls == []
    assert table[b"e-1"]["r"] == 2
    out = await stage.handle(encode(serde, request(replay=True)), replayed(2), "normal")
    assert out is not None and out.value.reason == "ambiguous" and provider.calls == []


async def test_a_later_mark_never_lowers_the_replay_number(serde: Serde) -> None:
    # replay 2 fails cleanly (503): its retry copy (no header) writes in_flight and
    # failed; replay 2's own record redelivered after a crash must not pass as newer
    err = TransientProviderError("503", provider="p", status=503)
    provider = FakeProvider(err, err, name="p")
    table: dict[bytes, Any] = {}
    stage = make(serde, provider, table=table, policies=[ProviderPolicy(name="p")])
    out = await stage.handle(encode(serde, request(replay=True)), replayed(2), "normal")
    assert out is not None and out.topic == "dispatch.retry-1"
    assert (table[b"e-1"]["s"], table[b"e-1"]["r"]) == ("failed", 2)
    out = await stage.handle(encode(serde, out.value), ORIGIN, "normal")  # the retry copy
    assert out is not None and out.topic == "dispatch.retry-2" and table[b"e-1"]["r"] == 2


async def test_the_ambiguous_mark_is_acked_by_kafka_before_the_dead_letter_is_returned(
    serde: Serde,
) -> None:
    # else the dead letter could be acked and its input offset committed while the
    # mark is still in the producer's buffer: a crash loses it, and the retry copy or
    # a replayed record finds in_flight or nothing
    table = AckedTable({b"e-1": {"s": "in_flight", "p": "p", "m": None, "t": 2.0}})
    stage = make(serde, FakeProvider(name="p"), table=table, policies=[ProviderPolicy(name="p")])
    task = asyncio.ensure_future(stage.handle(encode(serde, request()), ORIGIN, "normal"))
    for _ in range(20):
        await asyncio.sleep(0)
    assert table.writes == [(b"e-1", "ambiguous")] and not task.done()
    table.ack(b"e-1")
    out = await asyncio.wait_for(task, 5)
    assert out is not None and out.value.reason == "ambiguous"


async def test_an_ambiguous_mark_kafka_refused_returns_no_dead_letter(serde: Serde) -> None:
    from app.tables.ledger import LedgerWriteError

    table = AckedTable({b"e-1": {"s": "in_flight", "p": "p", "m": None, "t": 2.0}})
    stage = make(serde, FakeProvider(name="p"), table=table, policies=[ProviderPolicy(name="p")])
    task = asyncio.ensure_future(stage.handle(encode(serde, request()), ORIGIN, "normal"))
    for _ in range(20):
        await asyncio.sleep(0)
    table.fail(b"e-1")
    with pytest.raises(LedgerWriteError):  # an infrastructure fault: nothing acked
        await asyncio.wait_for(task, 5)


async def test_the_dead_letter_counts_the_replays_so_the_next_one_is_newer(serde: Serde) -> None:
    # replay 2 fails cleanly; its retry copy (no replay header) is parked: the dead
    # letter says 2, so the replay tool's next record (number 3) passes the mark
    err = TransientProviderError("503", provider="p", status=503)
    lost = TransientProviderError("read timeout", provider="p", ambiguous=True)
    provider = FakeProvider(err, lost, name="p")
    stage = make(serde, provider, policies=[ProviderPolicy(name="p")])
    out = await stage.handle(encode(serde, request(replay=True)), replayed(2), "normal")
    assert out is not None and out.topic == "dispatch.retry-1"
    out = await stage.handle(encode(serde, out.value), ORIGIN, "normal")
    assert out is not None and out.value.reason == "ambiguous" and out.value.replayed == 2
    out = await stage.handle(encode(serde, request(replay=True)), replayed(3), "normal")
    assert out is not None and out.topic == "sent" and len(provider.calls) == 3


async def test_an_acceptance_holds_an_unrecorded_place_until_kafka_acked_it(serde: Serde) -> None:
    # so a kill finds at most max_unrecorded accepted emails missing from the ledger
    # (the bound on requests after acceptance that a restart makes)
    table = AckedTable()
    provider = FakeProvider(name="p")
    policy = ProviderPolicy(name="p", idempotency_ttl_s=60, max_in_flight=1, max_unrecorded=1)
    stage = make(serde, provider, table=table, policies=[policy])
    tasks = [
        asyncio.ensure_future(stage.handle(encode(serde, request(e)), ORIGIN, "normal"))
        for e in ("e-1", "e-2")
    ]
    for _ in range(50):
        await asyncio.sleep(0)
    assert [c.event_id for c in provider.calls] == ["e-1"]  # e-2 waits for e-1's ack
    assert table.writes[-1] == (b"e-1", "accepted")
    table.ack(b"e-1")
    for _ in range(50):
        await asyncio.sleep(0)
    assert [c.event_id for c in provider.calls] == ["e-1", "e-2"]
    table.ack(b"e-2")
    outs = await asyncio.wait_for(asyncio.gather(*tasks), 5)
    assert [o.topic for o in outs if o is not None] == ["sent", "sent"]


async def test_the_request_slot_is_free_while_kafka_acks_the_acceptance(serde: Serde) -> None:
    # max_in_flight bounds requests on the wire; max_unrecorded bounds acceptances not yet
    # acked: with 1 and 2, e-2 goes out during e-1's ack, e-3 waits for an ack
    table = AckedTable()
    provider = FakeProvider(name="p")
    policy = ProviderPolicy(name="p", idempotency_ttl_s=60, max_in_flight=1, max_unrecorded=2)
    stage = make(serde, provider, table=table, policies=[policy])
    tasks = [
        asyncio.ensure_future(stage.handle(encode(serde, request(e)), ORIGIN, "normal"))
        for e in ("e-1", "e-2", "e-3")
    ]
    for _ in range(50):
        await asyncio.sleep(0)
    assert [c.event_id for c in provider.calls] == ["e-1", "e-2"]
    assert [w for w in table.writes if w[1] == "accepted"] == [
        (b"e-1", "accepted"),
        (b"e-2", "accepted"),
    ]
    table.ack(b"e-2")  # acks in any order free a place
    for _ in range(50):
        await asyncio.sleep(0)
    assert [c.event_id for c in provider.calls] == ["e-1", "e-2", "e-3"]
    table.ack(b"e-1")
    table.ack(b"e-3")
    outs = await asyncio.wait_for(asyncio.gather(*tasks), 5)
    assert [o.topic for o in outs if o is not None] == ["sent", "sent", "sent"]


def test_max_unrecorded_is_never_below_max_in_flight(serde: Serde) -> None:
    policy = ProviderPolicy(name="p", max_in_flight=8, max_unrecorded=2)
    stage = make(serde, FakeProvider(name="p"), policies=[policy])
    assert stage._unrecorded["p"]._value == 8  # type: ignore[attr-defined]


async def test_the_next_request_sees_the_remaining_reported_before_the_ack(serde: Serde) -> None:
    # the slot is free while Kafka acks e-1's acceptance: the Remaining its answer reported
    # must already be known then, or a burst of requests goes out on a stale view (6 429s
    # in a clean-clone CI run of test_bulk_is_held_while_remaining_is_low)
    from app.providers.base import RateLimitInfo

    class Reporting(FakeProvider):
        async def send(self, email: OutboundEmail) -> SendReceipt:
            receipt = await super().send(email)
            return SendReceipt(
                provider=receipt.provider,
                message_id=receipt.message_id,
                latency_s=receipt.latency_s,
                rate_limit=RateLimitInfo(limit=300, remaining=42, reset_at=None),
            )

    table = AckedTable()
    policy = ProviderPolicy(name="p", idempotency_ttl_s=60, max_in_flight=1, max_unrecorded=2)
    stage = make(serde, Reporting(name="p"), table=table, policies=[policy])
    task = asyncio.ensure_future(stage.handle(encode(serde, request("e-1")), ORIGIN, "normal"))
    for _ in range(50):
        await asyncio.sleep(0)
    assert table.writes[-1] == (b"e-1", "accepted")  # answered, the ack still pending
    assert stage.board.views["p"].remaining == 42
    table.ack(b"e-1")
    out = await asyncio.wait_for(task, 5)
    assert out is not None and out.topic == "sent"
