"""The dispatch stage's decisions checked exactly (issue 17 pt 5: survivors of the
mutation run): the status class each answer is counted under, when a run of failures
began, what goes on the wire, how long each provider honours a key, and the records
the stage emits (sent, retry, dead) field by field."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import random
import time
from typing import Any

import pytest

from app.errors import (
    ConflictError,
    PermanentProviderError,
    ProviderError,
    ThrottledError,
    TransientProviderError,
)
from app.models import Attempt, DeadLetter, DispatchRequest, SendResult
from app.observability import NullMetrics
from app.providers.base import OutboundEmail, RateLimitInfo, SendReceipt
from app.serde import Serde
from app.settings import ProviderPolicy
from app.stages.common import Origin
from app.stages.dispatch import DispatchStage, _status_class, first_failure_ms, outbound
from app.stages.lanes import LaneGate
from app.stages.pressure import PressureBoard, backoff_s
from app.tables.ledger import Ledger
from app.tables.pressure import key_for
from app.topology import DEAD, SENT, retry_topic
from tests.plugins.factories import dispatch_request


def attempt(stage: str, at: int) -> Attempt:
    return Attempt(
        at=at, stage=stage, error_class="E", reason="r", message="m", retriable=True
    )


# -- the status class of an answer (the response metric's label) -----------------------


@pytest.mark.parametrize(
    ("exc", "label"),
    [
        (TransientProviderError("x", provider="p", status=503), "5xx"),
        (TransientProviderError("x", provider="p", status=500), "5xx"),
        (PermanentProviderError("x", provider="p", status=400), "4xx"),
        (PermanentProviderError("x", provider="p", status=422), "4xx"),
        (ProviderError("x", provider="p", status=499), "4xx"),
        (ThrottledError("x", provider="p", retry_after=None), "429"),
        (ProviderError("x", provider="p", status=429), "429"),
        (ProviderError("x", provider="p", status=302), "3xx"),
        (TransientProviderError("x", provider="p", reason="provider_timeout"), "timeout"),
        (TransientProviderError("x", provider="p"), "error"),
        (TimeoutError("no status, no reason"), "error"),
        (ValueError("x"), "error"),
    ],
)
def test_status_class(exc: BaseException, label: str) -> None:
    assert _status_class(exc) == label


def test_a_non_provider_error_with_a_timeout_reason_is_a_timeout() -> None:
    exc = RuntimeError("x")
    exc.reason = "provider_timeout"  # type: ignore[attr-defined]
    exc.status = 503  # type: ignore[attr-defined]  # only a ProviderError's status counts
    assert _status_class(exc) == "timeout"


# -- when this run of failures began ----------------------------------------------------


def test_first_failure_is_the_earliest_dispatch_attempt_of_this_run() -> None:
    history = [
        attempt("dispatch", 100),  # an older run (before a replay)
        attempt("render", 150),
        attempt("dispatch", 300),
        attempt("dispatch", 200),
    ]
    req = dispatch_request("e", "normal", attempts=3, history=history)
    # the last 3 entries: render 150 is not a dispatch attempt; 200 is the earliest
    assert first_failure_ms(req, 9_999) == 200
    req = dispatch_request("e", "normal", attempts=1, history=history)
    assert first_failure_ms(req, 9_999) == 200
    req = dispatch_request("e", "normal", attempts=4, history=history)
    assert first_failure_ms(req, 9_999) == 100


def test_first_failure_defaults_without_attempts_or_dispatch_entries() -> None:
    history = [attempt("dispatch", 100)]
    assert first_failure_ms(dispatch_request("e", "normal", attempts=0, history=history), 7) == 7
    only_render = [attempt("render", 100)]
    req = dispatch_request("e", "normal", attempts=1, history=only_render)
    assert first_failure_ms(req, 7) == 7


# -- what goes on the wire ----------------------------------------------------------------


def test_outbound_carries_every_field_of_the_request() -> None:
    req = dispatch_request("e-5", "bulk")
    email = outbound(req)
    expected: dict[str, Any] = {
        "event_id": req.event_id,
        "to": req.to,
        "from_address": req.from_address,
        "subject": req.subject,
        "html": req.html,
        "text": req.text,
        "priority": req.priority,
        "source": req.source,
        "template": req.template,
        "template_version": req.template_version,
    }
    assert {k: getattr(email, k) for k in expected} == expected
    assert email.priority == "bulk" and email.event_id == "e-5"


# -- the stage: helpers ---------------------------------------------------------------------

NOW = 1_700_000_000.0
ORIGIN = Origin("email.dispatch.normal", 2, 40, 123, b"k-e-1")  # key is not the event id


class Recorder(NullMetrics):
    """The stage's metrics (a StageMetrics), keeping what they were told."""

    def __init__(self) -> None:
        self.calls: list[tuple[Any, ...]] = []

    def provider_response(self, provider: str, status_class: str, latency_s: float) -> None:
        self.calls.append(("response", provider, status_class, latency_s))

    def breaker_state(self, provider: str, state: str) -> None:
        self.calls.append(("breaker", provider, state))

    def rate_limit_remaining(self, provider: str, remaining: int) -> None:
        self.calls.append(("remaining", provider, remaining))

    def retry(self, attempt: int) -> None:
        self.calls.append(("retry", attempt))

    def missing_message_id(self, provider: str) -> None:
        self.calls.append(("missing_id", provider))

    def duplicate_suppressed(self) -> None:
        self.calls.append(("duplicate",))

    def wiring(self) -> dict[str, Any]:
        """The keyword that connects this recorder to a DispatchStage."""
        return {"metrics": self}

    def of(self, kind: str) -> list[tuple[Any, ...]]:
        return [c[1:] for c in self.calls if c[0] == kind]


class Provider:
    """Answers from a script (None: accept with ``receipt``), then accepts."""

    def __init__(
        self,
        name: str,
        *script: Exception | None,
        message_id: str | None = "m-1",
        rate_limit: RateLimitInfo | None = None,
        ttl: float | None = None,
        on_send: Any = None,
    ) -> None:
        self.name = name
        self.on_send = on_send  # called as each request goes out (what happens meanwhile)
        self.script = list(script)
        self.message_id = message_id
        self.rate_limit = rate_limit
        self.calls: list[OutboundEmail] = []
        if ttl is not None:
            self.idempotency_ttl_s = ttl

    async def send(self, email: OutboundEmail) -> SendReceipt:
        self.calls.append(email)
        if self.on_send is not None:
            self.on_send()
        await asyncio.sleep(0)
        outcome = self.script.pop(0) if self.script else None
        if outcome is not None:
            raise outcome
        return SendReceipt(self.name, self.message_id or "", 0.25, self.rate_limit)

    async def aclose(self) -> None:
        pass


