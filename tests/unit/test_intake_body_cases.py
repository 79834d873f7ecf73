"""The intake body reader and parser, exactly (issue 17 pt 5: survivors of the mutation
run): each refusal's status, code and the message the client reads, and the limits at
their boundaries. Bodies stream through aiohttp's own ``StreamReader`` (chunk by chunk,
errors set on the stream as aiohttp's parser sets them), not a fake that returns the
whole body in one read.
"""

from __future__ import annotations

import asyncio
from types import SimpleNamespace
from typing import Any
from unittest import mock

import orjson
import pytest
from aiohttp import StreamReader
from aiohttp.http_exceptions import DecompressSizeError, TransferEncodingError

from app.intake_body import (
    Refused,
    check_bounds,
    check_event,
    dumps,
    event_problems,
    loads,
    parse_batch,
    parse_object,
    read_body,
)

EVENT = {"event_id": "e1", "template": "t", "to": "a@x.example"}


def stream(*chunks: bytes, error: BaseException | None = None, eof: bool = True) -> StreamReader:
    reader = StreamReader(mock.Mock(), 2**16, loop=asyncio.get_running_loop())
    for chunk in chunks:
        reader.feed_data(chunk)
    if error is not None:
        reader.set_exception(error)
    elif eof:
        reader.feed_eof()
    return reader


def request(reader: StreamReader, declared: int | None = None) -> Any:
    return SimpleNamespace(content_length=declared, content=reader)


def refusal(exc: pytest.ExceptionInfo[Refused]) -> tuple[int, str, str]:
    return exc.value.status, exc.value.code, str(exc.value)


# -- read_body -------------------------------------------------------------------------


async def test_a_body_in_many_chunks_is_read_whole() -> None:
    chunks = [bytes([65 + i]) * 1000 for i in range(20)]
    got = await read_body(request(stream(*chunks)), limit=20_000)
    assert got == b"".join(chunks)


async def trickle(reader: StreamReader, *chunks: bytes) -> None:
    """Feed ``chunks`` one at a time, each read before the next arrives (``readany``
    returns everything buffered, so chunks fed together are read as one)."""
    for chunk in chunks:
        reader.feed_data(chunk)
        for _ in range(5):
            await asyncio.sleep(0)
    reader.feed_eof()


async def test_the_limit_counts_every_chunk_not_the_last_one() -> None:
    reader = stream(eof=False)
    task = asyncio.create_task(read_body(request(reader), limit=100))
    await trickle(reader, b"x" * 60, b"y" * 60)
    with pytest.raises(Refused) as exc:
        await asyncio.wait_for(task, 5)
    assert refusal(exc) == (413, "body_too_large", "body exceeds the limit of 100 bytes")
    # exactly at the limit, over three reads, is accepted
    reader = stream(eof=False)
    task = asyncio.create_task(read_body(request(reader), limit=100))
    await trickle(reader, b"x" * 50, b"y" * 30, b"z" * 20)
    assert await asyncio.wait_for(task, 5) == b"x" * 50 + b"y" * 30 + b"z" * 20


async def test_a_declared_length_over_the_limit_is_refused_before_reading() -> None:
    reader = stream(b"x" * 1000)
    with pytest.raises(Refused) as exc:
        await read_body(request(reader, declared=1000), limit=100)
    assert refusal(exc) == (
        413,
        "body_too_large",
        "body of 1000 bytes exceeds the limit of 100 bytes",
    )
    assert reader.total_bytes == 1000 and not reader.at_eof()  # not a byte consumed
    assert await reader.read(5) == b"xxxxx"


async def test_a_body_over_the_limit_once_decompressed() -> None:
    error = DecompressSizeError("too large")
    with pytest.raises(Refused) as exc:
        await read_body(request(stream(b"x" * 10, error=error)), limit=100)
    assert refusal(exc) == (
        413,
        "body_too_large",
        "body exceeds the limit of 100 bytes once decompressed",
    )


