"""Wire formats: Avro in Confluent framing, and JSON on ``email.raw-events``.

Confluent framing is one magic byte ``0``, the writer schema's registry id as a
4-byte big-endian integer, then Avro binary. Every Spillway topic's value schema
is registered under the subject ``<topic>-value`` (TopicNameStrategy), so any
language's stock Confluent Avro serializer can produce to ``email.raw-events``.

Readers resolve the writer's schema (looked up by id, cached) against our own
reader schema, so producers on an older, BACKWARD-compatible version still decode.

What one record can do to a reader is bounded here (issue 13):

- an empty value or a tombstone is a ``DecodeError`` with reason ``empty_value``;
- a schema id the registry does not know (HTTP 404) is ``undecodable``; a registry
  that cannot be reached is not the record's fault: ``writer_schema`` waits for it
  with backoff and raises ``RegistryUnavailableError`` (an infrastructure fault,
  never a dead letter) only after ``outage_max_s``;
- recursive schemas (``raw_event``'s JsonValue) are read with fastavro's pure-Python
  reader: its C reader recurses without a bound and a 20 kB record nesting 10,000
  arrays crashes the process with a segmentation fault. Template data may nest at
  most ``MAX_DEPTH`` levels (JSON and Avro alike);
- JSON text must be valid Unicode (no lone surrogates) and ``created_at`` must fit
  Avro's long;
- ``encode`` turns anything the record causes (a surrogate, an out-of-range number,
  a wrong type) into ``EncodeError`` (reason ``unencodable``).
"""

from __future__ import annotations

import asyncio
import io
import json
import logging
import random
import struct
import time
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal, Protocol

import fastavro
from fastavro import _read_py as fastavro_py  # bounded recursion (see the module docstring)
from fastavro.types import Schema as ParsedSchema

from app.errors import DecodeError, EventError, SchemaError, ValidationError
from app.models import (
    PRIORITIES,
    Attempt,
    DeadLetter,
    DispatchRequest,
    RawEvent,
    RenderedEmail,
    SendResult,
)
from app.resources import data_path

log = logging.getLogger(__name__)

MAGIC = 0
_HEADER = struct.Struct(">bI")
SCHEMAS_DIR = data_path("schemas")  # the repository's schemas/, or the wheel's app/schemas
#: Deepest nesting of template data (``data`` and ``data_json``), in containers.
MAX_DEPTH = 64
#: Longest body of a recursive schema read with fastavro's C reader: it survived 2,000
#: levels of one-byte recursion and crashed at 5,000 (8 MB main-thread stack).
C_READER_MAX_RECURSIVE_BYTES = 1024
LONG_MIN, LONG_MAX = -(2**63), 2**63 - 1


class EncodeError(EventError):
    """A record cannot be written in its topic's schema (surrogates, numbers out of
    range, wrong types): the record's fault, so a dead letter."""

    reason = "unencodable"


class RegistryUnavailableError(Exception):
    """The schema registry could not be reached for longer than the configured wait.

    An infrastructure fault, not a ``SpillwayError``: no record is dead-lettered for
    it; the worker stops without acking and handles the record again after a restart.
    """


def empty_value_error() -> DecodeError:
    return DecodeError("the value is empty (a tombstone or zero bytes)", reason="empty_value")

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


def wrap_json(value: Any, depth: int = 0) -> dict[str, Any]:
    if depth > MAX_DEPTH:
        raise SchemaError(f"template data nests deeper than {MAX_DEPTH} levels")
    if isinstance(value, Mapping):
        return {"v": {str(k): wrap_json(v, depth + 1) for k, v in value.items()}}
    if isinstance(value, list | tuple):
        return {"v": [wrap_json(v, depth + 1) for v in value]}
    return {"v": value}


def unwrap_json(wrapped: Mapping[str, Any], depth: int = 0) -> Any:
    if depth > MAX_DEPTH:
        raise SchemaError(f"template data nests deeper than {MAX_DEPTH} levels")
    value = wrapped["v"]
    if isinstance(value, dict):
        return {k: unwrap_json(v, depth + 1) for k, v in value.items()}
    if isinstance(value, list):
        return [unwrap_json(v, depth + 1) for v in value]
    return value


