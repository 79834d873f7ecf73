from __future__ import annotations

import io
import json
import struct
from typing import Any

import fastavro
import pytest
from confluent_kafka.schema_registry import Schema

from app.errors import DecodeError, SchemaError, ValidationError
from app.models import RawEvent
from app.serde import (
    MAX_DEPTH,
    EncodeError,
    RegistryUnavailableError,
    Serde,
    load_schema_texts,
    raw_event_from_json,
    to_avro,
    unwrap_json,
    wrap_json,
)

RAW = "email.raw-events"

NESTED = {
    "order": {"id": "A-1", "lines": [{"sku": "X", "qty": 2, "price": 9.5}], "gift": True},
    "note": None,
}


def test_json_value_wrapping_round_trips() -> None:
    assert unwrap_json(wrap_json(NESTED)) == NESTED


async def test_avro_round_trip_with_nested_data(serde: Serde) -> None:
    event = RawEvent(event_id="e1", template="t", to="a@b.example", priority="bulk", data=NESTED)
    data = serde.encode(RAW, event)
    assert data[0] == 0
    assert struct.unpack(">I", data[1:5])[0] == serde.subjects[RAW].schema_id
    back, fmt = await serde.decode_raw(data)
    assert fmt == "avro"
    assert back.data == NESTED
    assert back.priority == "bulk"


async def test_older_writer_schema_resolves(serde: Serde, registry: Any) -> None:
    # A producer on a smaller, older schema: missing optional fields get defaults.
    old = {
        "type": "record",
        "name": "RawEvent",
        "namespace": "dev.spillway",
        "fields": [
            {"name": "event_id", "type": "string"},
            {"name": "template", "type": "string"},
            {"name": "to", "type": "string"},
        ],
    }
    schema_id = registry.register_schema("other-subject", Schema(json.dumps(old), "AVRO"))
    buf = io.BytesIO()
    buf.write(struct.pack(">bI", 0, schema_id))
    fastavro.schemaless_writer(
        buf, fastavro.parse_schema(old), {"event_id": "e2", "template": "t", "to": "x@y.example"}
    )
    event, _ = await serde.decode_raw(buf.getvalue())
    assert (event.event_id, event.priority, event.source, event.data) == (
        "e2",
        "normal",
        "unknown",
        {},
    )


async def test_unknown_schema_id_is_a_decode_error(serde: Serde) -> None:
    with pytest.raises(DecodeError, match="schema id 4242"):
        await serde.decode_raw(struct.pack(">bI", 0, 4242) + b"\x02x")


async def test_garbage_after_header_is_a_decode_error(serde: Serde) -> None:
    header = struct.pack(">bI", 0, serde.subjects[RAW].schema_id)
    with pytest.raises(DecodeError):
        await serde.decode_raw(header + b"\xff\xff\xff")


def test_json_event_parses_with_defaults() -> None:
    event = raw_event_from_json(b' {"event_id":"e","template":"t","to":"a@b.c","data":{"x":[1]}}')
    assert (event.priority, event.source, event.data) == ("normal", "unknown", {"x": [1]})


@pytest.mark.parametrize(
    ("payload", "error", "match"),
    [
        (b"\xff\xfe", DecodeError, "neither Avro"),
        (b"[1, 2]", DecodeError, "neither Avro"),
        (b"{not json", DecodeError, "not valid UTF-8 JSON"),
        (b'{"template":"t","to":"a@b.c"}', SchemaError, "'event_id' must be"),
        (
            b'{"event_id":"e","template":"t","to":"a@b.c","priority":"urgent"}',
            SchemaError,
            "'priority' must be one of",
        ),
        (
            b'{"event_id":"e","template":"t","to":"a@b.c","data":[1]}',
            SchemaError,
            "'data' must be an object",
        ),
        (
            b'{"event_id":"e","template":"t","to":"a@b.c","created_at":"yesterday"}',
            SchemaError,
            "created_at",
        ),
    ],
)
def test_bad_json_is_rejected_with_a_reason(payload: bytes, error: type, match: str) -> None:
    with pytest.raises(error, match=match):
        raw_event_from_json(payload)


# --- issue 13: what one record can do to a reader is bounded -------------------------


