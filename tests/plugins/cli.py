"""A fake confluent-kafka producer for the CLI tests.

Fixture: ``producer`` (confluent_kafka.Producer replaced by :class:`FakeProducer`; its
``instances`` are the producers made during the test).
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest


class FakeMessage:
    def __init__(self, topic: str, partition: int, offset: int) -> None:
        self._t, self._p, self._o = topic, partition, offset

    def partition(self) -> int:
        return self._p

    def offset(self) -> int:
        return self._o

    def topic(self) -> str:
        return self._t


class FakeProducer:
    """Acknowledges every message on flush (or fails them all when ``fail`` is set)."""

    instances: list[FakeProducer] = []
    fail: str | None = None

    def __init__(self, conf: dict[str, Any]) -> None:
        self.conf = conf
        self.sent: list[tuple[str, bytes | None, bytes]] = []
        self._pending: list[tuple[Any, FakeMessage]] = []
        FakeProducer.instances.append(self)

    def produce(self, topic: str, key: bytes | None, value: bytes, on_delivery: Any) -> None:
        msg = FakeMessage(topic, len(self.sent) % 4, len(self.sent) // 4)
        self.sent.append((topic, key, value))
        self._pending.append((on_delivery, msg))

    def poll(self, timeout: float) -> int:
        return 0

    def flush(self, timeout: float) -> int:
        for callback, msg in self._pending:
            callback(self.fail, None if self.fail else msg)
        self._pending.clear()
        return 0


@pytest.fixture
def producer(monkeypatch: pytest.MonkeyPatch) -> Iterator[type[FakeProducer]]:
    import confluent_kafka

    FakeProducer.instances = []
    FakeProducer.fail = None
    monkeypatch.setattr(confluent_kafka, "Producer", FakeProducer)
    yield FakeProducer
