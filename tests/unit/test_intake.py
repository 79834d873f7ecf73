"""Intake bodies through a real aiohttp server on a local port (no fake streams).

The handlers are the ones a Faust intake worker mounts (app.intake.IntakeService); the
sink records what would be appended and acknowledges at once. Large, chunked, slow,
truncated, compressed and hostile bodies go over real TCP.
"""

from __future__ import annotations

import asyncio
import gzip
import json
from collections.abc import AsyncIterator, Awaitable
from typing import Any

import aiohttp
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from app.errors import IntakeError, SchemaError
from app.intake import Intake, key_of
from app.intake_body import DEFAULT_MAX_DEPTH, event_problems, parse_batch, parse_object
from app.serde import raw_event_from_json
from tests.plugins.intake import MemorySink, Serve, read_answer


def event_of(size: int, event_id: str = "e1") -> bytes:
    """A valid JSON event of exactly ``size`` bytes."""
    head: dict[str, Any] = {"event_id": event_id, "template": "t", "to": "a@x.example"}
    head["data"] = {"blob": ""}
    fixed = len(json.dumps(head).encode())
    head["data"]["blob"] = "x" * (size - fixed)
    body = json.dumps(head).encode()
    assert len(body) == size
    return body


def http(path: str, body: bytes, *extra: str, length: int | None = None) -> bytes:
    lines = [
        f"POST {path} HTTP/1.1",
        "Host: intake",
        "Content-Type: application/json",
        "Connection: close",
        f"Content-Length: {len(body) if length is None else length}",
        *extra,
    ]
    return ("\r\n".join(lines) + "\r\n\r\n").encode() + body


def status_of(answer: bytes) -> tuple[int, dict[str, Any]]:
    head, _, body = answer.partition(b"\r\n\r\n")
    return int(head.split()[1]), json.loads(body)


# --- exact bodies --------------------------------------------------------------------


@pytest.mark.parametrize("size", [100, 65_535, 65_537, 200_000, 999_900])
async def test_large_bodies_arrive_whole(serve: Serve, size: int) -> None:
    served = await serve()
    body = event_of(size)
    status, answer = await served.post("/v1/events", body)
    assert status == 202, answer
    [(key, value, _)] = served.sink.records
    assert (key, value) == (b"e1", body)  # every byte, not what happened to be buffered


async def test_large_chunked_body_arrives_whole(serve: Serve) -> None:
    served = await serve()
    body = event_of(700_000)

    async def chunks() -> AsyncIterator[bytes]:
        for i in range(0, len(body), 8_191):
            yield body[i : i + 8_191]

    status, answer = await served.post("/v1/events", chunks())
    assert status == 202, answer
    assert served.sink.records[0][1] == body


async def test_slow_client_body_arrives_whole(serve: Serve) -> None:
    served = await serve()
    body = event_of(150_000)
    head = http("/v1/events", body)[: -len(body)]
    # the first half now, the rest after a pause: the server must wait for it
    answer = await served.raw(head + body[:75_000], then=body[75_000:], pause=0.3)
    status, result = status_of(answer)
    assert status == 202, result
    assert served.sink.records[0][1] == body


@pytest.mark.parametrize("extra", [0, 1, 48_576])
async def test_declared_length_over_the_limit_is_413(serve: Serve, extra: int) -> None:
    served = await serve(intake_max_body_bytes=1_048_576)
    body = b"x" * (1_048_576 + 1 + extra)
    status, answer = await served.post("/v1/events", body)
    assert (status, answer["reason"]) == (413, "body_too_large")
    assert "exceeds the limit of 1048576 bytes" in answer["error"]
    assert served.sink.records == []


async def test_chunked_body_over_the_limit_is_413(serve: Serve) -> None:
    served = await serve(intake_max_body_bytes=100_000)

    async def chunks() -> AsyncIterator[bytes]:
        for _ in range(30):
            yield b"x" * 10_000

    status, answer = await served.post("/v1/events", chunks())
    assert (status, answer["reason"]) == (413, "body_too_large")
    assert served.sink.records == []


@pytest.mark.parametrize("size", [1_000_001, 1_020_000, 1_048_576])
async def test_events_bigger_than_a_kafka_record_are_413_not_503(serve: Serve, size: int) -> None:
    """Under the body limit but over the producer's max_request_size (1,000,000)."""
    served = await serve(intake_max_body_bytes=1_048_576)
    status, answer = await served.post("/v1/events", event_of(size))
    assert (status, answer["reason"]) == (413, "record_too_large"), answer
    assert "largest the producer sends is 1000000 bytes" in answer["error"]
    assert served.sink.records == []


