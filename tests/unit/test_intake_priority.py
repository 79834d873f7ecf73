"""The HTTP intake picks the raw topic by the event's priority (issue 14): JSON events
go to email.raw-events.<priority>, Avro bodies (never decoded) to the catch-all."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from app.intake import ProducerSink, priority_of
from tests.plugins.intake import Serve, intakes


@pytest.fixture
async def serve() -> AsyncIterator[Serve]:
    async with intakes() as start:
        yield start


def event(i: int, **over: Any) -> dict[str, Any]:
    return {"event_id": f"p{i}", "template": "t", "to": "a@x.example", **over}


@pytest.mark.parametrize(
    ("obj", "expected"),
    [
        (event(0, priority="critical"), "critical"),
        (event(0, priority="bulk"), "bulk"),
        (event(0), "normal"),  # no priority: the event's default
        (event(0, priority="urgent"), None),
        (event(0, priority=None), None),
        (event(0, priority=["critical"]), None),
        (event(0, priority="Critical"), None),
    ],
)
def test_priority_of(obj: dict[str, Any], expected: str | None) -> None:
    assert priority_of(obj) == expected


@given(st.dictionaries(st.text(max_size=10), st.none() | st.text(max_size=10) | st.integers()))
def test_priority_of_any_object_is_a_lane_or_the_catch_all(obj: dict[str, Any]) -> None:
    assert priority_of(obj) in ("critical", "normal", "bulk", None)


async def test_single_and_batch_events_go_to_their_priority(serve: Serve) -> None:
    served = await serve()
    status, _ = await served.post("/v1/events", json.dumps(event(0, priority="critical")).encode())
    assert status == 202
    batch = [event(1, priority="bulk"), event(2), event(3, priority="critical")]
    status, answer = await served.post("/v1/events/batch", json.dumps(batch).encode())
    assert status == 202 and answer["accepted"] == 3
    assert served.sink.priorities == ["critical", "bulk", "normal", "critical"]
    assert [k for k, _, _ in served.sink.records] == [b"p0", b"p1", b"p2", b"p3"]


async def test_avro_goes_to_the_catch_all(serve: Serve) -> None:
    served = await serve()
    avro = {"content-type": "application/vnd.confluent.avro", "X-Event-Id": "av1"}
    status, _ = await served.post("/v1/events", b"\x00\x00\x00\x00\x01\x02", avro)
    assert status == 202 and served.sink.priorities == [None]


async def test_producer_sink_sends_to_the_lane_topic() -> None:
    sent: list[str] = []

    class Producer:
        async def send(self, topic: str, **kw: Any) -> Any:
            sent.append(topic)
            return None

    lanes = {"critical": "ns.email.raw-events.critical"}
    sink = ProducerSink(Producer(), "ns.email.raw-events", 1_000_000, lanes)
    await sink.send(b"k", b"v", [], "critical")
    await sink.send(b"k", b"v", [], "bulk")  # no topic given for bulk: the catch-all
    await sink.send(b"k", b"v", [])
    assert sent == ["ns.email.raw-events.critical", "ns.email.raw-events", "ns.email.raw-events"]
