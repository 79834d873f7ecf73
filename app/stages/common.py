"""Types shared by the stages: where a message came from, what a stage emits, and
the poison-proof path every stage shares (issue 13):

    payload --decode_or_dead--> record | dead letter
    output  --Sealer.seal-----> encoded bytes within the size limit | dead letter

``Sealer.seal_dead`` encodes any dead letter: strings are made encodable by
``dead_letter`` and an oversized payload is cut to fit, so producing a dead letter
can never fail because of the record it describes.
"""

from __future__ import annotations

import time
from collections.abc import Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass, replace
from typing import Any, Generic, TypeVar

from app.errors import EventError, SpillwayError
from app.models import Attempt, DeadLetter
from app.serde import PayloadFormat, RegistryUnavailableError, empty_value_error

T = TypeVar("T")

Clock = Callable[[], float]


def now_ms(clock: Clock = time.time) -> int:
    return int(clock() * 1000)


@dataclass(frozen=True, slots=True)
class Origin:
    """Position of the message being handled."""

    topic: str
    partition: int
    offset: int
    timestamp_ms: int | None = None
    key: bytes | None = None
    headers: tuple[tuple[str, bytes], ...] = ()  # Kafka record headers

    @classmethod
    def of(cls, message: Any) -> Origin:
        """From a Faust ``Message``."""
        ts = message.timestamp
        return cls(
            topic=message.topic,
            partition=message.partition,
            offset=message.offset,
            timestamp_ms=int(ts * 1000) if ts else None,
            key=message.key if isinstance(message.key, bytes) else None,
            headers=_headers(getattr(message, "headers", None)),
        )

    def header(self, name: str) -> bytes | None:
        """The last value of header ``name``, if any."""
        found = None
        for key, value in self.headers:
            if key == name:
                found = value
        return found


def _headers(raw: Any) -> tuple[tuple[str, bytes], ...]:
    # aiokafka gives a sequence of (str, bytes); Faust's test context may give a mapping.
    if not raw:
        return ()
    items = raw.items() if isinstance(raw, Mapping) else raw
    return tuple(
        (str(k), v if isinstance(v, bytes) else str(v).encode()) for k, v in items if v is not None
    )


#: Header on a record produced by the replay tool: which replay this is (1, 2, ...).
REPLAY_HEADER = "spillway-replay"


def replay_number(origin: Origin) -> int:
    """How many times this message was replayed from a dead letter (0: never)."""
    raw = origin.header(REPLAY_HEADER)
    if raw is None:
        return 0
    try:
        # Clamped: the count travels in an Avro int, and the header is untrusted.
        return min(max(1, int(raw)), MAX_REPLAYS)
    except ValueError:
        return 1


MAX_REPLAYS = 1_000_000


@dataclass(frozen=True, slots=True)
class Emission:
    """One record a stage wants produced: to a logical topic name (see topology)."""

    topic: str
    key: bytes | None
    value: Any  # a Record; the agent encodes it for the topic
    #: The value already encoded by the stage (``Sealer``): produced as is.
    encoded: bytes | None = None
    #: Kafka record headers to produce with it (issue 14: routing headers).
    headers: tuple[tuple[str, bytes], ...] = ()


class TooLargeError(EventError):
    """An output would exceed the largest record the producer and broker accept."""

    reason = "too_large"


#: Exceptions that are never a record's fault: they stop the worker (see guard).
INFRASTRUCTURE_ERRORS: tuple[type[BaseException], ...] = (RegistryUnavailableError,)


@dataclass(frozen=True, slots=True)
class Decoded(Generic[T]):
    """What ``decode_or_dead`` gives: the record, or the dead letter in its place."""

    value: T | None = None
    dead: Emission | None = None


async def decode_or_dead(
    payload: bytes | None,
    decode: Callable[[bytes], Awaitable[T]],
    *,
    stage: str,
    origin: Origin,
    at_ms: int,
    payload_format: PayloadFormat = "avro",
) -> Decoded[T]:
    """Decode ``payload``, or build the dead letter that replaces it.

    Empty values and tombstones die with reason ``empty_value``. Infrastructure
    faults (``INFRASTRUCTURE_ERRORS``: the registry is down) propagate.
    """
    try:
        if not payload:
            raise empty_value_error()
        return Decoded(value=await decode(payload))
    except INFRASTRUCTURE_ERRORS:
        raise
    except Exception as exc:
        letter = dead_letter(
            exc,
            stage=stage,
            origin=origin,
            payload=payload or b"",
            payload_format=payload_format if payload else "unknown",
            at_ms=at_ms,
            replayed=replay_number(origin),
        )
        return Decoded(dead=Emission(DEAD_TOPIC, origin.key, letter))


DEAD_TOPIC = "dead"  # logical name of email.dead (app.topology.DEAD)
#: Room left in a record for its key, headers and Kafka's per-record overhead.
RECORD_OVERHEAD = 1024