async def test_the_largest_record_that_fits_is_accepted(serve: Serve) -> None:
    served = await serve(intake_max_body_bytes=1_048_576)
    # key (2) + value + record/batch overhead must stay <= 1,000,000
    status, answer = await served.post("/v1/events", event_of(999_900))
    assert status == 202, answer
    status, answer = await served.post("/v1/events", event_of(999_990))
    assert (status, answer["reason"]) == (413, "record_too_large")


async def test_gzip_bomb_is_413(serve: Serve) -> None:
    served = await serve(intake_max_body_bytes=100_000)
    bomb = gzip.compress(b"[" + b" " * 5_000_000 + b"]")
    status, answer = await served.post("/v1/events", bomb, {"Content-Encoding": "gzip"})
    assert status in (413, 400), answer  # aiohttp may stop inflating first (400 framing)
    assert answer["reason"] in ("body_too_large", "body_incomplete")
    assert served.sink.records == []


async def test_gzip_body_within_the_limit_is_read(serve: Serve) -> None:
    served = await serve()
    body = event_of(50_000)
    gzipped = gzip.compress(body)
    status, answer = await served.post("/v1/events", gzipped, {"Content-Encoding": "gzip"})
    assert status == 202, answer
    assert served.sink.records[0][1] == body


async def test_body_cut_short_is_400_and_appends_nothing(serve: Serve) -> None:
    served = await serve()
    body = event_of(10_000)
    _, writer = await asyncio.open_connection("127.0.0.1", served.port)
    writer.write(http("/v1/events", body[:3_000], length=len(body)))
    await writer.drain()
    writer.close()  # the client goes away with 7,000 bytes missing
    await served.wait_answered(1)
    assert served.answered in ([0], [400])  # cancelled by aiohttp, or refused: never 5xx
    assert served.sink.records == []
    status, _ = await served.post("/v1/events", body)  # and the intake still serves
    assert status == 202


async def test_broken_chunked_framing_is_refused(serve: Serve) -> None:
    served = await serve(intake_body_timeout_s=0.5)
    head = (
        b"POST /v1/events HTTP/1.1\r\nHost: intake\r\nContent-Type: application/json\r\n"
        b"Connection: close\r\nTransfer-Encoding: chunked\r\n\r\n5\r\n{\"a\":\r\n"
    )
    broken = b"ZZZ\r\nnonsense\r\n0\r\n\r\n"
    # The broken chunk arrives while the handler reads. aiohttp's parser drops the rest
    # of the body without telling the reader, so the body never completes: the body
    # timeout answers (408) instead of a wait without end.
    status, result = status_of(await served.raw(head, then=broken, pause=0.2))
    assert (status, result["reason"]) in ((408, "body_timeout"), (400, "body_incomplete"))
    # all in one packet: aiohttp's parser refuses it before any handler (its text 400)
    answer = await served.raw(head + broken)
    assert answer.split()[1] == b"400", answer[:200]
    assert served.sink.records == []


async def test_a_body_slower_than_the_timeout_is_408(serve: Serve) -> None:
    served = await serve(intake_body_timeout_s=0.3)
    body = event_of(5_000)
    reader, writer = await asyncio.open_connection("127.0.0.1", served.port)
    try:
        writer.write(http("/v1/events", body[:100], length=len(body)))
        await writer.drain()  # and never the rest
        answer = await asyncio.wait_for(read_answer(reader), timeout=30)
    finally:
        writer.close()
    status, result = status_of(answer)
    assert (status, result["reason"]) == (408, "body_timeout")
    assert served.sink.records == []


# --- malformed and hostile JSON ---------------------------------------------------------


def nested(depth: int) -> dict[str, Any]:
    """An event whose ``data`` makes the whole object ``depth`` containers deep."""
    inner: Any = {}
    for _ in range(depth - 2):
        inner = {"a": inner}
    return {"event_id": "e", "template": "t", "to": "a@example.com", "data": inner}


