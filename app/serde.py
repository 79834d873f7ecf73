"""Wire formats: Avro in Confluent framing, and JSON on ``email.raw-events``.

Confluent framing is one magic byte ``0``, the writer schema's registry id as a
4-byte big-endian integer, then Avro binary. Every Spillway topic's value schema
is registered under the subject ``<topic>-value`` (TopicNameStrategy), so any
language's stock Confluent Avro serializer can produce to ``email.raw-events``.

Readers resolve the writer's schema (looked up by id, cached) against our own
reader schema, so producers on an older, BACKWARD-compatible version still decode.
"""

from __future__ import annotations

import asyncio
import io
import json
import struct
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal, Protocol

import fastavro
from fastavro.types import Schema as ParsedSchema

from app.errors import DecodeError, SchemaError
from app.models import (
    PRIORITIES,
    Attempt,
    DeadLetter,
    DispatchRequest,
    RawEvent,
    RenderedEmail,
    SendResult,
)

MAGIC = 0
_HEADER = struct.Struct(">bI")
SCHEMAS_DIR = Path(__file__).resolve().parent.parent / "schemas"

#: Schema file stem -> Record class mirroring it.
RECORDS: dict[str, type] = {
    "raw_event": RawEvent,
    "rendered_email": RenderedEmail,
    "dispatch_request": DispatchRequest,
    "send_result": SendResult,
    "dead_letter": DeadLetter,
}

PayloadFormat = Literal["avro", "json", "unknown"]


class RegistryClient(Protocol):
    """The part of confluent-kafka's SchemaRegistryClient that we use."""

    def register_schema(
        self, subject_name: str, schema: Any, normalize_schemas: bool = ...
    ) -> int: ...

    def get_schema(self, schema_id: int, *args: Any, **kwargs: Any) -> Any: ...


def load_schema_texts(root: Path = SCHEMAS_DIR) -> dict[str, str]:
    """Schema file stem -> the ``.avsc`` text, as it is registered."""
    return {p.stem: p.read_text() for p in sorted(root.glob("*.avsc"))}


def parse(text: str) -> ParsedSchema:
    return fastavro.parse_schema(json.loads(text))


# --- JSON values inside Avro -------------------------------------------------
# Avro has no "any" type, so template data travels as a recursive record
# JsonValue {v: null|boolean|long|double|string|array<JsonValue>|map<JsonValue>}.


def wrap_json(value: Any) -> dict[str, Any]:
    if isinstance(value, Mapping):
        return {"v": {str(k): wrap_json(v) for k, v in value.items()}}
    if isinstance(value, list | tuple):
        return {"v": [wrap_json(v) for v in value]}
    return {"v": value}


def unwrap_json(wrapped: Mapping[str, Any]) -> Any:
    value = wrapped["v"]
    if isinstance(value, dict):
        return {k: unwrap_json(v) for k, v in value.items()}
    if isinstance(value, list):
        return [unwrap_json(v) for v in value]
    return value


# --- Record <-> Avro dict --------------------------------------------------------


def to_avro(record: Any) -> dict[str, Any]:
    """A Record as the dict fastavro writes (nested Records and JSON data converted)."""
    out = record.asdict()
    if "history" in out:
        out["history"] = [a.asdict() if isinstance(a, Attempt) else a for a in out["history"]]
    if isinstance(record, RawEvent):
        out["data"] = {k: wrap_json(v) for k, v in (record.data or {}).items()}
    return out


def from_avro(name: str, datum: Mapping[str, Any]) -> Any:
    """The Record for schema ``name`` from a dict fastavro read."""
    d = dict(datum)
    if "history" in d:
        d["history"] = [Attempt(**a) for a in d["history"]]
    if name == "raw_event":
        d["data"] = {k: unwrap_json(v) for k, v in d.get("data", {}).items()}
    return RECORDS[name](**d)


@dataclass(frozen=True)
class Subject:
    topic: str
    schema: str  # schema file stem
    schema_id: int
    parsed: ParsedSchema