def stage(
    serde: Serde,
    *providers: Provider,
    policies: list[ProviderPolicy] | None = None,
    table: dict[bytes, Any] | None = None,
    rng: random.Random | None = None,
    store: dict[bytes, Any] | None = None,
    **kw: Any,
) -> DispatchStage:
    pols = {p.name: p for p in (policies or [ProviderPolicy(name=p.name) for p in providers])}
    clock = kw.pop("clock", lambda: NOW)
    board = PressureBoard(pols, 4, {} if store is None else store, key_for, clock=clock)
    return DispatchStage(
        serde,
        {p.name: p for p in providers},
        pols,
        next(iter(pols)),
        Ledger({} if table is None else table, clock=clock),
        LaneGate(),
        board,
        clock=clock,
        sleep=kw.pop("sleep", _no_sleep),
        rng=rng or random.Random(1),
        **kw,
    )


async def _no_sleep(_: float) -> None:
    await asyncio.sleep(0)


def payload(serde: Serde, event_id: str = "e-1", **over: Any) -> bytes:
    return serde.encode("email.dispatch.normal", dispatch_request(event_id, "normal", **over))


# -- a send ------------------------------------------------------------------------------


async def test_a_sent_result_carries_the_request_and_the_receipt(serde: Serde) -> None:
    rl = RateLimitInfo(limit=1000, remaining=42, reset_at=NOW + 30)
    rec = Recorder()
    st = stage(serde, Provider("p", rate_limit=rl), **rec.wiring())
    req = dispatch_request("e-1", "critical", created_at=900, replay=True)
    out = await st.handle(serde.encode("email.dispatch.normal", req), ORIGIN, "critical")
    assert out is not None and out.topic == SENT and out.key == b"e-1"
    r = out.value
    assert isinstance(r, SendResult)
    assert (r.event_id, r.priority, r.provider) == ("e-1", "critical", "p")
    assert r.provider_message_id == "m-1"
    assert r.provider_latency_ms == 250.0
    assert (r.template, r.template_version, r.source) == ("t", "v1", "src")
    assert (r.created_at, r.accepted_at, r.replay) == (900, 1_000, True)
    assert r.sent_at == int(NOW * 1000) and r.attempts == 1
    # the provider's quota view is kept, and reported
    view = st.board.views["p"]
    assert (view.limit, view.remaining, view.reset_at) == (1000, 42, NOW + 30)
    assert rec.of("remaining") == [("p", 42)]
    assert rec.of("missing_id") == [] and st.stats.missing_message_id == 0
    entry = st.ledger.get("e-1")
    assert entry is not None and (entry.provider, entry.message_id) == ("p", "m-1")
    assert st.stats.sent == 1
    out2 = await st.handle(payload(serde, event_id="e-2"), ORIGIN, "normal")
    assert out2 is not None and out2.topic == SENT and st.stats.sent == 2


async def test_a_receipt_without_remaining_reports_none(serde: Serde) -> None:
    rl = RateLimitInfo(limit=1000, remaining=None, reset_at=None)
    rec = Recorder()
    st = stage(serde, Provider("p", rate_limit=rl), **rec.wiring())
    await st.handle(payload(serde), ORIGIN, "normal")
    assert rec.of("remaining") == []
    assert st.board.views["p"].limit == 1000


async def test_an_accepted_send_without_a_message_id_is_counted(serde: Serde) -> None:
    rec = Recorder()
    st = stage(serde, Provider("p", message_id=None), **rec.wiring())
    out = await st.handle(payload(serde), ORIGIN, "normal")
    assert out is not None and out.topic == SENT
    await st.handle(payload(serde, event_id="e-2"), ORIGIN, "normal")
    assert st.stats.missing_message_id == 2
    assert rec.of("missing_id") == [("p",), ("p",)]
    assert st.stats.sent == 2


async def test_each_answer_is_reported_with_its_provider_status_and_latency(serde: Serde) -> None:
    rec = Recorder()
    error = TransientProviderError("503", provider="p", status=503)
    pol = [ProviderPolicy(name="p", breaker_min_requests=5)]
    st = stage(serde, Provider("p", error), policies=pol, **rec.wiring())
    started = time.perf_counter()
    await st.handle(payload(serde), ORIGIN, "normal")
    elapsed = time.perf_counter() - started
    responses = rec.of("response")
    assert [(p, s) for p, s, _ in responses] == [("p", "5xx")]
    assert all(0.0 <= lat <= elapsed for _, _, lat in responses)


# -- the breaker hears every answer, and only transitions are reported -----------------------


async def test_successes_never_open_the_breaker_and_report_no_transition(serde: Serde) -> None:
    rec = Recorder()
    store: dict[bytes, Any] = {}
    pol = [ProviderPolicy(name="p", breaker_min_requests=2, breaker_error_threshold=0.0)]
    st = stage(serde, Provider("p"), policies=pol, **rec.wiring(), store=store)
    for i in range(4):
        await st.handle(payload(serde, event_id=f"e-{i}"), ORIGIN, "normal")
    assert st.board.state("p", 2).breaker.state == "closed"
    assert st.board.state("p", 2).breaker.error_rate(NOW) == (0.0, 4)
    assert rec.of("breaker") == [] and store == {}


async def test_breaker_transitions_are_reported_and_persisted_for_the_partition(
    serde: Serde,
) -> None:
    rec = Recorder()
    store: dict[bytes, Any] = {}
    now = [NOW]

    async def sleep(s: float) -> None:
        now[0] += s
        await asyncio.sleep(0)

    fail = [TransientProviderError("503", provider="p", status=503) for _ in range(2)]
    pol = [ProviderPolicy(name="p", breaker_min_requests=2, breaker_error_threshold=0.5,
                          breaker_cooldown_s=3.0, breaker_half_open_probes=1)]  # fmt: skip
    st = stage(serde, Provider("p", *fail), policies=pol, **rec.wiring(), store=store,
               clock=lambda: now[0], sleep=sleep)  # fmt: skip
    first = await asyncio.wait_for(st.handle(payload(serde, "e-0"), ORIGIN, "normal"), 10)
    assert first is not None and first.topic == retry_topic(1)  # closed: a retry
    assert rec.of("breaker") == [] and store == {}
    # the second failure opens it; the message waits the cooldown, probes, and is sent
    out = await asyncio.wait_for(st.handle(payload(serde, "e-1"), ORIGIN, "normal"), 10)
    assert out is not None and out.topic == SENT
    assert rec.of("breaker") == [("p", "open"), ("p", "closed")]
    assert list(store) == [key_for("p", 2, 4)]
    assert store[key_for("p", 2, 4)]["breaker"] == "closed"


