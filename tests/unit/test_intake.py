from __future__ import annotations

import asyncio
import json
from types import SimpleNamespace
from typing import Any

import pytest

from app.errors import IntakeError
from app.intake import Intake, key_of, parse_batch, parse_object, read_body


class FakeContent:
    def __init__(self, body: bytes) -> None:
        self.body = body

    async def read(self, n: int) -> bytes:
        return self.body[:n]


def request(body: bytes, declared: int | None = None) -> Any:
    return SimpleNamespace(content_length=declared, content=FakeContent(body))


async def test_body_limits() -> None:
    assert await read_body(request(b"{}"), 10) == b"{}"
    with pytest.raises(IntakeError, match="exceeds the limit of 10") as info:
        await read_body(request(b"x" * 11), 10)
    assert info.value.status == 413
    with pytest.raises(IntakeError) as info:
        await read_body(request(b"{}", declared=10_000), 10)
    assert info.value.status == 413
    with pytest.raises(IntakeError, match="empty body"):
        await read_body(request(b""), 10)


@pytest.mark.parametrize(
    ("body", "match"),
    [
        (b"[1]", "must be a JSON object, not list"),
        (b"\xff", "not valid UTF-8 JSON"),
        (b'"x"', "not str"),
    ],
)
def test_single_must_be_an_object(body: bytes, match: str) -> None:
    with pytest.raises(IntakeError, match=match) as info:
        parse_object(body)
    assert info.value.status == 400


def test_batch_forms_and_limits() -> None:
    assert parse_batch(b'[{"a": 1}]', 5) == [{"a": 1}]
    assert parse_batch(b'{"events": [{"a": 1}, {"b": 2}]}', 5) == [{"a": 1}, {"b": 2}]
    with pytest.raises(IntakeError, match=r"events\[1\] must be a JSON object"):
        parse_batch(b'[{"a": 1}, 2]', 5)
    with pytest.raises(IntakeError, match="exceeds the limit of 2") as info:
        parse_batch(json.dumps([{}] * 3).encode(), 2)
    assert info.value.status == 413
    with pytest.raises(IntakeError, match="empty"):
        parse_batch(b"[]", 2)


def test_key_is_the_event_id() -> None:
    assert key_of({"event_id": "e1"}) == b"e1"
    assert key_of({"event_id": 5}) is None


class StuckTopic:
    """A topic whose broker never acknowledges."""

    async def maybe_declare(self) -> None:
        pass

    async def send(self, key: bytes | None, value: bytes) -> asyncio.Future[Any]:
        return asyncio.get_running_loop().create_future()


async def test_no_ack_means_503_with_retry_after() -> None:
    settings = SimpleNamespace(intake_ack_timeout_s=0.05, intake_retry_after_s=7)
    runtime = SimpleNamespace(
        settings=settings, topology=SimpleNamespace(topics={"raw": StuckTopic()})
    )
    with pytest.raises(IntakeError, match="did not acknowledge") as info:
        await Intake(runtime).append([(b"k", b"{}")])  # type: ignore[arg-type]
    assert (info.value.status, info.value.retry_after) == (503, 7)