def is_recursive(schema: Any) -> bool:
    """Whether a parsed schema refers to one of its named types by name (recursion is
    only possible then; a conservative test: any by-name reference counts)."""
    named: set[str] = set()
    refs: set[str] = set()
    stack = [schema]
    while stack:
        node = stack.pop()
        if isinstance(node, str):
            refs.add(node)
        elif isinstance(node, list):
            stack.extend(node)
        elif isinstance(node, dict):
            if node.get("type") in ("record", "error", "enum", "fixed") and "name" in node:
                named.add(str(node["name"]))
            for key in ("type", "items", "values", "fields"):
                if key in node:
                    stack.append(node[key])
    return bool(named & refs)


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
        *,
        outage_max_s: float = 900.0,
        backoff_s: tuple[float, float] = (0.5, 10.0),
    ) -> None:
        self.registry = registry
        self.topic_schemas = dict(topic_schemas)
        self.texts = dict(schema_texts or load_schema_texts())
        self.readers: dict[str, ParsedSchema] = {n: parse(t) for n, t in self.texts.items()}
        self.subjects: dict[str, Subject] = {}
        self._writers: dict[int, ParsedSchema] = {}
        self._recursive: dict[int, bool] = {}
        self._lock = asyncio.Lock()
        #: How long ``writer_schema`` waits for an unreachable registry (0: forever),
        #: and its first and longest pause between tries.
        self.outage_max_s = outage_max_s
        self.backoff_s = backoff_s
        #: Lookups that waited for the registry (for tests and the status page).
        self.registry_waits = 0

    # -- registration ---------------------------------------------------------
    def register(self) -> None:
        """Register every topic's value schema (blocking; call from a thread at start)."""
        from confluent_kafka.schema_registry import Schema

        for topic, name in self.topic_schemas.items():
            schema_id = self.registry.register_schema(
                f"{topic}-value", Schema(self.texts[name], "AVRO")
            )
            self.subjects[topic] = Subject(topic, name, schema_id, self.readers[name])
            self._remember(schema_id, self.readers[name])

    def _remember(self, schema_id: int, parsed: ParsedSchema) -> None:
        self._recursive[schema_id] = is_recursive(parsed)
        self._writers[schema_id] = parsed

    # -- encoding -------------------------------------------------------------
    def encode(self, topic: str, record: Any) -> bytes:
        """Framed Avro for ``topic`` (registered). A record that does not fit its
        schema raises ``EncodeError``; an unregistered topic raises KeyError."""
        subject = self.subjects[topic]
        buf = io.BytesIO()
        buf.write(_HEADER.pack(MAGIC, subject.schema_id))
        try:
            fastavro.schemaless_writer(buf, subject.parsed, to_avro(record))
        except EventError:
            raise
        except (ValueError, TypeError, OverflowError, AttributeError, RecursionError) as exc:
            # UnicodeEncodeError is a ValueError: a lone surrogate in a string.
            raise EncodeError(
                f"{type(record).__name__} does not fit {subject.schema}: {_short(exc)}"
            ) from exc
        return buf.getvalue()

    # -- decoding -------------------------------------------------------------
    async def writer_schema(self, schema_id: int) -> ParsedSchema:
        """The writer schema for ``schema_id``, fetched from the registry once.

        Unknown to the registry (404): ``DecodeError``. Registry unreachable or
        failing: retried with exponential backoff and jitter for up to
        ``outage_max_s``, then ``RegistryUnavailableError``.
        """
        parsed = self._writers.get(schema_id)
        if parsed is not None:
            return parsed
        async with self._lock:
            if schema_id not in self._writers:
                schema = await self._fetch(schema_id)
                try:
                    if getattr(schema, "schema_type", "AVRO") not in (None, "AVRO"):
                        raise ValueError(f"a {schema.schema_type} schema, not Avro")
                    writer = parse(schema.schema_str)
                except Exception as exc:
                    raise DecodeError(
                        f"schema id {schema_id} is not a usable Avro schema: {_short(exc)}"
                    ) from exc
                self._remember(schema_id, writer)
        return self._writers[schema_id]

    async def _fetch(self, schema_id: int) -> Any:
        started = time.monotonic()
        pause, longest = self.backoff_s
        warned_at: float | None = None
        while True:
            try:
                schema = await asyncio.to_thread(self.registry.get_schema, schema_id)
            except Exception as exc:
                if _is_not_found(exc):
                    raise DecodeError(
                        f"schema id {schema_id} is not known to the schema registry"
                    ) from exc
                waited = time.monotonic() - started
                if self.outage_max_s and waited >= self.outage_max_s:
                    raise RegistryUnavailableError(
                        f"schema registry unreachable for {waited:.0f} s while looking up "
                        f"schema id {schema_id}: {_short(exc)}"
                    ) from exc
                if warned_at is None or time.monotonic() - warned_at >= 30:
                    warned_at = time.monotonic()
                    log.warning(
                        "schema registry unreachable looking up schema id %d (%s); "
                        "waiting for it (%.0f s so far)",
                        schema_id,
                        _short(exc),
                        waited,
                    )
                self.registry_waits += 1
                await asyncio.sleep(pause * random.uniform(0.8, 1.2))
                pause = min(longest, pause * 2)
                continue
            if warned_at is not None:
                log.warning(
                    "schema registry reachable again after %.0f s",
                    time.monotonic() - started,
                )
            return schema

    async def decode(self, data: bytes | None, name: str) -> Any:
        """Decode a framed Avro value into the Record of schema ``name``."""
        schema_id = self._schema_id(data)
        assert data is not None  # _schema_id refused it
        return self._read(data, schema_id, await self.writer_schema(schema_id), name)

    def decode_known(self, data: bytes | None, name: str) -> Any:
        """Like ``decode`` without a registry lookup: the writer must be one we registered."""
        schema_id = self._schema_id(data)
        assert data is not None  # _schema_id refused it
        writer = self._writers.get(schema_id)
        if writer is None:
            raise DecodeError(f"schema id {schema_id} is not one of ours")
        return self._read(data, schema_id, writer, name)

    @staticmethod
    def _schema_id(data: bytes | None) -> int:
        if not data:
            raise empty_value_error()
        if not isinstance(data, bytes | bytearray | memoryview):
            raise DecodeError(f"value is {type(data).__name__}, not bytes")
        if len(data) < 5 or data[0] != MAGIC:
            raise DecodeError("value is not Avro in Confluent framing (no magic byte 0)")
        return int(_HEADER.unpack_from(data)[1])

    def _read(self, data: bytes, schema_id: int, writer: ParsedSchema, name: str) -> Any:
        reader = self.readers[name]
        # A recursive writer schema with a body long enough to nest deeply goes through
        # the pure-Python reader, whose recursion Python bounds (RecursionError) where
        # the C reader would overflow the stack. Each level of recursion costs at least
        # one byte, so a short body cannot nest deeper than the C reader copes with.
        deep_possible = len(data) - 5 > C_READER_MAX_RECURSIVE_BYTES
        read = (
            fastavro_py.schemaless_reader
            if deep_possible and self._recursive.get(schema_id, True)
            else None
        )
        try:
            body = io.BytesIO(bytes(data[5:]))
            if read is not None:
                datum = read(body, writer, reader)
            else:
                datum = fastavro.schemaless_reader(body, writer, reader)
        except fastavro.read.SchemaResolutionError as exc:
            raise SchemaError(
                f"writer schema id {schema_id} does not resolve: {_short(exc)}"
            ) from exc
        except Exception as exc:
            raise DecodeError(
                f"Avro body does not match schema id {schema_id}: {_short(exc)}"
            ) from exc
        try:
            return from_avro(name, datum)  # type: ignore[arg-type]
        except Exception as exc:
            raise SchemaError(f"value does not fit {name}: {_short(exc)}") from exc

    async def decode_raw(self, data: bytes | None) -> tuple[RawEvent, PayloadFormat]:
        """A raw event from Avro (Confluent framing) or a UTF-8 JSON object."""
        if not data:
            raise empty_value_error()
        if data[:1] == b"\x00":
            return await self.decode(data, "raw_event"), "avro"
        return raw_event_from_json(data), "json"