@pytest.mark.parametrize(
    ("body", "status", "reason", "needle"),
    [
        (b"", 400, "empty_body", "empty body"),
        (b"null", 400, "invalid_event", "not null"),
        (b"[1, 2]", 400, "invalid_event", "not array"),
        (b'"x"', 400, "invalid_event", "not string"),
        (b"{oops", 400, "malformed_json", "not valid UTF-8 JSON"),
        (b"\xff\xfe{}", 400, "malformed_json", "not valid UTF-8 JSON"),
        (b'{"event_id": NaN}', 400, "malformed_json", "NaN is not JSON"),
        (b'{"event_id": "e", "created_at": Infinity}', 400, "malformed_json", "Infinity"),
        (b"[" * 200_000, 400, "too_deep", "nests too deeply"),
        (b'{"a":' * 100_000, 400, "too_deep", "nests too deeply"),
        (json.dumps(nested(DEFAULT_MAX_DEPTH + 1)).encode(), 400, "too_deep", "deeper than 65"),
        (b'{"event_id": "\\ud800", "template": "t", "to": "a"}', 400, "invalid_event", "surrogate"),
        (b'{"event_id": "", "template": "t", "to": "a"}', 400, "invalid_event", "'event_id'"),
        (b'{"event_id": "e", "template": 5, "to": "a"}', 400, "invalid_event", "'template'"),
        (b'{"event_id": "e", "template": "t", "to": "a", "priority": "urgent"}', 400,
         "invalid_event", "'priority'"),
        (b'{"event_id": "e", "template": "t", "to": "a", "created_at": 1e30}', 400,
         "invalid_event", "'created_at'"),
        (b'{"event_id": "e", "template": "t", "to": "a", "created_at": 99999999999999999999}',
         400, "invalid_event", "out of range"),
        (b'{"event_id": "e", "template": "t", "to": "a", "data": []}', 400, "invalid_event",
         "'data'"),
    ],
)
async def test_bad_single_events_are_400_with_a_reason(
    serve: Serve, body: bytes, status: int, reason: str, needle: str
) -> None:
    served = await serve()
    got, answer = await served.post("/v1/events", body)
    assert (got, answer["reason"]) == (status, reason), answer
    assert needle in answer["error"]
    assert served.sink.records == []


async def test_deepest_and_fullest_allowed_events_pass(serve: Serve) -> None:
    served = await serve()
    status, answer = await served.post("/v1/events", json.dumps(nested(DEFAULT_MAX_DEPTH)).encode())
    assert status == 202, answer
    wide = {"event_id": "w", "template": "t", "to": "a@x.example", "data": {"l": [0] * 9_990}}
    status, answer = await served.post("/v1/events", json.dumps(wide).encode())
    assert status == 202, answer
    wide["data"] = {"l": [0] * 10_000}
    status, answer = await served.post("/v1/events", json.dumps(wide).encode())
    assert (status, answer["reason"]) == (400, "too_many_values")
    assert len(served.sink.records) == 2


async def test_control_characters_and_unicode_are_kept(serve: Serve) -> None:
    served = await serve()
    event: dict[str, Any] = {"event_id": "c\x00\x1f", "template": "t", "to": "ü@x.example"}
    event["data"] = {"k": "\u2028😀"}
    body = json.dumps(event, ensure_ascii=False).encode()
    status, answer = await served.post("/v1/events", body)
    assert status == 202, answer
    assert served.sink.records[0][:2] == (b"c\x00\x1f", body)


@pytest.mark.parametrize(
    ("body", "status", "reason", "needle"),
    [
        (b"[]", 400, "invalid_event", "batch is empty"),
        (b'{"events": 3}', 400, "invalid_event", "JSON array"),
        (b'[{"event_id": "e", "template": "t", "to": "a"}, 2]', 400, "invalid_event",
         "events[1]: must be a JSON object"),
        (json.dumps([{"event_id": "e", "template": "t", "to": "a"}] * 11).encode(), 413,
         "batch_too_large", "exceeds the limit of 10"),
        (json.dumps([nested(DEFAULT_MAX_DEPTH + 1)]).encode(), 400, "too_deep", "events[0]"),
    ],
)
async def test_bad_batches_are_refused_whole(
    serve: Serve, body: bytes, status: int, reason: str, needle: str
) -> None:
    served = await serve(intake_max_batch=10)
    got, answer = await served.post("/v1/events/batch", body)
    assert (got, answer["reason"]) == (status, reason), answer
    assert needle in answer["error"]
    assert served.sink.records == []


async def test_batch_forms_append_every_event(serve: Serve) -> None:
    served = await serve()
    events = [{"event_id": f"b{i}", "template": "t", "to": "a@x.example"} for i in range(3)]
    status, answer = await served.post("/v1/events/batch", json.dumps(events).encode())
    assert status == 202 and answer["accepted"] == 3
    status, answer = await served.post("/v1/events/batch", json.dumps({"events": events}).encode())
    assert status == 202 and [r["offset"] for r in answer["results"]] == [3, 4, 5]
    assert [k for k, _, _ in served.sink.records] == [b"b0", b"b1", b"b2"] * 2