@pytest.mark.parametrize(
    ("error", "name"),
    [
        (TransferEncodingError("bad chunk size"), "TransferEncodingError"),
        (ConnectionResetError("peer went away"), "ConnectionResetError"),
        (asyncio.IncompleteReadError(b"ab", 10), "IncompleteReadError"),
    ],
)
async def test_a_broken_stream_is_an_incomplete_body(error: BaseException, name: str) -> None:
    with pytest.raises(Refused) as exc:
        await read_body(request(stream(b'{"a":', error=error)), limit=100)
    assert refusal(exc) == (
        400,
        "body_incomplete",
        f"the body ended early or its framing is broken ({name})",
    )


async def test_a_body_that_never_ends_times_out() -> None:
    with pytest.raises(Refused) as exc:
        await read_body(request(stream(b"{", eof=False)), limit=100, timeout_s=0.01)
    assert refusal(exc) == (408, "body_timeout", "the body did not arrive within 0.01 s")


async def test_an_empty_body_is_refused() -> None:
    with pytest.raises(Refused) as exc:
        await read_body(request(stream()), limit=100)
    assert refusal(exc) == (400, "empty_body", "empty body: send a JSON object")


# -- loads -----------------------------------------------------------------------------


def test_json_nesting_beyond_the_parser_is_too_deep() -> None:
    with pytest.raises(Refused) as exc:
        loads(b"[" * 200_000 + b"]" * 200_000)
    assert refusal(exc) == (400, "too_deep", "JSON nests too deeply to parse")


@pytest.mark.parametrize(
    ("body", "detail"),
    [
        (b"NaN", "NaN is not JSON"),
        (b"\xff", "'utf-8' codec can't decode byte 0xff in position 0: invalid start byte"),
        (b"{", "Expecting property name enclosed in double quotes: line 1 column 2 (char 1)"),
        (b"[1e400]", "the number 1e400 is too large for a double"),
        # a long number is named by its first 40 characters
        (b"[" + b"9" * 400 + b".5]", f"the number {'9' * 40} is too large for a double"),
    ],
)
def test_malformed_json_says_why(body: bytes, detail: str) -> None:
    with pytest.raises(Refused) as exc:
        loads(body)
    assert refusal(exc) == (400, "malformed_json", f"body is not valid UTF-8 JSON: {detail}")


# -- dumps -----------------------------------------------------------------------------


def test_the_fallback_for_big_integers_writes_the_bytes_orjson_writes() -> None:
    # beyond 64 bits orjson refuses and the standard library writes: the same compact
    # UTF-8 (no spaces, no \u escapes but the ones JSON needs), so a record's size and
    # bytes do not depend on which encoder ran
    value = {"s": "é\u2028中\x00", "l": [1, {"k": None}], "f": 0.5, "n": 1}
    expected = orjson.dumps(value)
    assert dumps(value) == expected
    big = dumps({**value, "n": 2**70})
    assert big == expected.replace(b'"n":1}', b'"n":1180591620717411303424}')


# -- check_bounds ----------------------------------------------------------------------


def test_values_limit_is_inclusive_and_counts_keys_and_items() -> None:
    check_bounds({"a": 1, "b": [1]}, max_depth=5, max_values=3)  # 2 keys + 1 item
    with pytest.raises(Refused) as exc:
        check_bounds({"a": 1, "b": [1, 2]}, max_depth=5, max_values=3)
    assert refusal(exc) == (400, "too_many_values", "body holds more than 3 keys and items")
    check_bounds([], max_depth=1, max_values=0)
    with pytest.raises(Refused):
        check_bounds([1], max_depth=1, max_values=0)


@pytest.mark.parametrize("container", ["list", "dict"])
def test_depth_limit_is_inclusive_for_arrays_and_objects(container: str) -> None:
    def nest(levels: int) -> Any:
        value: Any = 0
        for _ in range(levels):
            value = [value] if container == "list" else {"k": value}
        return value

    check_bounds(nest(4), max_depth=4, max_values=100)
    with pytest.raises(Refused) as exc:
        check_bounds(nest(5), max_depth=4, max_values=100)
    assert refusal(exc) == (400, "too_deep", "body nests deeper than 4 levels")


