"""The intake's per-request path after the flash-sale work (issue 14 pt 4): each topic
declared once per process, records straight to the app's producer, orjson encoding with
the standard library's meaning, numbers that overflow a double refused, settings read
once (no flat-name lookups per request)."""

from __future__ import annotations

import asyncio
import gc
import json
import math
import warnings
from types import SimpleNamespace
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from app.errors import IntakeError
from app.intake import FaustSink, IntakeService, with_source
from app.intake_body import Refused, dumps, loads, parse_batch, parse_object
from app.settings import Settings
from tests.plugins.intake import MemorySink, Serve

EVENT = {"event_id": "e1", "template": "t", "to": "a@x.example"}


class FakeProducer:
    def __init__(self) -> None:
        self.sent: list[tuple[Any, ...]] = []
        self.starts = 0

    async def send(self, *args: Any) -> Any:
        self.sent.append(args)
        future = asyncio.get_running_loop().create_future()
        future.set_result(SimpleNamespace(topic=args[0], partition=0, offset=len(self.sent)))
        return future


class FakeApp:
    def __init__(self) -> None:
        self.producer = FakeProducer()

    async def maybe_start_producer(self) -> FakeProducer:
        self.producer.starts += 1
        return self.producer


class FakeTopic:
    """A Faust topic as FaustSink uses it: name, app, maybe_declare."""

    def __init__(self, app: FakeApp, name: str) -> None:
        self.app, self.name = app, name
        self.declared = 0

    def get_topic_name(self) -> str:
        return self.name

    async def maybe_declare(self) -> None:
        self.declared += 1


async def test_each_topic_is_declared_once_and_records_go_to_the_app_producer() -> None:
    app = FakeApp()
    raw = FakeTopic(app, "ns.email.raw-events")
    lanes = {p: FakeTopic(app, f"ns.email.raw-events.{p}") for p in ("critical", "bulk")}
    sink = FaustSink(raw, 1_000_000, lanes)
    headers = [("spillway-integration", b"shop")]
    for _ in range(3):
        await (await sink.send(b"k1", b"v1", headers, "critical"))
    await (await sink.send(b"k2", b"v2", [], None))
    await (await sink.send(None, b"v3", [], "no-such-lane"))  # -> the catch-all
    await (await sink.send(b"k4", b"v4", [], "bulk"))
    assert (lanes["critical"].declared, lanes["bulk"].declared, raw.declared) == (1, 1, 1)
    assert app.producer.sent == [
        *[("ns.email.raw-events.critical", b"k1", b"v1", None, None, headers)] * 3,
        ("ns.email.raw-events", b"k2", b"v2", None, None, None),
        ("ns.email.raw-events", None, b"v3", None, None, None),
        ("ns.email.raw-events.bulk", b"k4", b"v4", None, None, None),
    ]


async def test_a_failed_declaration_is_tried_again_on_the_next_send() -> None:
    app = FakeApp()
    topic = FakeTopic(app, "ns.email.raw-events")
    calls = 0

    async def flaky() -> None:
        nonlocal calls
        calls += 1
        if calls == 1:
            raise ConnectionError("broker away")

    topic.maybe_declare = flaky  # type: ignore[method-assign]
    sink = FaustSink(topic, 1_000_000)
    with pytest.raises(ConnectionError):
        await sink.send(b"k", b"v", [], None)
    await (await sink.send(b"k", b"v", [], None))
    assert (calls, len(app.producer.sent)) == (2, 1)


async def test_the_heap_is_frozen_once_a_topic_is_declared() -> None:
    """What the worker holds after start-up and the first metadata fetch leaves the
    collector's full collections (app.intake.settle_heap); a later send freezes nothing."""
    app = FakeApp()
    sink = FaustSink(FakeTopic(app, "ns.email.raw-events"), 1_000_000)
    gc.unfreeze()
    try:
        assert gc.get_freeze_count() == 0
        await (await sink.send(b"k", b"v", [], None))
        frozen = gc.get_freeze_count()
        assert frozen > 0
        gc.unfreeze()
        await (await sink.send(b"k", b"v", [], None))
        assert gc.get_freeze_count() == 0
    finally:
        gc.unfreeze()


# -- numbers --------------------------------------------------------------------------


@pytest.mark.parametrize("text", ["1e400", "-1e400", "1E+999", "-0.1e310", "9" * 400 + ".0"])
def test_a_number_too_large_for_a_double_is_malformed_json(text: str) -> None:
    body = json.dumps({**EVENT, "data": {"n": "x"}}).replace('"x"', text).encode()
    with pytest.raises(Refused) as exc:
        parse_object(body)
    assert (exc.value.status, exc.value.code) == (400, "malformed_json")
    assert "too large for a double" in str(exc.value)
    with pytest.raises(Refused) as exc:
        parse_batch(b"[" + body + b"]", 10)
    assert (exc.value.status, exc.value.code) == (400, "malformed_json")


