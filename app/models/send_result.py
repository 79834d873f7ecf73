"""``schemas/send_result.avsc``: value of ``email.sent``."""

from __future__ import annotations

import faust


class SendResult(faust.Record, serializer="json"):
    """A provider accepted the email."""

    event_id: str
    priority: str
    provider: str
    provider_message_id: str
    attempts: int
    provider_latency_ms: float
    time_to_send_ms: float
    template: str
    template_version: str
    source: str
    accepted_at: int
    sent_at: int
    created_at: int | None = None
    replay: bool = False