# -- provider guarantees ----------------------------------------------------------------------


def test_key_lifetime_comes_from_the_policy_else_the_adapter() -> None:
    keyed = Provider("a", ttl=3600.0)
    plain = Provider("b")
    pols = {"a": ProviderPolicy(name="a"), "b": ProviderPolicy(name="b"),
            "c": ProviderPolicy(name="c", idempotency_ttl_s=60.0)}  # fmt: skip
    st = DispatchStage(
        None,  # type: ignore[arg-type]
        {"a": keyed, "b": plain, "c": plain},  # type: ignore[dict-item]
        pols,
        "a",
        Ledger({}),
        LaneGate(),
        PressureBoard(pols, 1, {}, key_for),
    )
    assert st.key_ttl("a") == 3600.0  # the adapter's declaration
    assert st.key_ttl("b") == 0.0  # declares nothing: no key
    assert st.key_ttl("c") == 60.0  # the policy wins
    assert st.key_ttl("nobody") == 0.0
    assert st.key_valid("a", 0.0) and st.key_valid("a", 3599.0)
    assert not st.key_valid("a", 3600.0) and not st.key_valid("a", -1.0)
    assert not st.key_valid("b", 0.0) and not st.key_valid("nobody", 0.0)


def test_resend_ambiguous_is_the_policys_choice() -> None:
    pols = {
        "http": ProviderPolicy(name="http"),
        "http-resend": ProviderPolicy(name="http-resend", ambiguous_resend=True),
        "http-smtp-flag": ProviderPolicy(name="http-smtp-flag", smtp_resend_in_flight=True),
        "smtp": ProviderPolicy(name="smtp", kind="smtp"),
        "smtp-resend": ProviderPolicy(name="smtp-resend", kind="smtp", smtp_resend_in_flight=True),
    }
    st = DispatchStage(
        None,  # type: ignore[arg-type]
        {},
        pols,
        "http",
        Ledger({}),
        LaneGate(),
        PressureBoard(pols, 1, {}, key_for),
    )
    assert not st.resend_ambiguous("nobody")
    assert not st.resend_ambiguous("http")
    assert st.resend_ambiguous("http-resend")
    assert not st.resend_ambiguous("http-smtp-flag")  # an SMTP setting, on an HTTP provider
    assert not st.resend_ambiguous("smtp")
    assert st.resend_ambiguous("smtp-resend")


# -- failures: retry and dead -----------------------------------------------------------------


async def test_a_retry_carries_the_attempt_and_a_seeded_backoff(serde: Serde) -> None:
    rec = Recorder()
    error = TransientProviderError("503", provider="p", status=503)
    pol = [ProviderPolicy(name="p", breaker_min_requests=50, retry_backoff_base_s=2.0,
                          retry_backoff_cap_s=60.0)]  # fmt: skip
    st = stage(serde, Provider("p", error, error), policies=pol, **rec.wiring(),
               rng=random.Random(7))  # fmt: skip
    out = await st.handle(payload(serde), ORIGIN, "normal")
    assert out is not None and out.topic == retry_topic(1) and out.key == b"e-1"
    retry = out.value
    assert isinstance(retry, DispatchRequest)
    expected = backoff_s(1, 2.0, 60.0, random.Random(7))
    at = int(NOW * 1000)
    assert retry.not_before == at + int(expected * 1000)
    assert retry.attempts == 1 and retry.provider is None
    assert [(a.stage, a.at, a.provider) for a in retry.history] == [("dispatch", at, "p")]
    entry = st.ledger.get("e-1")
    assert entry is not None and (entry.state, entry.provider) == ("failed", "p")
    assert st.stats.retried == 1 and rec.of("retry") == [(1,)]
    out2 = await st.handle(payload(serde, event_id="e-2"), ORIGIN, "normal")
    assert out2 is not None and out2.topic == retry_topic(1) and st.stats.retried == 2
    assert rec.of("retry") == [(1,), (1,)]


async def test_dead_once_failing_exactly_the_minimum_time(serde: Serde) -> None:
    # attempts reach max_attempts; the run of failures began retry_min_failing_s ago
    error = TransientProviderError("503", provider="p", status=503)
    pol = [ProviderPolicy(name="p", breaker_min_requests=50, retry_min_failing_s=1000.0)]
    at = int(NOW * 1000)
    history = [attempt("dispatch", at - 1_000_000), attempt("dispatch", at - 10)]
    st = stage(serde, Provider("p", error), policies=pol, max_attempts=3)
    out = await st.handle(payload(serde, attempts=2, history=history), ORIGIN, "normal")
    assert out is not None and out.topic == DEAD
    # one millisecond short of the minimum: retried
    history = [attempt("dispatch", at - 999_999), attempt("dispatch", at - 10)]
    st = stage(serde, Provider("p", error), policies=pol, max_attempts=3)
    out = await st.handle(payload(serde, attempts=2, history=history), ORIGIN, "normal")
    assert out is not None and out.topic == retry_topic(3)


async def test_a_dead_letter_carries_the_request_field_by_field(serde: Serde) -> None:
    error = PermanentProviderError("550 no such user", provider="p", status=550)
    st = stage(serde, Provider("p", error, error))
    raw = payload(serde)
    out = await st.handle(raw, ORIGIN, "normal")
    assert out is not None and out.topic == DEAD and out.key == b"e-1"
    d = out.value
    assert isinstance(d, DeadLetter)
    assert (d.stage, d.payload, d.payload_format) == ("dispatch", raw, "avro")
    assert d.dead_at == int(NOW * 1000)
    assert (d.event_id, d.template, d.template_version, d.source) == ("e-1", "t", "v1", "src")
    assert (d.provider, d.priority) == ("p", "normal")
    assert (d.original_partition, d.original_offset) == (2, 40)
    assert st.stats.dead == 1
    entry = st.ledger.get("e-1")
    assert entry is not None and (entry.state, entry.provider) == ("failed", "p")
    await st.handle(payload(serde, event_id="e-2"), ORIGIN, "normal")
    assert st.stats.dead == 2


async def test_a_pinned_resend_goes_to_the_provider_that_holds_the_key(serde: Serde) -> None:
    # primary "a"; the email was in flight at "b" (keys honoured) when a worker stopped
    a, b = Provider("a"), Provider("b")
    pols = [ProviderPolicy(name="a", fallback="b"),
            ProviderPolicy(name="b", idempotency_ttl_s=86_400)]  # fmt: skip
    table = {b"e-1": {"s": "in_flight", "p": "b", "m": None, "t": NOW - 5}}
    st = stage(serde, a, b, policies=pols, table=table)
    out = await st.handle(payload(serde), ORIGIN, "normal")
    assert out is not None and out.topic == SENT and out.value.provider == "b"
    assert len(b.calls) == 1 and a.calls == []


