"""``schemas/dead_letter.avsc``: value of ``email.dead``, and the shared Attempt record."""

from __future__ import annotations

import faust


class Attempt(faust.Record, serializer="json"):
    """One failed try at a message: when, where, and why."""

    at: int
    stage: str
    error_class: str
    reason: str
    message: str
    retriable: bool
    provider: str | None = None


class DeadLetter(faust.Record, serializer="json"):
    """A message that left the pipeline without being sent, and why."""

    stage: str
    error_class: str
    reason: str
    message: str
    retriable: bool
    original_topic: str
    original_partition: int
    original_offset: int
    payload: bytes
    payload_format: str
    dead_at: int
    event_id: str | None = None
    original_timestamp: int | None = None
    template: str | None = None
    template_version: str | None = None
    source: str | None = None
    provider: str | None = None
    priority: str | None = None
    history: list[Attempt] = []
    replayed: int = 0