@dataclass(frozen=True)
class Sealer:
    """Encodes a stage's outputs for their topics, within ``max_bytes`` per value.

    ``encode(logical_topic, record)`` is ``Runtime.encode_record`` in a worker.
    """

    encode: Callable[[str, Any], bytes]
    max_bytes: int = 990_000

    def seal(self, emission: Emission) -> Emission:
        """The emission with its bytes; raises ``EncodeError``/``TooLargeError``."""
        data = self.encode(emission.topic, emission.value)
        size = len(data) + len(emission.key or b"")
        if size > self.max_bytes:
            raise TooLargeError(
                f"the {type(emission.value).__name__} for {emission.topic} would be "
                f"{size} bytes, more than the {self.max_bytes} bytes a record may hold"
            )
        return replace(emission, encoded=data)

    def seal_dead(self, emission: Emission) -> Emission:
        """Encode a dead letter; a payload too large to fit is cut, and says so."""
        letter: DeadLetter = emission.value
        key = emission.key if len(emission.key or b"") <= 1024 else None
        try:
            data = self.encode(emission.topic, letter)
        except EventError:
            # Not expected (dead_letter cleans its strings): keep what surely encodes.
            letter = replace_record(letter, history=[], replayed=0)
            data = self.encode(emission.topic, letter)
        excess = len(data) + len(key or b"") - self.max_bytes
        if excess > 0:
            original = len(letter.payload)
            keep = max(0, original - excess - RECORD_OVERHEAD)
            letter = replace_record(
                letter,
                payload=bytes(letter.payload[:keep]),
                message=_clip(
                    f"{letter.message} [payload cut from {original} to {keep} bytes to fit "
                    "a Kafka record]",
                    MAX_MESSAGE_CHARS + 100,
                ),
            )
            data = self.encode(emission.topic, letter)
        return Emission(emission.topic, key, letter, data)

    def seal_or_dead(
        self, emission: Emission, dead: Callable[[BaseException], Emission]
    ) -> Emission:
        """``seal``, or the sealed dead letter that ``dead(error)`` builds."""
        try:
            return self.seal(emission)
        except EventError as exc:
            return self.seal_dead(dead(exc))


def replace_record(record: Any, **changes: Any) -> Any:
    """A copy of a Faust Record with ``changes`` (Records are not dataclasses)."""
    return type(record)(**{**record.asdict(), **changes})


def attempt_of(error: BaseException, *, stage: str, at_ms: int, provider: str | None) -> Attempt:
    return Attempt(
        at=at_ms,
        stage=stage,
        provider=provider,
        error_class=type(error).__name__,
        reason=reason_of(error),
        message=str(error) or type(error).__name__,
        retriable=retriable_of(error),
    )


def reason_of(error: BaseException) -> str:
    return error.reason if isinstance(error, SpillwayError) else "internal_error"


def retriable_of(error: BaseException) -> bool:
    # An unexpected exception is our bug, not the event's: replaying may succeed.
    return error.retriable if isinstance(error, SpillwayError) else True


MAX_MESSAGE_CHARS = 2000
MAX_FIELD_CHARS = 1000


def text(value: Any, limit: int = MAX_FIELD_CHARS) -> str:
    """``value`` as a string any UTF-8 encoder accepts (lone surrogates escaped), cut
    to ``limit`` characters: dead letters quote what the record held."""
    if not isinstance(value, str):
        value = str(value)
    if not value.isascii():
        value = value.encode("utf-8", "backslashreplace").decode("utf-8")
    return _clip(value, limit)


def _clip(value: str, limit: int) -> str:
    return value if len(value) <= limit else value[: limit - 3] + "..."


def _opt_text(value: Any) -> str | None:
    return None if value is None else text(value)


def _attempt(a: Any) -> Attempt:
    if not isinstance(a, Attempt):
        return a
    return Attempt(
        at=a.at,
        stage=text(a.stage),
        error_class=text(a.error_class),
        reason=text(a.reason),
        message=text(a.message, MAX_MESSAGE_CHARS),
        retriable=a.retriable,
        provider=_opt_text(a.provider),
    )


def dead_letter(
    error: BaseException,
    *,
    stage: str,
    origin: Origin,
    payload: bytes,
    payload_format: PayloadFormat,
    at_ms: int,
    event_id: str | None = None,
    template: str | None = None,
    template_version: str | None = None,
    source: str | None = None,
    provider: str | None = None,
    priority: str | None = None,
    history: Sequence[Attempt] = (),
    replayed: int = 0,
) -> DeadLetter:
    """The dead letter for ``payload``. Every string is made encodable and bounded
    (it may quote the record), so the result always encodes."""
    if event_id is None and origin.key:
        event_id = origin.key.decode("utf-8", "replace")
    return DeadLetter(
        event_id=_opt_text(event_id),
        stage=text(stage),
        error_class=text(type(error).__name__),
        reason=text(reason_of(error)),
        message=text(str(error) or type(error).__name__, MAX_MESSAGE_CHARS),
        retriable=retriable_of(error),
        original_topic=text(origin.topic),
        original_partition=origin.partition,
        original_offset=origin.offset,
        original_timestamp=origin.timestamp_ms,
        payload=bytes(payload) if payload else b"",
        payload_format=payload_format,
        template=_opt_text(template),
        template_version=_opt_text(template_version),
        source=_opt_text(source),
        provider=_opt_text(provider),
        priority=_opt_text(priority),
        history=[_attempt(a) for a in history],
        dead_at=at_ms,
        replayed=replayed,
    )