class Serde:
    """Encodes and decodes Records for Spillway's topics.

    ``register()`` must run once (at start-up) before ``encode``; it registers each
    topic's value schema and remembers the ids.
    """

    def __init__(
        self,
        registry: RegistryClient,
        topic_schemas: Mapping[str, str],
        schema_texts: Mapping[str, str] | None = None,
    ) -> None:
        self.registry = registry
        self.topic_schemas = dict(topic_schemas)
        self.texts = dict(schema_texts or load_schema_texts())
        self.readers: dict[str, ParsedSchema] = {n: parse(t) for n, t in self.texts.items()}
        self.subjects: dict[str, Subject] = {}
        self._writers: dict[int, ParsedSchema] = {}
        self._lock = asyncio.Lock()

    # -- registration ---------------------------------------------------------
    def register(self) -> None:
        """Register every topic's value schema (blocking; call from a thread at start)."""
        from confluent_kafka.schema_registry import Schema

        for topic, name in self.topic_schemas.items():
            schema_id = self.registry.register_schema(
                f"{topic}-value", Schema(self.texts[name], "AVRO")
            )
            self.subjects[topic] = Subject(topic, name, schema_id, self.readers[name])
            self._writers[schema_id] = self.readers[name]

    # -- encoding -------------------------------------------------------------
    def encode(self, topic: str, record: Any) -> bytes:
        subject = self.subjects[topic]
        buf = io.BytesIO()
        buf.write(_HEADER.pack(MAGIC, subject.schema_id))
        fastavro.schemaless_writer(buf, subject.parsed, to_avro(record))
        return buf.getvalue()

    # -- decoding -------------------------------------------------------------
    async def writer_schema(self, schema_id: int) -> ParsedSchema:
        """The writer schema for ``schema_id``, fetched from the registry once."""
        parsed = self._writers.get(schema_id)
        if parsed is not None:
            return parsed
        async with self._lock:
            if schema_id not in self._writers:
                try:
                    schema = await asyncio.to_thread(self.registry.get_schema, schema_id)
                except Exception as exc:
                    raise DecodeError(
                        f"schema id {schema_id} is not known to the schema registry: {exc}"
                    ) from exc
                self._writers[schema_id] = parse(schema.schema_str)
        return self._writers[schema_id]

    async def decode(self, data: bytes, name: str) -> Any:
        """Decode a framed Avro value into the Record of schema ``name``."""
        schema_id = self._schema_id(data)
        return self._read(data, schema_id, await self.writer_schema(schema_id), name)

    def decode_known(self, data: bytes, name: str) -> Any:
        """Like ``decode`` without a registry lookup: the writer must be one we registered."""
        schema_id = self._schema_id(data)
        writer = self._writers.get(schema_id)
        if writer is None:
            raise DecodeError(f"schema id {schema_id} is not one of ours")
        return self._read(data, schema_id, writer, name)

    @staticmethod
    def _schema_id(data: bytes) -> int:
        if len(data) < 5 or data[0] != MAGIC:
            raise DecodeError("value is not Avro in Confluent framing (no magic byte 0)")
        return int(_HEADER.unpack_from(data)[1])

    def _read(self, data: bytes, schema_id: int, writer: ParsedSchema, name: str) -> Any:
        try:
            datum = fastavro.schemaless_reader(io.BytesIO(data[5:]), writer, self.readers[name])
        except fastavro.read.SchemaResolutionError as exc:
            raise SchemaError(f"writer schema id {schema_id} does not resolve: {exc}") from exc
        except Exception as exc:
            raise DecodeError(f"Avro body does not match schema id {schema_id}: {exc}") from exc
        try:
            return from_avro(name, datum)  # type: ignore[arg-type]
        except Exception as exc:
            raise SchemaError(f"value does not fit {name}: {exc}") from exc

    async def decode_raw(self, data: bytes) -> tuple[RawEvent, PayloadFormat]:
        """A raw event from Avro (Confluent framing) or a UTF-8 JSON object."""
        if data[:1] == b"\x00":
            return await self.decode(data, "raw_event"), "avro"
        return raw_event_from_json(data), "json"


def sniff_format(data: bytes) -> PayloadFormat:
    if data[:1] == b"\x00" and len(data) >= 5:
        return "avro"
    if data.lstrip()[:1] == b"{":
        return "json"
    return "unknown"


_JSON_STR_FIELDS = ("source", "template_version", "locale", "from_address", "data_json")


def raw_event_from_json(data: bytes) -> RawEvent:
    """Parse and type-check a JSON raw event. Unknown fields are ignored."""
    head = data.lstrip()[:1]
    if head != b"{":
        raise DecodeError(
            "value is neither Avro in Confluent framing (magic byte 0) nor a JSON object"
        )
    try:
        obj = json.loads(data)
    except (UnicodeDecodeError, ValueError) as exc:
        raise DecodeError(f"value is not valid UTF-8 JSON: {exc}") from exc
    if not isinstance(obj, dict):
        raise DecodeError("JSON value is not an object")
    problems: list[str] = []
    for name in ("event_id", "template", "to"):
        value = obj.get(name)
        if not isinstance(value, str) or not value:
            problems.append(f"'{name}' must be a non-empty string")
    priority = obj.get("priority", "normal")
    if priority not in PRIORITIES:
        problems.append(f"'priority' must be one of {', '.join(PRIORITIES)}, not {priority!r}")
    data_field = obj.get("data", {})
    if data_field is None:
        data_field = {}
    if not isinstance(data_field, dict):
        problems.append("'data' must be an object")
    for name in _JSON_STR_FIELDS:
        if obj.get(name) is not None and not isinstance(obj[name], str):
            problems.append(f"'{name}' must be a string")
    created_at = obj.get("created_at")
    if created_at is not None and (isinstance(created_at, bool) or not isinstance(created_at, int)):
        problems.append("'created_at' must be epoch milliseconds (an integer)")
    if problems:
        raise SchemaError("; ".join(problems))
    return RawEvent(
        event_id=obj["event_id"],
        template=obj["template"],
        to=obj["to"],
        priority=priority,
        data=data_field,
        data_json=obj.get("data_json"),
        source=obj.get("source") or "unknown",
        template_version=obj.get("template_version"),
        locale=obj.get("locale"),
        from_address=obj.get("from_address"),
        created_at=created_at,
    )


def raw_event_to_json(event: RawEvent) -> bytes:
    """The JSON form of a raw event (what a JSON producer would send)."""
    d = event.asdict()
    return json.dumps({k: v for k, v in d.items() if v is not None}).encode()
