"""Route moves bytes (issue 14, point 2): the lane comes from the routing headers,
the value is not decoded; a record without valid headers takes the decoding path and
still becomes a dead letter when it cannot be read."""

from __future__ import annotations

import asyncio
import json
import string
from typing import Any

import pytest
from confluent_kafka.schema_registry import SchemaRegistryClient
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from app.models import PRIORITIES
from app.serde import Serde
from app.settings import Settings
from app.stages.common import Emission, Origin, Sealer
from app.stages.render import RenderStage, default_sealer
from app.stages.route import (
    EVENT_ID_HEADER,
    PRIORITY_HEADER,
    ROUTING_HEADERS,
    TEMPLATE_HEADER,
    RouteStage,
    Routing,
    parse_routing,
    routing_headers,
)
from app.templating import TemplateStore
from app.topology import topic_schemas
from tests.plugins.factories import raw_event

STORE = TemplateStore(Settings().templates_dir)
LANES = {f"dispatch.{p}" for p in PRIORITIES}


def rendered_record(serde: Serde, priority: str = "bulk") -> Emission:
    """What render produced for a real event: value bytes and headers."""
    stage = RenderStage(serde, STORE, "Shop <no-reply@shop.example>")
    payload = json.dumps(raw_event(priority=priority, event_id="ev-1")).encode()
    out = asyncio.run(stage.handle(payload, Origin("email.raw-events", 0, 1, 1, b"ev-1")))
    assert out.topic == f"rendered.{priority}" and out.encoded
    return out


def origin(headers: Any = (), topic: str = "email.rendered.bulk") -> Origin:
    return Origin(topic, 2, 40, 1_700_000_000_000, b"ev-1", tuple(headers))


class NoDecode:
    """A serde that fails the test if route decodes (or encodes) anything."""

    def __init__(self, real: Serde) -> None:
        self.real = real

    async def decode(self, *a: Any) -> Any:
        raise AssertionError("route decoded a record that had routing headers")

    def encode(self, *a: Any) -> bytes:
        raise AssertionError("route encoded a record that had routing headers")


@pytest.mark.parametrize("priority", PRIORITIES)
async def test_bytes_move_unchanged_to_the_headers_lane(serde: Serde, priority: str) -> None:
    rec = await asyncio.to_thread(rendered_record, serde, priority)
    fake = NoDecode(serde)
    stage = RouteStage(fake, sealer=Sealer(fake.encode, 990_000))  # type: ignore[arg-type]
    out = await stage.handle(rec.encoded, origin(rec.headers, f"email.rendered.{priority}"))
    assert out.topic == f"dispatch.{priority}" and out.key == b"ev-1"
    assert out.encoded is rec.encoded  # the very bytes: no copy, no re-encoding
    assert dict(out.headers) == dict(rec.headers)
    # ... and dispatch reads them as the DispatchRequest render wrote
    request = serde.decode_known(out.encoded, "dispatch_request")
    assert (request.priority, request.attempts, request.event_id) == (priority, 0, "ev-1")


async def test_the_header_decides_the_lane_not_the_topic(serde: Serde) -> None:
    rec = await asyncio.to_thread(rendered_record, serde, "critical")
    out = await RouteStage(serde).handle(rec.encoded, origin(rec.headers, "email.rendered.bulk"))
    assert out.topic == "dispatch.critical"


async def test_without_headers_the_record_is_decoded_and_gets_them(serde: Serde) -> None:
    rec = await asyncio.to_thread(rendered_record, serde, "normal")
    out = await RouteStage(serde).handle(rec.encoded, origin())
    assert out.topic == "dispatch.normal" and out.encoded is not rec.encoded
    assert parse_routing(out.headers) == Routing("normal", "ev-1", "password_reset")
    assert serde.decode_known(out.encoded, "dispatch_request").event_id == "ev-1"


