"""``schemas/rendered_email.avsc``: value of ``email.rendered``."""

from __future__ import annotations

import faust


class RenderedEmail(faust.Record, serializer="json"):
    """A validated, fully rendered email, ready to route by priority."""

    event_id: str
    priority: str
    to: str
    from_address: str
    subject: str
    html: str
    text: str
    template: str
    template_version: str
    source: str
    accepted_at: int  # Kafka's timestamp of the raw event, epoch ms
    rendered_at: int
    locale: str | None = None
    created_at: int | None = None
    replay: bool = False
