from __future__ import annotations

import io
import json
import struct
from typing import Any

import fastavro
import pytest
from confluent_kafka.schema_registry import Schema

from app.errors import DecodeError, SchemaError
from app.models import RawEvent
from app.serde import Serde, raw_event_from_json, unwrap_json, wrap_json

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