@pytest.mark.parametrize(
    ("text", "value"),
    [("1.7976931348623157e308", 1.7976931348623157e308), ("5e-324", 5e-324), ("1e-400", 0.0)],
)
def test_the_largest_and_smallest_doubles_pass(text: str, value: float) -> None:
    assert loads(f'{{"n": {text}}}'.encode()) == {"n": value}


async def test_an_overflowing_number_over_http_is_a_400_and_appends_nothing(
    serve: Serve,
) -> None:
    served = await serve()
    body = json.dumps({**EVENT, "data": {"n": 0}}).replace("0}", "1e400}").encode()
    status, answer = await served.post("/v1/events", body)
    assert (status, answer["reason"]) == (400, "malformed_json")
    assert served.sink.records == []


# -- encoding -------------------------------------------------------------------------

json_values = st.recursive(
    st.none()
    | st.booleans()
    | st.integers(min_value=-(2**80), max_value=2**80)  # beyond 64 bits: the fallback
    | st.floats(allow_nan=False, allow_infinity=False)
    | st.text(st.characters(exclude_categories=("Cs",))),  # no lone surrogates
    lambda children: st.lists(children, max_size=5)
    | st.dictionaries(st.text(st.characters(exclude_categories=("Cs",))), children, max_size=5),
    max_leaves=30,
)


@settings(max_examples=300, deadline=None)
@given(json_values)
def test_dumps_writes_json_the_standard_library_reads_back_as_the_same_value(value: Any) -> None:
    encoded = dumps(value)
    assert json.loads(encoded) == value
    assert loads(encoded) == value  # and intake's own strict parser takes it
    if isinstance(value, float):  # floats keep their exact value (not only ==: 0.0 vs -0.0)
        assert math.copysign(1, json.loads(encoded)) == math.copysign(1, value)


def test_a_rewritten_source_keeps_every_other_field_exactly() -> None:
    obj = {**EVENT, "source": "x", "data": {"big": 2**70, "f": 0.1, "s": "é\u2028\x00"}}
    body = json.dumps(obj).encode()
    assert with_source(obj, body, None) is body  # nothing to rewrite: the bytes as sent
    assert with_source({**obj, "source": "shop"}, body, "shop") is body
    rewritten = with_source(obj, body, "shop")
    assert json.loads(rewritten) == {**obj, "source": "shop"}


# -- settings -------------------------------------------------------------------------


async def test_requests_read_no_flat_setting_name(serve: Serve) -> None:
    """The flat names (settings.intake_body_timeout_s) warn on every read; the service
    reads the sections once. With warnings as errors, a flat read would be a 500."""
    with warnings.catch_warnings():
        warnings.simplefilter("error", DeprecationWarning)
        IntakeService(Settings(intake_auth="off"), MemorySink())  # construction too
        served = await serve()
        status, _ = await served.post("/v1/events", json.dumps(EVENT).encode())
        assert status == 202
        status, answer = await served.post("/v1/events/batch", json.dumps([EVENT] * 3).encode())
        assert (status, answer["accepted"]) == (202, 3)
        status, answer = await served.post("/v1/events", b"{")
        assert (status, answer["reason"]) == (400, "malformed_json")


def test_refusals_stay_intake_errors() -> None:
    with pytest.raises(IntakeError):
        loads(b"[1e400]")


def test_nesting_deeper_than_orjson_goes_is_encoded_by_the_standard_library() -> None:
    deep: Any = 1
    for _ in range(400):  # orjson stops at 254 levels
        deep = {"a": [deep]}
    assert json.loads(dumps(deep)) == deep


async def test_a_deep_event_in_a_batch_is_appended_as_sent(serve: Serve) -> None:
    """A batch is re-encoded event by event; an event deeper than orjson's limit (allowed
    by intake_max_json_depth=500) still goes out as the same JSON, not a 500."""
    served = await serve(intake_max_json_depth=500, intake_max_json_values=100_000)
    data: Any = "leaf"
    for _ in range(300):
        data = {"x": data}
    event = {**EVENT, "data": data}
    status, answer = await served.post("/v1/events/batch", json.dumps([event, EVENT]).encode())
    assert (status, answer["accepted"]) == (202, 2)
    assert [json.loads(value) for _, value, _ in served.sink.records] == [event, EVENT]
