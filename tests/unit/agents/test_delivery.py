"""Render and route hand their input back only after Kafka acknowledged every output
(issue 12 point 4): ``deliver`` awaits each produce future, retries failures, counts
and logs them, and raises when they persist."""

from __future__ import annotations

import asyncio
import logging
from typing import Any

import pytest

from app.agents import delivery, guard
from app.agents.delivery import ProduceFailedError, deliver
from app.serde import RegistryUnavailableError
from app.stages.common import Emission
from tests.plugins.metrics import RecordingMetrics


class FakeTopic:
    """Faust topic stand-in: ``send`` returns a future that the test resolves."""

    def __init__(self, outcomes: list[Any]) -> None:
        self.outcomes = outcomes  # per send: None (acked) or an exception
        self.sent: list[tuple[bytes | None, bytes]] = []

    async def send(self, *, key: bytes | None, value: bytes) -> asyncio.Future[Any]:
        self.sent.append((key, value))
        outcome = self.outcomes.pop(0) if self.outcomes else None
        future: asyncio.Future[Any] = asyncio.get_running_loop().create_future()
        loop = asyncio.get_running_loop()
        if outcome is None:
            loop.call_later(0.01, future.set_result, "metadata")
        else:
            loop.call_later(0.01, future.set_exception, outcome)
        return future


class FakeTopology:
    def __init__(self, topics: dict[str, FakeTopic]) -> None:
        self.topics = topics

    def name(self, logical: str) -> str:
        return f"email.{logical}"


class FakeRuntime:
    def __init__(self, topics: dict[str, FakeTopic]) -> None:
        self.topology = FakeTopology(topics)
        self.settings = type("S", (), {"stage": "render"})()
        self.metrics = RecordingMetrics()

    def encode(self, emission: Emission) -> bytes:
        assert emission.encoded is not None
        return emission.encoded


def emissions(n: int) -> list[Emission]:
    return [Emission("rendered", f"k{i}".encode(), None, f"v{i}".encode()) for i in range(n)]


async def test_returns_only_after_every_output_is_acknowledged() -> None:
    topic = FakeTopic([])
    await deliver(FakeRuntime({"rendered": topic}), emissions(5), stage="render")
    assert [v for _, v in topic.sent] == [b"v0", b"v1", b"v2", b"v3", b"v4"]


async def test_a_failed_produce_is_retried_counted_and_logged(
    caplog: pytest.LogCaptureFixture,
) -> None:
    error = type("KafkaTimeoutError", (Exception,), {})("no ack")
    topic = FakeTopic([None, error, None])  # the 2nd of 3 fails once
    runtime = FakeRuntime({"rendered": topic})
    with caplog.at_level(logging.WARNING):
        await deliver(runtime, emissions(3), stage="render", pause_s=0)
    assert [v for _, v in topic.sent] == [b"v0", b"v1", b"v2", b"v1"]  # only v1 again
    assert runtime.metrics.of("produce_failed") == [("render", "rendered", "KafkaTimeoutError")]
    assert [e.encoded for e, _ in runtime.metrics.of("emitted")] == [b"v0", b"v2", b"v1"]
    assert "produce to email.rendered failed (try 1 of 3): KafkaTimeoutError: no ack" in caplog.text


async def test_a_persistent_failure_raises_so_the_input_is_not_acked() -> None:
    topic = FakeTopic([ConnectionError("broker gone")] * 3)
    with pytest.raises(ProduceFailedError, match=r"email\.rendered: ConnectionError"):
        await deliver(FakeRuntime({"rendered": topic}), emissions(1), stage="render", pause_s=0)
    assert len(topic.sent) == 3


async def test_a_send_refused_before_queueing_is_a_failure_too() -> None:
    class Refusing(FakeTopic):
        async def send(self, *, key: bytes | None, value: bytes) -> asyncio.Future[Any]:
            self.sent.append((key, value))
            raise ValueError("MessageSizeTooLargeError")

    topic = Refusing([])
    with pytest.raises(ProduceFailedError):
        await deliver(FakeRuntime({"rendered": topic}), emissions(1), stage="render", pause_s=0)