def _is_not_found(exc: BaseException) -> bool:
    """The registry's answer that the id does not exist (404 with a 404xx error code:
    40403 from Apicurio and Confluent, 40400 from confluent-kafka's mock). A 404
    without one is a wrong URL (another server, a wrong path): a fault to wait out,
    not a reason to dead-letter events."""
    code = getattr(exc, "error_code", None)
    return (
        getattr(exc, "http_status_code", None) == 404
        and isinstance(code, int)
        and code // 100 == 404
    )


def _short(exc: BaseException, limit: int = 300) -> str:
    text = f"{type(exc).__name__}: {exc}" if str(exc) else type(exc).__name__
    return text if len(text) <= limit else text[: limit - 3] + "..."


def sniff_format(data: bytes | None) -> PayloadFormat:
    if not data or not isinstance(data, bytes | bytearray | memoryview):
        return "unknown"
    if data[:1] == b"\x00" and len(data) >= 5:
        return "avro"
    if bytes(data[:64]).lstrip()[:1] == b"{":
        return "json"
    return "unknown"


_JSON_STR_FIELDS = ("source", "template_version", "locale", "from_address", "data_json")


def raw_event_from_json(data: bytes) -> RawEvent:
    """Parse and type-check a JSON raw event. Unknown fields are ignored."""
    if not data:
        raise empty_value_error()
    head = data.lstrip()[:1]
    if head != b"{":
        raise DecodeError(
            "value is neither Avro in Confluent framing (magic byte 0) nor a JSON object"
        )
    try:
        obj = json.loads(data)
    except RecursionError as exc:
        raise DecodeError("JSON value nests too deeply to parse") from exc
    except (UnicodeDecodeError, ValueError) as exc:
        raise DecodeError(f"value is not valid UTF-8 JSON: {_short(exc)}") from exc
    if not isinstance(obj, dict):
        raise DecodeError("JSON value is not an object")
    if not _plainly_safe(data):
        check_json_value(obj)
    problems = event_problems(obj)
    if problems:
        raise SchemaError("; ".join(problems))
    return RawEvent(
        event_id=obj["event_id"],
        template=obj["template"],
        to=obj["to"],
        priority=obj.get("priority", "normal"),
        data=obj.get("data") or {},
        data_json=obj.get("data_json"),
        source=obj.get("source") or "unknown",
        template_version=obj.get("template_version"),
        locale=obj.get("locale"),
        from_address=obj.get("from_address"),
        created_at=obj.get("created_at"),
    )