async def test_an_open_breaker_without_fallback_waits_in_short_polls(serde: Serde) -> None:
    now = [NOW]
    sleeps: list[float] = []

    async def sleep(s: float) -> None:
        sleeps.append(s)
        now[0] += s
        await asyncio.sleep(0)

    pol = [ProviderPolicy(name="p", breaker_cooldown_s=5.0)]
    st = stage(serde, Provider("p"), policies=pol, clock=lambda: now[0], sleep=sleep)
    br = st.board.state("p", 2).breaker
    br.state, br.opened_at = "open", NOW
    out = await st.handle(payload(serde), ORIGIN, "normal")
    assert out is not None and out.topic == SENT
    assert sleeps and all(0 < s <= 1.0 for s in sleeps)
    assert sum(sleeps) == pytest.approx(5.0)


# -- an answer lost after the request went out (or a 409) -------------------------------------


def lost(status: int | None = None) -> TransientProviderError:
    return TransientProviderError("read timeout", provider="p", status=status, ambiguous=True)


@pytest.mark.parametrize(
    "error", [lost(), ConflictError("409", provider="p", status=409), ValueError("adapter bug")]
)
async def test_a_lost_answer_is_resent_pinned_while_the_key_lives(
    serde: Serde, error: Exception
) -> None:
    pol = [ProviderPolicy(name="p", idempotency_ttl_s=3600.0, breaker_min_requests=50)]
    st = stage(serde, Provider("p", error), policies=pol, rng=random.Random(3))
    raw = payload(serde)
    out = await asyncio.wait_for(st.handle(raw, ORIGIN, "normal"), 10)
    assert out is not None and out.topic == retry_topic(1) and out.key == b"e-1"
    retry = out.value
    assert isinstance(retry, DispatchRequest)
    assert retry.provider == "p"  # pinned: never failed over
    assert retry.attempts == 1 and retry.event_id == "e-1"
    at = int(NOW * 1000)
    assert [(a.stage, a.at, a.provider) for a in retry.history] == [("dispatch", at, "p")]
    assert retry.history[0].error_class == type(error).__name__
    assert retry.not_before == at + int(backoff_s(1, 1.0, 60.0, random.Random(3)) * 1000)
    entry = st.ledger.get("e-1")
    assert entry is not None and (entry.state, entry.provider) == ("failed", "p")
    assert st.stats.retried == 1 and st.stats.ambiguous == 0


async def test_the_key_counts_from_the_first_failure_of_the_run(serde: Serde) -> None:
    pol = [ProviderPolicy(name="p", idempotency_ttl_s=3600.0, breaker_min_requests=50)]
    at = int(NOW * 1000)
    # the run began 1 ms less than the key's lifetime ago: the same key still works
    history = [attempt("dispatch", at - 3_599_999)]
    st = stage(serde, Provider("p", lost()), policies=pol)
    out = await st.handle(payload(serde, attempts=1, history=history), ORIGIN, "normal")
    assert out is not None and out.topic == retry_topic(2) and out.value.provider == "p"
    # exactly the lifetime ago: the key may be gone, so it is parked, not resent
    history = [attempt("dispatch", at - 3_600_000)]
    st = stage(serde, Provider("p", lost()), policies=pol)
    out = await st.handle(payload(serde, attempts=1, history=history), ORIGIN, "normal")
    assert out is not None and out.topic == DEAD and out.value.reason == "ambiguous"


async def test_a_lost_answer_without_a_key_is_resent_when_the_policy_says_so(
    serde: Serde,
) -> None:
    pol = [ProviderPolicy(name="p", ambiguous_resend=True, breaker_min_requests=50)]
    st = stage(serde, Provider("p", lost(504)), policies=pol)
    out = await st.handle(payload(serde), ORIGIN, "normal")
    assert out is not None and out.topic == retry_topic(1)
    retry = out.value
    assert retry.provider is None  # at least once, anywhere
    assert [(a.stage, a.provider) for a in retry.history] == [("dispatch", "p")]
    entry = st.ledger.get("e-1")
    assert entry is not None and (entry.state, entry.provider) == ("failed", "p")
    assert st.stats.ambiguous == 0


async def test_a_lost_answer_without_a_key_is_parked(serde: Serde) -> None:
    pol = [ProviderPolicy(name="p", breaker_min_requests=50)]
    st = stage(serde, Provider("p", lost(), lost()), policies=pol)
    raw = payload(serde)
    out = await st.handle(raw, ORIGIN, "normal")
    assert out is not None and out.topic == DEAD and out.key == b"e-1"
    d = out.value
    assert isinstance(d, DeadLetter)
    assert (d.reason, d.stage, d.provider, d.payload) == ("ambiguous", "dispatch", "p", raw)
    assert d.message.startswith("e-1: p may have accepted it (read timeout)")
    assert [(a.stage, a.at, a.provider) for a in d.history] == [
        ("dispatch", int(NOW * 1000), "p")
    ]
    entry = st.ledger.get("e-1")
    assert entry is not None and (entry.state, entry.provider) == ("ambiguous", "p")
    assert st.stats.ambiguous == 1 and st.stats.dead == 1 and st.stats.retried == 0
    out2 = await st.handle(payload(serde, "e-2"), ORIGIN, "normal")
    assert out2 is not None and out2.topic == DEAD
    assert st.stats.ambiguous == 2


async def test_a_lost_answer_at_the_last_attempt_is_dead_with_its_input(serde: Serde) -> None:
    # pinned (the key lives) but out of attempts and failing long enough: dead, and the
    # dead letter carries the original payload and position
    pol = [ProviderPolicy(name="p", idempotency_ttl_s=86_400.0, breaker_min_requests=50,
                          retry_min_failing_s=60.0)]  # fmt: skip
    at = int(NOW * 1000)
    history = [attempt("dispatch", at - 120_000), attempt("dispatch", at - 60_000)]
    st = stage(serde, Provider("p", lost()), policies=pol, max_attempts=3)
    raw = payload(serde, attempts=2, history=history)
    out = await st.handle(raw, ORIGIN, "normal")
    assert out is not None and out.topic == DEAD
    d = out.value
    assert (d.payload, d.original_partition, d.original_offset) == (raw, 2, 40)
    assert d.history[-1].error_class == "TransientProviderError"
    # the same with the at-least-once policy instead of a key
    pol = [ProviderPolicy(name="p", ambiguous_resend=True, breaker_min_requests=50,
                          retry_min_failing_s=60.0)]  # fmt: skip
    st = stage(serde, Provider("p", lost()), policies=pol, max_attempts=3)
    out = await st.handle(raw, ORIGIN, "normal")
    assert out is not None and out.topic == DEAD
    assert (out.value.payload, out.value.original_offset) == (raw, 40)
    assert out.value.history[-1].error_class == "TransientProviderError"