class FlakyRegistry:
    """Wraps the mock registry: ``get_schema`` fails like an unreachable registry
    ``down`` times, then answers."""

    def __init__(self, inner: Any, down: int) -> None:
        self.inner, self.down, self.calls = inner, down, 0

    def register_schema(self, *a: Any, **k: Any) -> int:
        return int(self.inner.register_schema(*a, **k))

    def get_schema(self, schema_id: int, *a: Any, **k: Any) -> Any:
        self.calls += 1
        if self.calls <= self.down:
            raise ConnectionError("[Errno 111] Connection refused")
        return self.inner.get_schema(schema_id, *a, **k)


def older_raw_event(registry: Any) -> tuple[int, bytes]:
    """A raw event framed with a writer schema the Serde has not seen (no created_at)."""
    schema = json.loads(load_schema_texts()["raw_event"])
    schema["fields"] = [f for f in schema["fields"] if f["name"] != "created_at"]
    schema_id = registry.register_schema("other-value", Schema(json.dumps(schema), "AVRO"))
    body = io.BytesIO()
    datum = to_avro(RawEvent(event_id="e1", template="t", to="a@b.example", data={"k": [1]}))
    del datum["created_at"]
    fastavro.schemaless_writer(body, fastavro.parse_schema(schema), datum)
    return schema_id, struct.pack(">bI", 0, schema_id) + body.getvalue()


async def test_registry_outage_is_waited_for_not_dead_lettered(registry: Any) -> None:
    flaky = FlakyRegistry(registry, down=3)
    serde = Serde(flaky, {"email.raw-events": "raw_event"}, backoff_s=(0.01, 0.02))
    serde.register()
    _, payload = older_raw_event(registry)
    event, fmt = await serde.decode_raw(payload)
    assert (event.event_id, event.data, fmt) == ("e1", {"k": [1]}, "avro")
    assert flaky.calls == 4 and serde.registry_waits == 3


async def test_registry_outage_past_the_bound_is_an_infrastructure_fault(registry: Any) -> None:
    flaky = FlakyRegistry(registry, down=10**9)
    serde = Serde(
        flaky, {"email.raw-events": "raw_event"}, outage_max_s=0.05, backoff_s=(0.01, 0.01)
    )
    serde.register()
    _, payload = older_raw_event(registry)
    with pytest.raises(RegistryUnavailableError, match="unreachable"):
        await serde.decode_raw(payload)
    assert flaky.calls >= 2


async def test_unknown_schema_id_is_undecodable_without_waiting(registry: Any) -> None:
    flaky = FlakyRegistry(registry, down=0)
    serde = Serde(flaky, {"email.raw-events": "raw_event"}, backoff_s=(5.0, 5.0))
    serde.register()
    with pytest.raises(DecodeError) as err:
        await serde.decode(struct.pack(">bI", 0, 424_242) + b"\x02x", "raw_event")
    assert err.value.reason == "undecodable" and flaky.calls == 1


@pytest.mark.parametrize("payload", [None, b""])
async def test_empty_value_is_its_own_reason(serde: Serde, payload: bytes | None) -> None:
    with pytest.raises(DecodeError) as err:
        await serde.decode_raw(payload)
    assert err.value.reason == "empty_value"
    with pytest.raises(DecodeError) as err:
        await serde.decode(payload, "rendered_email")
    assert err.value.reason == "empty_value"


def deep_avro_raw_event(serde: Serde, depth: int) -> bytes:
    """A raw event whose data nests ``depth`` arrays: 3 bytes per level."""

    def s(t: str) -> bytes:
        return bytes([len(t) * 2]) + t.encode()

    body = s("e1") + s("t") + s("a@b.example") + b"\x02"  # priority: normal
    body += b"\x02" + s("x") + b"\x0a\x02" * depth + b"\x00" + b"\x00" * depth + b"\x00"
    body += b"\x00" + s("src") + b"\x00" * 4
    schema_id = serde.subjects["email.raw-events"].schema_id
    return struct.pack(">bI", 0, schema_id) + body


