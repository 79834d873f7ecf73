"""Types shared by the stages: where a message came from, what a stage emits."""

from __future__ import annotations

import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from app.errors import SpillwayError
from app.models import Attempt, DeadLetter
from app.serde import PayloadFormat

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
        return max(1, int(raw))
    except ValueError:
        return 1


@dataclass(frozen=True, slots=True)
class Emission:
    """One record a stage wants produced: to a logical topic name (see topology)."""

    topic: str
    key: bytes | None
    value: Any  # a Record; the agent encodes it for the topic


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
    if event_id is None and origin.key:
        event_id = origin.key.decode("utf-8", "replace")
    return DeadLetter(
        event_id=event_id,
        stage=stage,
        error_class=type(error).__name__,
        reason=reason_of(error),
        message=str(error) or type(error).__name__,
        retriable=retriable_of(error),
        original_topic=origin.topic,
        original_partition=origin.partition,
        original_offset=origin.offset,
        original_timestamp=origin.timestamp_ms,
        payload=payload,
        payload_format=payload_format,
        template=template,
        template_version=template_version,
        source=source,
        provider=provider,
        priority=priority,
        history=list(history),
        dead_at=at_ms,
        replayed=replayed,
    )