BAD_HEADERS = [
    [],  # none at all
    [(PRIORITY_HEADER, b"bulk"), (EVENT_ID_HEADER, b"ev-1")],  # template missing
    [(PRIORITY_HEADER, b"urgent"), (EVENT_ID_HEADER, b"ev-1"), (TEMPLATE_HEADER, b"t")],
    [(PRIORITY_HEADER, b"BULK"), (EVENT_ID_HEADER, b"ev-1"), (TEMPLATE_HEADER, b"t")],
    [(PRIORITY_HEADER, b"bulk "), (EVENT_ID_HEADER, b"ev-1"), (TEMPLATE_HEADER, b"t")],
    [(PRIORITY_HEADER, b"bulk"), (EVENT_ID_HEADER, b"ev 1"), (TEMPLATE_HEADER, b"t")],
    [(PRIORITY_HEADER, b"bulk"), (EVENT_ID_HEADER, b""), (TEMPLATE_HEADER, b"t")],
    [(PRIORITY_HEADER, b"bulk"), (EVENT_ID_HEADER, b"x" * 256), (TEMPLATE_HEADER, b"t")],
    [(PRIORITY_HEADER, b"bulk"), (EVENT_ID_HEADER, "é".encode()), (TEMPLATE_HEADER, b"t")],
    [(PRIORITY_HEADER, b"bulk"), (EVENT_ID_HEADER, b"\xff\xfe"), (TEMPLATE_HEADER, b"t")],
    [(PRIORITY_HEADER, b"bulk"), (EVENT_ID_HEADER, b"ev-1"), (TEMPLATE_HEADER, b"")],
    [(PRIORITY_HEADER, b"bulk"), (EVENT_ID_HEADER, b"ev-1"), (TEMPLATE_HEADER, b"a\x00b")],
    [(PRIORITY_HEADER, b"bulk"), (EVENT_ID_HEADER, b"ev-1"), (TEMPLATE_HEADER, b"t" * 256)],
    # the same header twice with two values: ambiguous, not guessed
    [(PRIORITY_HEADER, b"bulk"), (PRIORITY_HEADER, b"critical"),
     (EVENT_ID_HEADER, b"ev-1"), (TEMPLATE_HEADER, b"t")],
]


@pytest.mark.parametrize("headers", BAD_HEADERS)
def test_invalid_routing_headers_are_refused(headers: list[tuple[str, bytes]]) -> None:
    assert parse_routing(tuple(headers)) is None


def test_a_repeated_header_with_one_value_is_fine() -> None:
    twice = (*routing_headers("bulk", "ev-1", "t"), (PRIORITY_HEADER, b"bulk"))
    assert parse_routing(twice) == Routing("bulk", "ev-1", "t")


@pytest.mark.parametrize("headers", BAD_HEADERS)
@pytest.mark.parametrize(
    ("payload", "reason"),
    [(None, "empty_value"), (b"", "empty_value"), (b"junk", "undecodable"),
     (b"\x00\x00\x00\x00\x07junk", "undecodable")],
)
async def test_unroutable_and_undecodable_is_a_dead_letter(
    serde: Serde, headers: list[tuple[str, bytes]], payload: bytes | None, reason: str
) -> None:
    out = await RouteStage(serde).handle(payload, origin(headers))
    assert out.topic == "dead" and out.encoded
    letter = serde.decode_known(out.encoded, "dead_letter")
    assert (letter.stage, letter.reason) == ("route", reason)
    assert letter.payload == (payload or b"") and letter.original_offset == 40


@pytest.mark.parametrize("payload", [None, b"", b"junk", b"\x01abcdefgh", b"\x00\x00\x00"])
async def test_valid_headers_on_a_value_that_is_not_framed_avro_is_dead(
    serde: Serde, payload: bytes | None
) -> None:
    out = await RouteStage(serde).handle(payload, origin(routing_headers("bulk", "ev-1", "t")))
    assert out.topic == "dead"
    assert serde.decode_known(out.encoded, "dead_letter").reason in ("empty_value", "undecodable")