@pytest.mark.parametrize("depth", [65, 300, 100_000])
async def test_deep_avro_nesting_is_refused_without_a_crash(serde: Serde, depth: int) -> None:
    # fastavro's C reader overflows the stack on 10,000 levels (SIGSEGV); the pure-Python
    # reader used for recursive schemas raises RecursionError, a DecodeError here.
    with pytest.raises((DecodeError, SchemaError)):
        await serde.decode_raw(deep_avro_raw_event(serde, depth))


async def test_data_nested_to_the_limit_still_decodes(serde: Serde) -> None:
    deep: Any = 1
    for _ in range(MAX_DEPTH - 1):
        deep = [deep]
    payload = serde.encode("email.raw-events", RawEvent(event_id="e", template="t", to="a@b.c",
                                                         data={"x": deep}))
    event, _ = await serde.decode_raw(payload)
    assert event.data["x"] == deep


@pytest.mark.parametrize(
    "record",
    [
        RawEvent(event_id="e", template="t", to="a@b.c", created_at=10**20),
        RawEvent(event_id="\ud800", template="t", to="a@b.c"),
        RawEvent(event_id="e", template="t", to="a@b.c", data={"x": object()}),
        RawEvent(event_id="e", template="t", to="a@b.c", priority="urgent"),
        RawEvent(event_id=None, template="t", to="a@b.c"),  # type: ignore[arg-type]
    ],
)
def test_encode_failures_are_the_records_fault(serde: Serde, record: RawEvent) -> None:
    with pytest.raises(EncodeError) as err:
        serde.encode("email.raw-events", record)
    assert err.value.reason == "unencodable" and not err.value.retriable


def test_json_with_a_lone_surrogate_is_refused() -> None:
    with pytest.raises(ValidationError, match="surrogate"):
        raw_event_from_json(b'{"event_id": "e", "template": "t", "to": "a@b.c", '
                            b'"data": {"\\udc00": 1}}')


def test_json_nesting_beyond_the_parser_is_undecodable() -> None:
    with pytest.raises(DecodeError):
        raw_event_from_json(b'{"data": ' + b"[" * 200_000 + b"]" * 200_000 + b"}")


async def test_a_404_from_a_wrong_url_is_waited_for_not_undecodable(registry: Any) -> None:
    from confluent_kafka.schema_registry.error import SchemaRegistryError

    class WrongUrl(FlakyRegistry):
        def get_schema(self, schema_id: int, *a: Any, **k: Any) -> Any:
            self.calls += 1
            raise SchemaRegistryError(404, None, "RESTEASY003210: Could not find resource")

    wrong = WrongUrl(registry, down=0)
    serde = Serde(
        wrong, {"email.raw-events": "raw_event"}, outage_max_s=0.05, backoff_s=(0.01, 0.01)
    )
    serde.register()
    _, payload = older_raw_event(registry)
    with pytest.raises(RegistryUnavailableError):
        await serde.decode_raw(payload)
    assert wrong.calls >= 2


async def test_a_hostile_writer_schema_cannot_recurse_the_reader_into_a_crash(
    serde: Serde, registry: Any
) -> None:
    """A producer registers its own writer schema with a recursive field the reader
    ignores but must skip (one byte per level): read with the bounded reader."""
    schema = json.loads(load_schema_texts()["raw_event"])
    evil = {"type": "record", "name": "R", "fields": [{"name": "n", "type": ["null", "R"]}]}
    schema["fields"].append({"name": "evil", "type": ["null", evil], "default": None})
    schema_id = registry.register_schema("evil-value", Schema(json.dumps(schema), "AVRO"))

    def s(t: str) -> bytes:
        return bytes([len(t) * 2]) + t.encode()

    head = s("e1") + s("t") + s("a@b.example") + b"\x02\x00\x00" + s("src") + b"\x00" * 4
    frame = struct.pack(">bI", 0, schema_id)
    event, _ = await serde.decode_raw(frame + head + b"\x02" * 300 + b"\x00")
    assert event.event_id == "e1"  # shallow: read (the C reader takes short bodies)
    with pytest.raises(DecodeError, match="RecursionError"):  # 100,000 levels: refused
        await serde.decode_raw(frame + head + b"\x02" * 100_000 + b"\x00")