async def test_a_parked_email_says_what_to_do(serde: Serde) -> None:
    pol = [ProviderPolicy(name="p", breaker_min_requests=50)]
    st = stage(serde, Provider("p", lost()), policies=pol)
    out = await st.handle(payload(serde), ORIGIN, "normal")
    assert out is not None and out.topic == DEAD
    assert out.value.message == (
        "e-1: p may have accepted it (read timeout); it honours no idempotency key, so it "
        "is not resent: check the provider's log, then replay or drop it"
    )
    assert out.value.history[-1].error_class == "TransientProviderError"


async def test_an_email_parked_before_is_parked_again_and_its_mark_kept(serde: Serde) -> None:
    table: dict[bytes, Any] = {b"e-1": {"s": "ambiguous", "p": "p", "m": None, "t": 5.0}}
    provider = Provider("p")
    st = stage(serde, provider, table=table)
    out = await st.handle(payload(serde), ORIGIN, "normal")
    assert out is not None and out.topic == DEAD and out.value.reason == "ambiguous"
    assert provider.calls == []
    assert table[b"e-1"] == {"s": "ambiguous", "p": "p", "m": None, "t": 5.0}  # untouched


async def test_a_parked_operator_replay_records_its_replay_number(serde: Serde) -> None:
    origin = Origin("email.dispatch.normal", 2, 41, 123, b"k-e-1", (("spillway-replay", b"2"),))
    pol = [ProviderPolicy(name="p", breaker_min_requests=50)]
    st = stage(serde, Provider("p", lost()), policies=pol)
    out = await st.handle(payload(serde, replay=True), origin, "normal")
    assert out is not None and out.topic == DEAD and out.value.reason == "ambiguous"
    entry = st.ledger.get("e-1")
    assert entry is not None and (entry.state, entry.replay) == ("ambiguous", 2)
    assert out.value.replayed == 2


async def test_an_unreadable_retry_record_is_dead_at_the_time_it_was_read(serde: Serde) -> None:
    from app.stages.dispatch import retry_route

    out, delay = await retry_route(serde, b"garbage", ORIGIN, clock=lambda: NOW)
    assert out.topic == DEAD and delay == 0.0
    assert out.value.dead_at == int(NOW * 1000)


async def test_what_the_operator_reads_of_a_trip_and_a_missing_id(
    serde: Serde, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.WARNING, logger="app.stages.dispatch")
    fail = [TransientProviderError("503", provider="p", status=503) for _ in range(2)]
    pol = [ProviderPolicy(name="p", breaker_min_requests=2, breaker_error_threshold=0.5)]
    st = stage(serde, Provider("p", *fail, message_id=None), policies=pol)
    await st.handle(payload(serde, "e-0"), ORIGIN, "normal")
    br = st.board.state("p", 2).breaker
    # the second failure trips it; the email then waits (its retry is not this test's)
    st.max_attempts = 1
    task = asyncio.create_task(st.handle(payload(serde, "e-1"), ORIGIN, "normal"))
    await until_true(lambda: br.state == "open")
    task.cancel()
    with contextlib.suppress(asyncio.CancelledError):
        await task
    messages = [r.getMessage() for r in caplog.records]
    assert "provider p partition 2: breaker closed -> open" in messages
    caplog.clear()
    st2 = stage(serde, Provider("p", message_id=None))
    await st2.handle(payload(serde, "e-9"), ORIGIN, "normal")
    assert [r.getMessage() for r in caplog.records] == [
        "provider p accepted e-9 without a message id"
    ]


async def until_true(cond: Any, deadline_s: float = 5.0) -> None:
    loop = asyncio.get_running_loop()
    end = loop.time() + deadline_s
    while not cond():
        assert loop.time() < end, "condition not reached"
        await asyncio.sleep(0.001)


def test_providers_that_fall_back_to_each_other_end_the_search(serde: Serde) -> None:
    pols = [ProviderPolicy(name="a", fallback="b"), ProviderPolicy(name="b", fallback="a")]
    st = stage(serde, Provider("a"), Provider("b"), policies=pols)
    for name, opened in (("a", NOW - 10.0), ("b", NOW - 20.0)):
        br = st.board.state(name, 2).breaker
        br.state, br.opened_at = "open", opened
    # both open: none now, and the shorter of the two cooldowns left (30 - 20 s)
    assert st._choose(2) == (None, 10.0)
    st.board.state("b", 2).breaker.opened_at = NOW - 40.0  # b cooled down
    assert st._choose(2) == ("b", 0.0)


async def test_a_critical_send_pays_only_the_total_meter(serde: Serde) -> None:
    pol = [ProviderPolicy(name="p", quota_per_s=100.0, target_utilisation=0.5,
                          critical_reserve=0.1)]  # fmt: skip
    st = stage(serde, Provider("p"), policies=pol)
    req = dispatch_request("e-1", "critical")
    out = await st.handle(serde.encode("email.dispatch.normal", req), ORIGIN, "critical")
    assert out is not None and out.topic == SENT
    share = st.board.state("p", 2)
    assert share.non_critical.tat == 0.0  # untouched
    assert share.total.tat > NOW


async def test_the_in_flight_mark_names_the_provider_before_the_request(serde: Serde) -> None:
    marks: list[Any] = []

    class Watching(Provider):
        async def send(self, email: OutboundEmail) -> SendReceipt:
            marks.append(st.ledger.get(email.event_id))
            return await super().send(email)

    st = stage(serde, Watching("p"))
    await st.handle(payload(serde), ORIGIN, "normal")
    assert [(m.state, m.provider) for m in marks] == [("in_flight", "p")]


async def test_a_probe_cancelled_on_the_wire_gives_its_slot_back(serde: Serde) -> None:
    hold = asyncio.Event()

    class Hanging(Provider):
        async def send(self, email: OutboundEmail) -> SendReceipt:
            self.calls.append(email)
            await hold.wait()
            return SendReceipt(self.name, "m", 0.1)

    pol = [ProviderPolicy(name="p", breaker_cooldown_s=30.0, breaker_half_open_probes=2)]
    provider = Hanging("p")
    st = stage(serde, provider, policies=pol)
    br = st.board.state("p", 2).breaker
    br.state, br.opened_at = "open", NOW - 40.0  # cooled down: the next send is a probe
    task = asyncio.create_task(st.handle(payload(serde), ORIGIN, "normal"))
    await until_true(lambda: len(provider.calls) == 1)
    assert br.state == "half_open" and br.probes_sent == 1
    task.cancel()  # a revocation while the probe is on the wire
    with contextlib.suppress(asyncio.CancelledError):
        await task
    assert br.probes_sent == 0