async def test_an_oversized_value_with_headers_is_too_large(serde: Serde) -> None:
    rec = await asyncio.to_thread(rendered_record, serde, "bulk")
    assert rec.encoded is not None
    stage = RouteStage(serde, sealer=default_sealer(serde, max_bytes=len(rec.encoded) - 1))
    out = await stage.handle(rec.encoded, origin(rec.headers))
    letter = serde.decode_known(out.encoded, "dead_letter")
    assert (out.topic, letter.reason, letter.priority) == ("dead", "too_large", "bulk")


# --- properties of the header parsing -------------------------------------------------

ID_ALPHABET = string.ascii_letters + string.digits + "!#$%&'*+/=?^_`{|}~.:@-"
event_ids = st.text(ID_ALPHABET, min_size=1, max_size=255)
template_names = st.text(
    st.characters(min_codepoint=0x20, max_codepoint=0x7E), min_size=1, max_size=255
)
header_names = st.sampled_from([*ROUTING_HEADERS, "spillway-replay", "other", ""])
header_values = st.one_of(
    st.binary(max_size=300),
    st.sampled_from([p.encode() for p in PRIORITIES]),
    st.text(max_size=40).map(lambda t: t.encode("utf-8", "surrogatepass")),
)


@given(st.sampled_from(PRIORITIES), event_ids, template_names)
def test_what_render_writes_route_reads_back(priority: str, event_id: str, template: str) -> None:
    assert parse_routing(routing_headers(priority, event_id, template)) == Routing(
        priority, event_id, template
    )


@given(st.lists(st.tuples(header_names, header_values), max_size=8))
def test_parse_routing_never_raises_and_accepts_only_valid_values(
    headers: list[tuple[str, bytes]],
) -> None:
    routing = parse_routing(tuple(headers))
    if routing is None:
        return
    values = {name: {v for k, v in headers if k == name} for name in ROUTING_HEADERS}
    assert all(len(v) == 1 for v in values.values())  # each present, one value
    assert routing.priority in PRIORITIES
    assert routing.event_id.encode() in values[EVENT_ID_HEADER]
    assert set(routing.event_id) <= set(ID_ALPHABET) and 1 <= len(routing.event_id) <= 255
    assert routing.template.isascii() and routing.template.isprintable()


_REGISTRY = SchemaRegistryClient.new_client({"url": "mock://route-props"})
SERDE = Serde(_REGISTRY, topic_schemas())
SERDE.register()
ROUTE = RouteStage(SERDE)


@settings(max_examples=150, suppress_health_check=[HealthCheck.too_slow])
@given(
    st.lists(st.tuples(header_names, header_values), max_size=6),
    st.one_of(st.none(), st.binary(max_size=200), st.binary(max_size=200).map(b"\x00".__add__)),
)
def test_route_never_raises_whatever_the_headers_and_bytes(
    headers: list[tuple[str, bytes]], payload: bytes | None
) -> None:
    out = asyncio.run(ROUTE.handle(payload, origin(headers)))
    assert out.encoded is not None
    if out.topic == "dead":
        letter = SERDE.decode_known(out.encoded, "dead_letter")
        assert letter.stage == "route" and letter.reason != "internal_error", letter.message
    else:
        assert out.topic in LANES
        routing = parse_routing(tuple(headers))
        assert routing is not None and out.encoded is payload  # moved only with headers


async def test_a_hand_made_record_with_an_odd_template_name_is_still_routed(serde: Serde) -> None:
    from tests.plugins.factories import rendered_email

    email = rendered_email(event_id="ev-1", priority="critical", template="t\u00e9")
    payload = serde.encode("email.rendered", email)
    out = await RouteStage(serde).handle(payload, origin(topic="email.rendered"))
    assert out.topic == "dispatch.critical"
    assert dict(out.headers)[TEMPLATE_HEADER] == "t\u00e9".encode()