@pytest.mark.parametrize(
    ("error", "traceback"),
    [
        (RegistryUnavailableError("schema registry unreachable for 900 s"), False),
        (ProduceFailedError("1 output(s) not acknowledged"), False),
        (RuntimeError("a bug"), True),
    ],
)
def test_guard_logs_one_line_for_a_known_infrastructure_fault(
    monkeypatch: pytest.MonkeyPatch,
    caplog: pytest.LogCaptureFixture,
    error: Exception,
    traceback: bool,
) -> None:
    monkeypatch.setattr(guard.os, "_exit", lambda code: (_ for _ in ()).throw(SystemExit(code)))
    monkeypatch.setattr(guard.logging, "shutdown", lambda: None)
    with (
        caplog.at_level(logging.CRITICAL),
        pytest.raises(SystemExit),
        guard.crash_on_error("render"),
    ):
        raise error
    (record,) = caplog.records
    assert str(error) in record.getMessage() and "\n" not in record.getMessage()
    assert (record.exc_info is not None) == traceback


def test_agents_use_delivery() -> None:
    import inspect

    from app.agents import render, route

    for module in (render, route):  # both run delivery's loop, which delivers each batch
        source = inspect.getsource(module)
        assert "delivery.prioritised(" in source and "runtime.emit(" not in source
    assert "_deliver_batch(" in inspect.getsource(delivery.prioritised)
    assert "await deliver(" in inspect.getsource(delivery._deliver_batch)
    assert delivery.deliver is deliver


class SlowTopic(FakeTopic):
    """Acks (or fails) only after ``delay`` seconds."""

    def __init__(self, delay: float, error: BaseException | None = None) -> None:
        super().__init__([])
        self.delay, self.error = delay, error

    async def send(self, *, key: bytes | None, value: bytes) -> asyncio.Future[Any]:
        self.sent.append((key, value))
        loop = asyncio.get_running_loop()
        future: asyncio.Future[Any] = loop.create_future()
        if self.error is None:
            loop.call_later(self.delay, future.set_result, "metadata")
        else:
            loop.call_later(self.delay, future.set_exception, self.error)
        return future


class HeldTopic(FakeTopic):
    """Acks only when the test says so (``ack_all``)."""

    def __init__(self) -> None:
        super().__init__([])
        self.futures: list[asyncio.Future[Any]] = []

    async def send(self, *, key: bytes | None, value: bytes) -> asyncio.Future[Any]:
        self.sent.append((key, value))
        future: asyncio.Future[Any] = asyncio.get_running_loop().create_future()
        self.futures.append(future)
        return future

    def ack_all(self) -> None:
        for future in self.futures:
            future.set_result("metadata")


async def test_a_stop_waits_for_outstanding_acks_before_the_batch_is_acked() -> None:
    topic = HeldTopic()
    task = asyncio.create_task(deliver(FakeRuntime({"rendered": topic}), emissions(3), stage="r"))
    for _ in range(100):
        if len(topic.futures) == 3:
            break
        await asyncio.sleep(0)
    assert len(topic.futures) == 3  # every output was produced
    task.cancel()  # Faust stopping the agent: the stream acks the batch as it closes
    for _ in range(50):
        await asyncio.sleep(0)
    assert not task.done()  # still waiting for the acks, cancelled or not
    topic.ack_all()
    with pytest.raises(asyncio.CancelledError):
        await asyncio.wait_for(task, 5)


async def test_a_stop_with_failed_outputs_exits_without_acking(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    class Exited(Exception):
        pass

    exits: list[int] = []

    def fake_exit(code: int) -> None:
        exits.append(code)
        raise Exited(code)  # not SystemExit: asyncio would re-raise that out of the loop

    monkeypatch.setattr(delivery.os, "_exit", fake_exit)
    monkeypatch.setattr(delivery.logging, "shutdown", lambda: None)
    topic = SlowTopic(0.1, ConnectionError("broker gone"))
    task = asyncio.create_task(deliver(FakeRuntime({"rendered": topic}), emissions(1), stage="r"))
    await asyncio.sleep(0.02)
    task.cancel()
    with pytest.raises(Exited):
        await task
    assert exits == [guard.EXIT_CODE]