# -- the send loop's rechecks and side paths (survivors of the 16:09 run) ---------------------


class Hanging(Provider):
    """Holds every request on the wire until ``hold`` is set, then accepts it."""

    def __init__(self, name: str, hold: asyncio.Event, **kw: Any) -> None:
        super().__init__(name, **kw)
        self.hold = hold

    async def send(self, email: OutboundEmail) -> SendReceipt:
        self.calls.append(email)
        await self.hold.wait()
        return SendReceipt(self.name, "m", 0.1)


def slot_waiters(st: DispatchStage, name: str) -> int:
    return len(getattr(st._slots[name], "_waiters", None) or ())


async def test_a_message_cancelled_while_waiting_for_a_slot_gives_back_no_probe(
    serde: Serde,
) -> None:
    # it was never admitted: the probe slot it would give back is the first message's
    hold = asyncio.Event()
    pol = [ProviderPolicy(name="p", max_in_flight=1, breaker_half_open_probes=2)]
    provider = Hanging("p", hold)
    st = stage(serde, provider, policies=pol)
    br = st.board.state("p", 2).breaker
    br.state, br.opened_at = "open", NOW - 40.0  # cooled down: the next send is a probe
    first = asyncio.create_task(st.handle(payload(serde, "e-1"), ORIGIN, "normal"))
    await until_true(lambda: len(provider.calls) == 1)
    assert (br.state, br.probes_sent) == ("half_open", 1)
    second = asyncio.create_task(st.handle(payload(serde, "e-2"), ORIGIN, "normal"))
    await until_true(lambda: slot_waiters(st, "p") == 1)
    second.cancel()
    with contextlib.suppress(asyncio.CancelledError):
        await second
    assert (br.state, br.probes_sent) == ("half_open", 1)  # the first probe still counts
    hold.set()
    out = await asyncio.wait_for(first, 5)
    assert out is not None and out.topic == SENT and len(provider.calls) == 1


async def test_bulk_held_by_a_remaining_that_fell_while_it_waited_for_a_slot(
    serde: Serde,
) -> None:
    now = [NOW]
    sleeps: list[float] = []

    async def sleep(s: float) -> None:
        sleeps.append(s)
        now[0] += s
        await asyncio.sleep(0)

    hold = asyncio.Event()
    pol = [ProviderPolicy(name="p", max_in_flight=1, remaining_threshold=100)]
    provider = Hanging("p", hold)
    sent_at: list[float] = []
    real_send = provider.send

    async def send(email: OutboundEmail) -> SendReceipt:
        sent_at.append(now[0])
        return await real_send(email)

    provider.send = send  # type: ignore[method-assign]
    st = stage(serde, provider, policies=pol, clock=lambda: now[0], sleep=sleep)
    st.board.sleep = sleep
    first = asyncio.create_task(st.handle(payload(serde, "e-1"), ORIGIN, "normal"))
    await until_true(lambda: len(provider.calls) == 1)
    req = dispatch_request("e-2", "bulk")
    bulk = asyncio.create_task(
        st.handle(serde.encode("email.dispatch.bulk", req), ORIGIN, "bulk")
    )
    await until_true(lambda: slot_waiters(st, "p") == 1)
    assert sleeps == []  # it passed its pace before Remaining fell
    st.board.observe("p", 1000, 5, NOW + 10.0)  # 5 left for 10 s: bulk is held
    hold.set()
    out = await asyncio.wait_for(first, 5)
    assert out is not None and out.topic == SENT
    out = await asyncio.wait_for(bulk, 5)
    assert out is not None and out.topic == SENT and out.value.event_id == "e-2"
    assert sent_at[0] == NOW and sent_at[1] >= NOW + 10.0  # held until the reset
    assert sleeps and max(sleeps) <= 0.25


async def test_a_slot_freed_late_sends_no_probe_past_the_half_open_limit(serde: Serde) -> None:
    hold = asyncio.Event()
    sleeps: list[float] = []

    async def sleep(s: float) -> None:
        sleeps.append(s)
        await asyncio.sleep(0)

    pol = [ProviderPolicy(name="p", max_in_flight=2, breaker_half_open_probes=1)]
    provider = Hanging("p", hold)
    st = stage(serde, provider, policies=pol, sleep=sleep)
    br = st.board.state("p", 2).breaker
    br.state, br.opened_at = "open", NOW - 40.0  # cooled down: one probe may go
    slots = st._slots["p"]
    await slots.acquire()
    await slots.acquire()  # both slots busy: the two messages pass the breaker, then wait
    tasks = [
        asyncio.create_task(st.handle(payload(serde, e), ORIGIN, "normal")) for e in ("a", "b")
    ]
    await until_true(lambda: slot_waiters(st, "p") == 2)
    slots.release()
    slots.release()
    # one is the probe (on the wire); the other finds the probes taken and waits
    await until_true(lambda: bool(sleeps) or len(provider.calls) == 2)
    assert len(provider.calls) == 1 and (br.state, br.probes_sent) == ("half_open", 1)
    assert sleeps[0] == 0.05  # waits for the probe's answer, in short polls
    hold.set()  # the probe is accepted: closed, and the other goes
    outs = await asyncio.wait_for(asyncio.gather(*tasks), 5)
    assert [o.topic for o in outs if o is not None] == [SENT, SENT]
    assert len(provider.calls) == 2 and br.state == "closed"


async def test_a_key_that_lives_one_second_still_spares_the_wait_for_the_mark(
    serde: Serde,
) -> None:
    from tests.plugins.ledger import AckedTable

    table = AckedTable()
    provider = Provider("p", ttl=1.0)  # a short key is still a key: no ack awaited first
    st = stage(serde, provider, table=table)
    task = asyncio.create_task(st.handle(payload(serde), ORIGIN, "normal"))
    for _ in range(20):
        await asyncio.sleep(0)
    assert table.writes[0] == (b"e-1", "in_flight") and not table.acked(b"e-1")
    assert len(provider.calls) == 1  # sent while the in_flight mark is not acked
    table.ack(b"e-1")  # the accepted mark
    out = await asyncio.wait_for(task, 5)
    assert out is not None and out.topic == SENT