def test_a_scalar_does_not_end_the_walk() -> None:
    # the scalar is looked at first (last pushed); the deep value after it still counts
    with pytest.raises(Refused) as exc:
        check_bounds({"deep": [[[[0]]]], "flat": 1}, max_depth=3, max_values=100)
    assert exc.value.code == "too_deep"
    with pytest.raises(Refused) as exc:
        check_bounds(["\ud800", 1, "ok"], max_depth=3, max_values=100)
    assert exc.value.code == "invalid_event"


@pytest.mark.parametrize("value", [["\ud800"], {"k": "\udfff"}, {"\ud800": 1}])
def test_a_lone_surrogate_is_named_where_it_is(value: Any) -> None:
    with pytest.raises(Refused) as exc:
        check_bounds(value, max_depth=3, max_values=100, where="events[2]")
    assert refusal(exc) == (
        400,
        "invalid_event",
        "events[2] holds a lone surrogate: not valid Unicode text",
    )
    check_bounds(["caf\u00e9 \U0001f600"], max_depth=3, max_values=100)  # valid non-ASCII


# -- event shape and the parse entry points --------------------------------------------


@pytest.mark.parametrize(
    ("value", "kind"),
    [
        (None, "null"),
        (True, "boolean"),
        (False, "boolean"),
        (0, "number"),
        (1.5, "number"),
        ("x", "string"),
        ([], "array"),
        (b"x", "bytes"),  # not JSON at all: named by its Python type
    ],
)
def test_a_non_object_is_named_by_its_json_type(value: Any, kind: str) -> None:
    assert event_problems(value) == [f"must be a JSON object, not {kind}"]


def test_every_problem_of_an_event_is_listed_in_one_message() -> None:
    bad = {"event_id": 1, "template": ""}
    problems = event_problems(bad)
    assert len(problems) >= 2
    with pytest.raises(Refused) as exc:
        check_event(bad, "events[0]")
    assert refusal(exc) == (400, "invalid_event", "events[0]: " + "; ".join(problems))


def test_parse_object_names_the_event_in_its_refusals() -> None:
    assert parse_object(b'{"event_id": "e1", "template": "t", "to": "a@x.example"}') == EVENT
    with pytest.raises(Refused) as exc:
        parse_object(b'{"event_id": "e", "template": "t", "to": "a@x", "d": [[1]]}', max_depth=2)
    assert refusal(exc) == (400, "too_deep", "event nests deeper than 2 levels")
    with pytest.raises(Refused) as exc:
        parse_object(b"[]")
    assert refusal(exc) == (400, "invalid_event", "event: must be a JSON object, not array")


def test_batch_size_limit_is_inclusive() -> None:
    event = b'{"event_id": "e", "template": "t", "to": "a@x"}'
    body = b'{"events": [' + b",".join([event] * 3) + b"]}"
    assert len(parse_batch(body, max_batch=3)) == 3
    with pytest.raises(Refused) as exc:
        parse_batch(body, max_batch=2)
    assert refusal(exc) == (
        413,
        "batch_too_large",
        "batch of 3 events exceeds the limit of 2",
    )


@pytest.mark.parametrize(
    ("body", "message"),
    [
        (b"[]", "batch is empty"),
        (b'{"events": []}', "batch is empty"),
        (b'{"events": 1}', 'batch must be a JSON array of events or {"events": [...]}'),
        (b'"x"', 'batch must be a JSON array of events or {"events": [...]}'),
        (b"[1]", "events[0]: must be a JSON object, not number"),
    ],
)
def test_batch_refusals_say_what_is_wrong(body: bytes, message: str) -> None:
    with pytest.raises(Refused) as exc:
        parse_batch(body, max_batch=10)
    assert refusal(exc) == (400, "invalid_event", message)
