"""Fakes for outbound dependencies: a scripted provider, the replay tool's sink and backend.

Fixtures: ``ns_serde`` (a serde for the topics of namespace ``ns.``).
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass, field
from typing import Any

import pytest

from app.providers.base import OutboundEmail, SendReceipt
from app.replay import Backend, ReplayError
from app.serde import Serde
from app.settings import Settings
from app.stages.deadletters import StoredDeadLetter

NS_SETTINGS = Settings(topic_namespace="ns.")


class FakeProvider:
    """Answers from a script of outcomes (None = accept), then accepts."""

    def __init__(self, *script: Exception | None, name: str = "fake", delay: float = 0.0):
        self.name = name
        self.calls: list[OutboundEmail] = []
        self.script = list(script)
        self.delay = delay

    async def send(self, email: OutboundEmail) -> SendReceipt:
        self.calls.append(email)
        await asyncio.sleep(self.delay)
        outcome = self.script.pop(0) if self.script else None
        if outcome is not None:
            raise outcome
        return SendReceipt(provider=self.name, message_id=f"m-{email.event_id}", latency_s=0.01)

    async def aclose(self) -> None:
        pass


@dataclass
class FakeSink:
    """The replay tool's producer: keeps records; ``fail`` makes flush raise."""

    records: list[tuple[str, bytes | None, bytes, dict[str, bytes]]] = field(default_factory=list)
    flushed: int = 0
    fail: bool = False

    def produce(
        self, topic: str, key: bytes | None, value: bytes, headers: list[tuple[str, bytes]]
    ) -> None:
        self.records.append((topic, key, value, dict(headers)))

    def flush(self) -> None:
        self.flushed += 1
        if self.fail:
            raise ReplayError("broker did not ack")


def backend(serde: Serde, letters: list[StoredDeadLetter], sink: FakeSink) -> Backend:
    """A replay Backend over a list of dead letters (namespace ``ns.``)."""

    def read(since_ms: int | None) -> list[StoredDeadLetter]:
        return [s for s in letters if since_ms is None or s.letter.dead_at >= since_ms]

    return Backend(NS_SETTINGS, serde, read=read, sink=lambda: sink)


def make_ns_serde(registry: Any) -> Serde:
    """A serde for the topics of namespace ``ns.``."""
    from app.topology import TOPICS

    s = Serde(registry, {NS_SETTINGS.topic(t): schema for t, schema in TOPICS.values()})
    s.register()
    return s


@pytest.fixture
def ns_serde(registry: Any) -> Serde:
    return make_ns_serde(registry)