async def test_an_in_flight_mark_kafka_refused_sends_nothing_and_fails_the_attempt(
    serde: Serde, caplog: pytest.LogCaptureFixture
) -> None:
    from tests.plugins.ledger import AckedTable

    caplog.set_level(logging.WARNING, logger="app.stages.dispatch")
    pol = [ProviderPolicy(name="p", retry_min_failing_s=0.0)]  # no key: the mark is awaited
    for max_attempts, topic in ((3, retry_topic(1)), (1, DEAD)):
        caplog.clear()
        table = AckedTable()
        provider = Provider("p")
        st = stage(serde, provider, policies=pol, table=table, max_attempts=max_attempts)
        br = st.board.state("p", 2).breaker
        br.state, br.opened_at = "open", NOW - 40.0  # the send would be a probe
        raw = payload(serde)
        task = asyncio.create_task(st.handle(raw, ORIGIN, "normal"))
        for _ in range(20):
            await asyncio.sleep(0)
        assert table.writes == [(b"e-1", "in_flight")] and not task.done()
        assert br.probes_sent == 1
        table.fail(b"e-1")
        out = await asyncio.wait_for(task, 5)
        assert provider.calls == [] and br.probes_sent == 0  # nothing sent: probe given back
        assert out is not None and out.topic == topic
        entry = st.ledger.get("e-1")
        assert entry is not None and (entry.state, entry.provider) == ("failed", "p")
        value = out.value
        last = value.history[-1]
        assert (last.stage, last.error_class, last.provider) == ("dispatch", "LedgerWriteError",
                                                                 "p")  # fmt: skip
        if topic == DEAD:
            assert isinstance(value, DeadLetter) and value.payload == raw
            assert (value.error_class, value.provider) == ("LedgerWriteError", "p")
        [line] = [
            r.getMessage()
            for r in caplog.records
            if r.name == "app.stages.dispatch" and r.levelno == logging.WARNING
        ]
        assert line.startswith("dispatch: in_flight mark not durable: ledger write of ")


async def test_an_unencodable_email_is_dead_with_its_input(serde: Serde) -> None:
    from app.errors import EventError

    st = stage(serde, Provider("p", EventError("cannot encode the subject")))
    raw = payload(serde)
    out = await st.handle(raw, ORIGIN, "normal")
    assert out is not None and out.topic == DEAD
    assert isinstance(out.value, DeadLetter) and out.value.payload == raw
    assert out.value.error_class == "EventError"


class Transitions(Recorder):
    """Also keeps the breaker's opened_at at each reported transition."""

    def __init__(self, board: Any = None) -> None:
        super().__init__()
        self.board = board
        self.opened: list[float] = []

    def breaker_state(self, provider: str, state: str) -> None:
        super().breaker_state(provider, state)
        if state == "open":
            self.opened.append(self.board.state(provider).breaker.opened_at)


async def test_a_throttled_probe_reopens_the_breaker_at_that_time(
    serde: Serde, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.WARNING, logger="app.stages.dispatch")
    now = [NOW]

    async def sleep(s: float) -> None:
        now[0] += s
        await asyncio.sleep(0)

    store: dict[bytes, Any] = {}
    throttled = ThrottledError("429", provider="p", retry_after=2.0)
    pol = [ProviderPolicy(name="p", breaker_cooldown_s=30.0, breaker_half_open_probes=1)]
    rec = Transitions()
    st = stage(serde, Provider("p", throttled), policies=pol, store=store, **rec.wiring(),
               clock=lambda: now[0], sleep=sleep)  # fmt: skip
    st.board.sleep = sleep
    rec.board = st.board
    br = st.board.state("p", 2).breaker
    br.state, br.opened_at = "open", NOW - 40.0
    snaps: list[Any] = []
    real_persist = st.board.persist_breaker

    def persist(provider: str, partition: int, flush_every_s: float) -> None:
        real_persist(provider, partition, flush_every_s)
        snaps.append((partition, dict(store[key_for("p", 2, 4)])))

    st.board.persist_breaker = persist  # type: ignore[method-assign]
    out = await asyncio.wait_for(st.handle(payload(serde), ORIGIN, "normal"), 10)
    assert out is not None and out.topic == SENT
    # the probe was throttled at NOW: reopened then, for a whole cooldown
    assert rec.of("breaker") == [("p", "open"), ("p", "closed")] and rec.opened == [NOW]
    assert [p for p, _ in snaps] == [2, 2]
    assert [s["breaker"] for _, s in snaps] == ["open", "closed"]
    assert [s for _, s, _ in rec.of("response")] == ["429", "2xx"]
    assert st.stats.throttled == 1
    messages = [r.getMessage() for r in caplog.records if r.name == "app.stages.dispatch"]
    assert messages[0] == "provider p partition 2: breaker half_open -> open"


async def test_a_429_on_a_closed_breaker_is_no_transition_and_each_is_counted(
    serde: Serde,
) -> None:
    now = [NOW]

    async def sleep(s: float) -> None:
        now[0] += s
        await asyncio.sleep(0)

    store: dict[bytes, Any] = {}
    throttled = [ThrottledError("429", provider="p", retry_after=1.0) for _ in range(2)]
    rec = Recorder()
    st = stage(serde, Provider("p", *throttled), store=store, **rec.wiring(),
               clock=lambda: now[0], sleep=sleep)  # fmt: skip
    st.board.sleep = sleep
    out = await asyncio.wait_for(st.handle(payload(serde), ORIGIN, "normal"), 10)
    assert out is not None and out.topic == SENT
    assert st.stats.throttled == 2
    assert [s for _, s, _ in rec.of("response")] == ["429", "429", "2xx"]
    assert rec.of("breaker") == [] and store == {}
    assert st.board.state("p", 2).breaker.state == "closed"


# -- the entry point's outcomes and the answers' bookkeeping (survivors of the 18:40 run) -------


async def test_an_undecodable_message_is_dead_with_its_input_and_lane(serde: Serde) -> None:
    st = stage(serde, Provider("p"))
    for n in (1, 2):
        out = await st.handle(b"\x00garbage", ORIGIN, "bulk")
        assert out is not None and out.topic == DEAD and out.key == ORIGIN.key
        d = out.value
        assert isinstance(d, DeadLetter)
        assert (d.stage, d.payload, d.payload_format) == ("dispatch", b"\x00garbage", "avro")
        assert (d.dead_at, d.priority) == (int(NOW * 1000), "bulk")
        assert (d.original_partition, d.original_offset) == (2, 40)
        assert st.stats.dead == n