def event_problems(obj: Mapping[str, Any]) -> list[str]:
    """What is wrong with the fields of a JSON raw event (empty: nothing). The one
    field check for JSON events: intake can refuse what render would dead-letter."""
    problems: list[str] = []
    for name in ("event_id", "template", "to"):
        value = obj.get(name)
        if not isinstance(value, str) or not value:
            problems.append(f"'{name}' must be a non-empty string")
    priority = obj.get("priority", "normal")
    if priority not in PRIORITIES:
        shown = repr(priority)
        shown = shown if len(shown) <= 60 else shown[:57] + "..."
        problems.append(f"'priority' must be one of {', '.join(PRIORITIES)}, not {shown}")
    data_field = obj.get("data")
    if data_field is not None and not isinstance(data_field, dict):
        problems.append("'data' must be an object")
    for name in _JSON_STR_FIELDS:
        if obj.get(name) is not None and not isinstance(obj[name], str):
            problems.append(f"'{name}' must be a string")
    created_at = obj.get("created_at")
    if created_at is not None and (isinstance(created_at, bool) or not isinstance(created_at, int)):
        problems.append("'created_at' must be epoch milliseconds (an integer)")
    elif created_at is not None and not LONG_MIN <= created_at <= LONG_MAX:
        problems.append("'created_at' is out of range (epoch milliseconds in a signed 64-bit long)")
    return problems


def _plainly_safe(data: bytes) -> bool:
    """True when JSON text can hold neither a lone surrogate (no ``\\uDxxx`` escape, no
    0xED byte, the UTF-8 lead of U+D000-U+DFFF: json.loads decodes with surrogatepass)
    nor nesting deeper than ``MAX_DEPTH`` (too few brackets): the walk is skipped."""
    return (
        b"\\ud" not in data
        and b"\\uD" not in data
        and b"\xed" not in data
        and data.count(b"[") + data.count(b"{") <= MAX_DEPTH
    )


def check_json_value(value: Any, max_depth: int = MAX_DEPTH + 1) -> None:
    """Refuse JSON that cannot travel on: lone surrogates (``"\\ud800"`` decodes to a
    str that no UTF-8 encoder accepts) and nesting deeper than ``max_depth``.
    Iterative, so hostile nesting cannot exhaust the stack here."""
    stack: list[tuple[Any, int, str]] = [(value, 0, "")]
    while stack:
        node, depth, path = stack.pop()
        if isinstance(node, str):
            _check_text(node, path or "value")
        elif isinstance(node, dict | list):
            if depth > max_depth:
                raise SchemaError(
                    f"'{path or 'value'}' nests deeper than {MAX_DEPTH} levels of template data"
                )
            items = node.items() if isinstance(node, dict) else enumerate(node)
            for k, v in items:
                child = f"{path}.{k}" if path else str(k)
                if isinstance(k, str):
                    _check_text(k, child)
                stack.append((v, depth + 1, child))


def _check_text(text: str, path: str) -> None:
    if text.isascii():
        return
    try:
        text.encode("utf-8")
    except UnicodeEncodeError as exc:
        where = path.encode("utf-8", "backslashreplace").decode()[:100]
        raise ValidationError(
            f"'{where}' holds a lone surrogate (U+{ord(text[exc.start]):04X}): "
            "not valid Unicode text"
        ) from None


def raw_event_to_json(event: RawEvent) -> bytes:
    """The JSON form of a raw event (what a JSON producer would send)."""
    d = event.asdict()
    return json.dumps({k: v for k, v in d.items() if v is not None}).encode()
