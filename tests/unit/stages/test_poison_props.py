"""Property tests (issue 13): each stage's pure path gives an output or a dead letter
for any input, never an escaping exception, and whatever it gives encodes.

Inputs: arbitrary bytes; arbitrary JSON (deep nesting, huge and negative numbers,
NaN/inf, lone surrogates, control characters, wrong types, missing and extra fields);
arbitrary Confluent-framed bytes; valid Avro records with hostile strings.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import struct
from typing import Any

from confluent_kafka.schema_registry import SchemaRegistryClient
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from app.errors import EventError, SpillwayError
from app.models import DeadLetter, RawEvent, RenderedEmail
from app.serde import Serde, raw_event_from_json
from app.settings import Settings
from app.stages.common import Emission, Origin, dead_letter
from app.stages.render import RenderStage, default_sealer
from app.stages.route import RouteStage
from app.templating import TemplateStore, header_values
from app.topology import TOPICS, topic_schemas

PROPS = settings(
    max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow]
)
STORE = TemplateStore(Settings().templates_dir)
ORIGIN = Origin("email.raw-events", 0, 1, 1_700_000_000_000, b"key")


def make_serde() -> Serde:
    registry = SchemaRegistryClient.new_client({"url": "mock://props"})
    serde = Serde(registry, topic_schemas())
    serde.register()
    return serde


SERDE = make_serde()
RAW_ID = SERDE.subjects["email.raw-events"].schema_id
RENDERED_ID = SERDE.subjects["email.rendered"].schema_id
RENDERED_TOPICS = {"rendered.critical", "rendered.normal", "rendered.bulk"}  # issue 14
MAX_BYTES = 60_000  # small, so that big generated values reach the size limit
RENDER = RenderStage(
    SERDE, STORE, "Shop <no-reply@shop.example>", sealer=default_sealer(SERDE, MAX_BYTES)
)
ROUTE = RouteStage(SERDE, sealer=default_sealer(SERDE, MAX_BYTES))

# --- strategies -------------------------------------------------------------------------

NASTY_CHARS = ["\ud800", "\udfff", "\x00", "\r", "\n", "\u2028", "\u2029", "\x85", "\x9f",
               "\u202e", "\ufeff", "é", "💥", "<", ">", '"', "\\"]  # fmt: skip
chars = st.one_of(st.characters(), st.sampled_from(NASTY_CHARS))
texts = st.text(chars, max_size=40)
numbers = st.one_of(
    st.integers(),
    st.integers(min_value=-(2**80), max_value=2**80),
    st.sampled_from([10**20, -(10**20), 2**63, 2**63 - 1, -(2**63), -(2**63) - 1, 0, -1]),
    st.floats(allow_nan=True, allow_infinity=True),
)
scalars = st.one_of(st.none(), st.booleans(), numbers, texts)
json_values = st.recursive(
    scalars,
    lambda inner: st.one_of(
        st.lists(inner, max_size=4), st.dictionaries(texts, inner, max_size=4)
    ),
    max_leaves=30,
)


@st.composite
def deep(draw: Any) -> Any:
    value: Any = draw(scalars)
    for _ in range(draw(st.integers(min_value=0, max_value=150))):
        value = [value] if draw(st.booleans()) else {"k": value}
    return value


templates = st.sampled_from([*STORE.names(), "nope", ""])
good_data = templates.map(lambda t: STORE.sample_data(t) if t in STORE.names() else {})
event_ids = st.from_regex(r"[A-Za-z0-9-]{1,12}", fullmatch=True)
#: Optional fields, each with a valid value.
OPTIONAL = {
    "source": st.sampled_from(["shop", "accounts"]),
    "template_version": st.sampled_from(["v1", "v2"]),
    "locale": st.sampled_from(["de", "de-AT", "fr"]),
    "from_address": st.sampled_from(["Shop <s@x.example>", "Jörg <j@x.example>"]),
    "created_at": st.integers(min_value=0, max_value=2**45),
}
FIELDS = ["event_id", "template", "to", "priority", "data", "data_json", *OPTIONAL]


def set_somewhere(draw: Any, data: Any, value: Any) -> None:
    """Put ``value`` at a random place inside the nested dicts of ``data``."""
    node = data
    while isinstance(node, dict) and node:
        key = draw(st.sampled_from(sorted(node)))
        if not isinstance(node[key], dict) or draw(st.booleans()):
            node[key] = value
            return
        node = node[key]


@st.composite
def events(draw: Any) -> dict[str, Any]:
    """A valid event, then 0-3 mutations: a field replaced by anything (wrong types,
    nasty text, huge numbers), removed, an extra field, a hostile value inside the
    data, deep nesting."""
    template = draw(st.sampled_from(STORE.names()))
    event: dict[str, Any] = {
        "event_id": draw(event_ids),
        "template": template,
        "to": "ann@example.com",
        "priority": draw(st.sampled_from(["critical", "normal", "bulk"])),
        "data": STORE.sample_data(template),
    }
    for name, strategy in OPTIONAL.items():
        if draw(st.booleans()):
            event[name] = draw(strategy)
    for _ in range(draw(st.integers(min_value=0, max_value=3))):
        kind = draw(st.sampled_from(["replace", "text", "delete", "extra", "leaf", "deep"]))
        field = draw(st.sampled_from(FIELDS))
        if kind == "replace":
            event[field] = draw(json_values)
        elif kind == "text":
            event[field] = draw(texts)
        elif kind == "delete":
            event.pop(field, None)
        elif kind == "extra":
            event[draw(texts)] = draw(json_values)
        elif kind == "leaf":
            set_somewhere(draw, event.get("data"), draw(scalars))
        else:
            set_somewhere(draw, event.get("data"), draw(deep()))
    return event


@st.composite
def json_payloads(draw: Any) -> bytes:
    event = draw(events())
    text = json.dumps(event, ensure_ascii=draw(st.booleans()), allow_nan=True)
    return text.encode("utf-8", "surrogatepass")  # raw surrogate bytes: not UTF-8


def framed(schema_id: int) -> st.SearchStrategy[bytes]:
    ids = st.one_of(st.just(schema_id), st.integers(min_value=0, max_value=2**31 - 1))
    return st.builds(
        lambda i, body: struct.pack(">bI", 0, i) + body, ids, st.binary(max_size=200)
    )


@st.composite
def avro_raw_events(draw: Any) -> bytes:
    """Valid Avro raw events with hostile (but encodable) strings and data."""
    encodable = texts.filter(lambda t: not any(0xD800 <= ord(c) <= 0xDFFF for c in t))
    template = draw(st.sampled_from(STORE.names()) | templates)
    record = RawEvent(
        event_id=draw(event_ids | encodable),
        template=template,
        to=draw(st.sampled_from(["ann@example.com", "x"]) | encodable),
        priority=draw(st.sampled_from(["critical", "normal", "bulk"])),
        data=draw(st.one_of(good_data, good_data, st.dictionaries(encodable, json_values))),
        source=draw(encodable),
        created_at=draw(st.none() | st.integers(min_value=-(2**63), max_value=2**63 - 1)),
        locale=draw(st.none() | encodable),
    )
    try:
        return SERDE.encode("email.raw-events", record)
    except EventError:
        return SERDE.encode(
            "email.raw-events", RawEvent(event_id="e", template=template, to="a@b.example")
        )


# --- checks ---------------------------------------------------------------------------


def check_emission(out: Emission, ok_topics: set[str], payload: bytes | None) -> None:
    assert out.encoded is not None, "stages hand over encoded outputs"
    assert len(out.encoded) + len(out.key or b"") <= MAX_BYTES
    if out.topic == "dead":
        dl = SERDE.decode_known(out.encoded, "dead_letter")
        assert dl.reason and dl.message and dl.stage in ("render", "route")
        original = payload or b""
        assert original.startswith(dl.payload), "the dead letter holds the original bytes"
        assert dl.payload == original or "payload cut" in dl.message
        assert out.value.reason != "internal_error", out.value.message  # no unexpected error
    else:
        assert out.topic in ok_topics, out.topic
        assert out.key is not None


def render(payload: bytes | None) -> Emission:
    return asyncio.run(RENDER.handle(payload, ORIGIN))


def route(payload: bytes | None) -> Emission:
    return asyncio.run(ROUTE.handle(payload, ORIGIN))


# --- render ---------------------------------------------------------------------------


@PROPS
@given(
    st.one_of(st.none(), st.binary(max_size=300), json_payloads()),
    st.lists(st.tuples(st.sampled_from(["spillway-replay", "x"]), st.binary(max_size=30))),
    st.none() | st.binary(max_size=2000),
)
def test_render_any_bytes_headers_and_key(
    payload: bytes | None, headers: list[tuple[str, bytes]], key: bytes | None
) -> None:
    origin = Origin("email.raw-events", 3, 2**40, None, key, tuple(headers))
    out = asyncio.run(RENDER.handle(payload, origin))
    check_emission(out, RENDERED_TOPICS, payload)


@PROPS
@given(json_payloads())
def test_render_any_json_event(payload: bytes) -> None:
    check_emission(render(payload), RENDERED_TOPICS, payload)


@PROPS
@given(st.one_of(framed(RAW_ID), avro_raw_events()))
def test_render_any_confluent_framed_bytes(payload: bytes) -> None:
    check_emission(render(payload), RENDERED_TOPICS, payload)


# --- route ----------------------------------------------------------------------------

LANES = {"dispatch.critical", "dispatch.normal", "dispatch.bulk"}


@st.composite
def rendered_emails(draw: Any) -> bytes:
    encodable = texts.filter(lambda t: not any(0xD800 <= ord(c) <= 0xDFFF for c in t))
    big = st.one_of(encodable, st.integers(0, 70_000).map(lambda n: "x" * n))
    email = RenderedEmail(
        event_id=draw(st.one_of(event_ids, event_ids, encodable)),
        priority=draw(st.sampled_from(["critical", "normal", "bulk"])),
        to=draw(st.one_of(st.just("a@b.example"), st.just("a@b.example"), encodable)),
        from_address=draw(st.one_of(st.just("S <s@b.example>"), st.just("s@b.x"), encodable)),
        subject=draw(st.one_of(st.just("Hello"), st.just("Grüße"), encodable)),
        html=draw(big),
        text=draw(encodable),
        template=draw(encodable),
        template_version="v1",
        source=draw(encodable),
        accepted_at=draw(st.integers(-(2**63), 2**63 - 1)),
        rendered_at=1,
    )
    return SERDE.encode("email.rendered", email)


@PROPS
@given(st.one_of(st.none(), st.binary(max_size=300), framed(RENDERED_ID), rendered_emails()))
def test_route_any_input(payload: bytes | None) -> None:
    check_emission(route(payload), LANES, payload)


# --- the pure helpers -----------------------------------------------------------------


@PROPS
@given(st.binary(max_size=300) | json_payloads())
def test_raw_event_from_json_raises_only_event_errors(payload: bytes) -> None:
    try:
        event = raw_event_from_json(payload)
    except EventError:
        return
    assert isinstance(event, RawEvent)
    SERDE.encode("email.raw-events", event)  # whatever parses also travels as Avro


@PROPS
@given(templates, json_values, st.none() | st.sampled_from(["v1", "v9", ""]), st.none() | texts)
def test_templates_render_or_raise_their_errors(
    template: str, data: Any, version: str | None, locale: str | None
) -> None:
    try:
        parts = STORE.render(template, data if isinstance(data, dict) else {"x": data},
                             version=version, locale=locale)  # fmt: skip
    except SpillwayError:
        return
    assert "\n" not in parts.subject and "\r" not in parts.subject


@PROPS
@given(texts, texts, texts, texts)
def test_header_values_give_values_or_invalid_header(
    event_id: str, to: str, sender: str, subject: str
) -> None:
    try:
        values = header_values(event_id=event_id, to=to, sender=sender, subject=subject)
    except SpillwayError as exc:
        assert exc.reason == "invalid_header"
        return
    assert event_id.isascii() and values.to.isascii()


@PROPS
@given(
    texts | st.integers(0, 5000).map(lambda n: "\ud800" * n),
    st.none() | texts,
    st.binary(max_size=100) | st.integers(0, 200_000).map(lambda n: b"p" * n),
    st.lists(texts, max_size=3),
)
def test_dead_letter_builder_always_encodes_within_the_limit(
    message: str, event_id: str | None, payload: bytes, strings: list[str]
) -> None:
    error = ValueError(message)
    letter = dead_letter(
        error,
        stage="render",
        origin=ORIGIN,
        payload=payload,
        payload_format="unknown",
        at_ms=1,
        event_id=event_id,
        template=strings[0] if strings else None,
        source=strings[-1] if strings else None,
    )
    out = default_sealer(SERDE, MAX_BYTES).seal_dead(Emission("dead", b"k", letter))
    assert out.encoded is not None and len(out.encoded) <= MAX_BYTES
    decoded: DeadLetter = SERDE.decode_known(out.encoded, "dead_letter")
    assert payload.startswith(decoded.payload)
    assert decoded.reason == "internal_error" and decoded.retriable


SCHEMA_OF = {topic: schema for topic, schema in TOPICS.values()}


@PROPS
@given(
    st.sampled_from(sorted(SCHEMA_OF)),
    st.one_of(st.none(), st.binary(max_size=300)),
    st.binary(max_size=300),
    st.booleans(),
)
def test_every_decoder_gives_a_record_or_an_event_error(
    topic: str, raw: bytes | None, body: bytes, framed_right: bool
) -> None:
    """Arbitrary Confluent-framed bytes for every topic's schema (what dispatch, the
    analyser and the tools decode): a record, or a DecodeError/SchemaError."""
    schema_id = SERDE.subjects[topic].schema_id
    payload = struct.pack(">bI", 0, schema_id) + body if framed_right else raw
    for decode in (
        lambda: asyncio.run(SERDE.decode(payload, SCHEMA_OF[topic])),
        lambda: SERDE.decode_known(payload, SCHEMA_OF[topic]),
    ):
        with contextlib.suppress(EventError):
            decode()