async def test_every_duplicate_is_counted_once(serde: Serde) -> None:
    table = {b"e-1": {"s": "sent", "p": "p", "m": "m-0", "t": NOW - 5}}
    provider = Provider("p")
    st = stage(serde, provider, table=table)
    for n in (1, 2):
        assert await st.handle(payload(serde), ORIGIN, "normal") is None
        assert st.stats.duplicates_suppressed == n
    table[b"e-2"] = {"s": "accepted", "p": None, "m": None, "t": NOW - 5}
    for n in (3, 4):
        out = await st.handle(payload(serde, "e-2"), ORIGIN, "normal")
        assert out is not None and out.topic == SENT
        r = out.value  # produced again from the ledger: no request, no latency
        assert (r.provider, r.provider_message_id, r.provider_latency_ms) == ("", "", 0.0)
        assert r.sent_at == int((NOW - 5) * 1000)
        assert st.stats.duplicates_suppressed == n
    table[b"e-3"] = {"s": "ambiguous", "p": "p", "m": None, "t": NOW - 5}
    raw = payload(serde, "e-3")
    for n in (5, 6):
        out = await st.handle(raw, ORIGIN, "normal")
        assert out is not None and out.topic == DEAD and out.value.payload == raw
        assert out.value.message.endswith(
            "was parked as ambiguous before (to p): not resent; check the provider's log, "
            "then replay or drop it"
        )
        assert st.stats.duplicates_suppressed == n
    assert provider.calls == []


async def test_an_email_found_in_flight_to_no_known_provider_is_parked(serde: Serde) -> None:
    table = {b"e-1": {"s": "in_flight", "p": None, "m": None, "t": NOW - 5}}
    provider = Provider("p")
    st = stage(serde, provider, table=table)
    raw = payload(serde)
    out = await st.handle(raw, ORIGIN, "normal")
    assert out is not None and out.topic == DEAD and provider.calls == []
    d = out.value
    assert d.payload == raw and d.provider is None and d.reason == "ambiguous"
    assert d.message == (
        "e-1 was in flight to  when a worker stopped;  honours no idempotency key (or it "
        "expired), so it is not resent blindly: check the provider's log, then replay or "
        "drop it"
    )


async def test_a_4xx_and_a_409_are_healthy_answers_for_the_breaker(
    serde: Serde, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.WARNING, logger="app.stages.dispatch")
    for error, label in (
        (PermanentProviderError("422", provider="p", status=422), "4xx"),
        (ConflictError("409", provider="p", status=409), "4xx"),
    ):
        caplog.clear()
        rec = Recorder()
        store: dict[bytes, Any] = {}
        pol = [ProviderPolicy(name="p", breaker_half_open_probes=1, ambiguous_resend=False)]
        st = stage(serde, Provider("p", error), policies=pol, store=store, **rec.wiring())
        br = st.board.state("p", 2).breaker
        br.state, br.opened_at = "open", NOW - 40.0  # the send is a probe
        raw = payload(serde)
        out = await st.handle(raw, ORIGIN, "normal")
        assert out is not None and out.topic == DEAD and out.value.payload == raw
        assert (out.value.original_partition, out.value.original_offset) == (2, 40)
        # the probe's answer closes the breaker: an answer, not an outage
        assert br.state == "closed" and rec.of("breaker") == [("p", "closed")]
        assert [s for _, s, _ in rec.of("response")] == [label]
        assert store[key_for("p", 2, 4)]["breaker"] == "closed"
        messages = [r.getMessage() for r in caplog.records if r.name == "app.stages.dispatch"]
        assert messages == ["provider p partition 2: breaker half_open -> closed"]
        # closed: counted as successes
        st2 = stage(serde, Provider("p", error), policies=pol)
        await st2.handle(payload(serde), ORIGIN, "normal")
        assert st2.board.state("p", 2).breaker.error_rate(NOW) == (0.0, 1)


async def test_an_unexpected_error_is_logged_counted_and_parked_with_its_input(
    serde: Serde, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.WARNING, logger="app.stages.dispatch")
    rec = Recorder()
    store: dict[bytes, Any] = {}
    st = stage(serde, Provider("p", ValueError("adapter bug")), store=store, **rec.wiring())
    raw = payload(serde)
    out = await st.handle(raw, ORIGIN, "normal")
    assert out is not None and out.topic == DEAD and out.value.reason == "ambiguous"
    assert out.value.payload == raw and out.value.original_offset == 40
    assert [s for _, s, _ in rec.of("response")] == ["error"]
    assert rec.of("breaker") == [] and store == {}  # no transition
    assert st.board.state("p", 2).breaker.error_rate(NOW) == (0.0, 0)  # not the breaker's
    [record] = [r for r in caplog.records if r.name == "app.stages.dispatch"]
    assert record.getMessage() == "dispatch: unexpected error for e-1"
    assert record.exc_info is not None and record.exc_info[0] is ValueError
    # another send's failures trip the breaker while this one is in flight: not this
    # answer's doing, but a transition, logged with this send's partition, persisted
    # and reported as every transition is
    caplog.clear()

    def trip() -> None:
        br = st.board.state("p", 2).breaker
        br.state, br.opened_at = "open", NOW

    st = stage(serde, Provider("p", ValueError("bug"), on_send=trip), store=store, **rec.wiring())
    out = await st.handle(raw, ORIGIN, "normal")
    assert out is not None and out.topic == DEAD and out.value.reason == "ambiguous"
    assert rec.of("breaker") == [("p", "open")]
    assert store[key_for("p", 2, 4)]["breaker"] == "open"
    assert [r.getMessage() for r in caplog.records if r.name == "app.stages.dispatch"] == [
        "dispatch: unexpected error for e-1",
        "provider p partition 2: breaker closed -> open",
    ]


async def test_a_clean_failure_at_the_last_attempt_is_dead_with_its_input(serde: Serde) -> None:
    error = TransientProviderError("503", provider="p", status=503)
    pol = [ProviderPolicy(name="p", retry_min_failing_s=0.0)]
    st = stage(serde, Provider("p", error), policies=pol, max_attempts=1)
    raw = payload(serde)
    out = await st.handle(raw, ORIGIN, "normal")
    assert out is not None and out.topic == DEAD and out.value.payload == raw


async def test_a_parked_operator_replay_keeps_its_replay_number(serde: Serde) -> None:
    lost = TransientProviderError("read timeout", provider="p", ambiguous=True)
    table: dict[bytes, Any] = {}
    st = stage(serde, Provider("p", lost), table=table)
    origin = Origin("email.dispatch.normal", 2, 40, 123, b"k", (("spillway-replay", b"3"),))
    out = await st.handle(payload(serde, replay=True), origin, "normal")
    assert out is not None and out.value.reason == "ambiguous"
    assert (table[b"e-1"]["s"], table[b"e-1"]["r"]) == ("ambiguous", 3)
