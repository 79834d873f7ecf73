from __future__ import annotations

import asyncio

import pytest

from app.errors import PermanentProviderError, TransientProviderError
from app.models import DispatchRequest, SendResult
from app.providers.base import OutboundEmail, SendReceipt
from app.serde import Serde
from app.stages.common import Origin
from app.stages.dispatch import DispatchStage
from app.stages.lanes import LaneGate
from app.tables.ledger import Ledger

ORIGIN = Origin("email.dispatch.normal", 1, 3, None, b"e-1")


class FakeProvider:
    name = "fake"

    def __init__(self, error: Exception | None = None, delay: float = 0.0) -> None:
        self.calls: list[OutboundEmail] = []
        self.error = error
        self.delay = delay

    async def send(self, email: OutboundEmail) -> SendReceipt:
        self.calls.append(email)
        await asyncio.sleep(self.delay)
        if self.error:
            raise self.error
        return SendReceipt(provider="fake", message_id=f"m-{email.event_id}", latency_s=0.01)

    async def aclose(self) -> None:
        pass


def request(event_id: str = "e-1", priority: str = "normal") -> DispatchRequest:
    return DispatchRequest(
        event_id=event_id,
        priority=priority,
        to="a@b.example",
        from_address="s@b.example",
        subject="s",
        html="<p>h</p>",
        text="h",
        template="t",
        template_version="v1",
        source="src",
        accepted_at=1_000,
        rendered_at=1_100,
    )


def make(serde: Serde, provider: FakeProvider, table: dict | None = None) -> DispatchStage:
    return DispatchStage(
        serde, provider, Ledger({} if table is None else table), LaneGate(), clock=lambda: 2.5
    )


async def test_sends_and_records_result(serde: Serde) -> None:
    provider = FakeProvider()
    stage = make(serde, provider)
    out = await stage.handle(serde.encode("email.dispatch.normal", request()), ORIGIN, "normal")
    assert out is not None and out.topic == "sent"
    result = out.value
    assert isinstance(result, SendResult)
    assert (result.provider_message_id, result.attempts, result.time_to_send_ms) == (
        "m-e-1",
        1,
        1_500.0,
    )
    assert provider.calls[0].event_id == "e-1"
    assert stage.ledger.get("e-1").state == "sent"  # type: ignore[union-attr]


async def test_already_sent_is_suppressed(serde: Serde) -> None:
    provider = FakeProvider()
    stage = make(serde, provider)
    payload = serde.encode("email.dispatch.normal", request())
    await stage.handle(payload, ORIGIN, "normal")
    assert await stage.handle(payload, ORIGIN, "normal") is None
    assert len(provider.calls) == 1 and stage.stats.duplicates_suppressed == 1


async def test_concurrent_duplicates_send_once(serde: Serde) -> None:
    provider = FakeProvider(delay=0.01)
    stage = make(serde, provider)
    payload = serde.encode("email.dispatch.normal", request())
    outs = await asyncio.gather(*(stage.handle(payload, ORIGIN, "normal") for _ in range(5)))
    assert len(provider.calls) == 1 and sum(o is not None for o in outs) == 1


async def test_in_flight_from_a_crash_is_sent_again_with_same_key(serde: Serde) -> None:
    table = {b"e-1": {"s": "in_flight", "p": "fake", "m": None, "t": 0}}
    provider = FakeProvider()
    out = await make(serde, provider, table).handle(
        serde.encode("email.dispatch.normal", request()), ORIGIN, "normal"
    )
    assert out is not None and out.topic == "sent"
    assert provider.calls[0].event_id == "e-1"


@pytest.mark.parametrize(
    ("error", "reason", "retriable"),
    [
        (
            PermanentProviderError("bad rcpt", provider="fake", status=400),
            "provider_rejected",
            False,
        ),
        (TransientProviderError("503", provider="fake", status=503), "provider_unavailable", True),
    ],
)
async def test_failure_is_a_dead_letter_with_history(
    serde: Serde, error: Exception, reason: str, retriable: bool
) -> None:
    stage = make(serde, FakeProvider(error))
    out = await stage.handle(serde.encode("email.dispatch.normal", request()), ORIGIN, "normal")
    assert out is not None and out.topic == "dead"
    dl = out.value
    assert (dl.reason, dl.retriable, dl.provider, dl.event_id) == (reason, retriable, "fake", "e-1")
    assert len(dl.history) == 1 and dl.history[0].reason == reason
    assert stage.ledger.get("e-1").state == "failed"  # type: ignore[union-attr]


async def test_undecodable_goes_dead(serde: Serde) -> None:
    out = await make(serde, FakeProvider()).handle(b"\x00\x00\x00\x99\x01zz", ORIGIN, "bulk")
    assert out is not None and (out.topic, out.value.reason) == ("dead", "undecodable")