async def test_avro_framing_and_key(serve: Serve) -> None:
    served = await serve()
    avro = {"content-type": "application/vnd.confluent.avro"}
    status, answer = await served.post("/v1/events", b"{}", avro)
    assert (status, answer["reason"]) == (400, "invalid_avro")
    status, answer = await served.post("/v1/events", b"\x00\x00\x00", avro)
    assert (status, answer["reason"]) == (400, "invalid_avro")
    framed = b"\x00\x00\x00\x00\x01" + b"\x02"
    status, _ = await served.post("/v1/events", framed, {**avro, "X-Event-Id": "av1"})
    assert status == 202
    assert served.sink.records == [(b"av1", framed, [])]


async def test_unknown_paths_and_methods_answer_json(serve: Serve) -> None:
    served = await serve()
    async with aiohttp.ClientSession() as session:
        async with session.get(f"{served.url}/v1/events") as r:
            assert r.status == 405 and (await r.json())["reason"] == "method_not_allowed"
            assert "POST" in r.headers["Allow"]
        async with session.get(f"{served.url}/v1/nothing") as r:
            assert r.status == 404 and (await r.json())["reason"] == "not_found"
        async with session.get(f"{served.url}/openapi.json") as r:
            doc = await r.json()
            assert r.status == 200 and doc["openapi"].startswith("3.")
            assert set(doc["paths"]) == {"/v1/events", "/v1/events/batch", "/openapi.json"}


# --- pure parts --------------------------------------------------------------------------


def test_parse_functions_raise_intake_errors() -> None:
    with pytest.raises(IntakeError, match="must be a JSON object, not array") as info:
        parse_object(b"[1]")
    assert info.value.status == 400
    assert parse_batch(b'{"events": [{"event_id": "e", "template": "t", "to": "a"}]}', 5)


def test_key_is_the_event_id() -> None:
    assert key_of({"event_id": "e1"}) == b"e1"
    assert key_of({"event_id": 5}) is None


json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(),
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(), inner, max_size=3),
    max_leaves=8,
)
field = st.sampled_from(
    ["event_id", "template", "to", "priority", "data", "data_json", "source", "locale",
     "template_version", "from_address", "created_at"]
)
near_events = st.dictionaries(
    field,
    json_values | st.sampled_from(["critical", "normal", "bulk", "x", 2**63, -(2**63) - 1]),
    max_size=11,
)


@settings(max_examples=400, deadline=None)
@given(near_events)
def test_the_shape_check_agrees_with_render(obj: dict[str, Any]) -> None:
    """What intake accepts, render's decoder accepts, and the other way round."""
    body = json.dumps(obj).encode()
    try:
        raw_event_from_json(body)
        render_ok = True
    except SchemaError:
        render_ok = False
    assert (event_problems(obj) == []) == render_ok


class StuckSink(MemorySink):
    async def send(
        self,
        key: bytes | None,
        value: bytes,
        headers: list[tuple[str, bytes]],
        priority: str | None = None,
    ) -> Awaitable[Any]:
        return asyncio.get_running_loop().create_future()  # the broker never acknowledges


async def test_no_ack_means_503_with_retry_after() -> None:
    with pytest.raises(IntakeError, match="did not acknowledge") as info:
        await Intake(StuckSink(), ack_timeout_s=0.05, retry_after_s=7).append([(b"k", b"{}")])
    assert (info.value.status, info.value.retry_after) == (503, 7)


async def test_no_ack_over_http_is_a_json_503(serve: Serve) -> None:
    served = await serve(StuckSink(), intake_ack_timeout_s=0.05, intake_retry_after_s=7)
    async with aiohttp.ClientSession() as session:
        body = b'{"event_id": "e", "template": "t", "to": "a"}'
        headers = {"content-type": "application/json"}
        async with session.post(f"{served.url}/v1/events", data=body, headers=headers) as r:
            assert (r.status, r.headers["Retry-After"]) == (503, "7")
            assert (await r.json())["reason"] == "broker_unavailable"


json_texts = st.one_of(
    st.binary(max_size=200),
    json_values.map(lambda v: json.dumps(v).encode()),
    near_events.map(lambda v: json.dumps(v).encode()),
    st.integers(1, 3000).map(lambda n: b"[" * n + b"]" * n),
    st.integers(1, 3000).map(lambda n: b'{"a":' * n + b"1" + b"}" * n),
)


@settings(max_examples=400, deadline=None)
@given(json_texts)
def test_any_bytes_parse_or_are_refused_with_a_4xx(body: bytes) -> None:
    """No input makes the parsers raise anything but a 4xx IntakeError."""
    for parse in (parse_object, lambda b: parse_batch(b, 1000)):
        try:
            parse(body)
        except IntakeError as exc:
            assert 400 <= exc.status < 500
            assert str(exc)
