"""``schemas/dispatch_request.avsc``: value of the dispatch lanes and retry topics."""

from __future__ import annotations

import faust

from app.models.dead_letter import Attempt


class DispatchRequest(faust.Record, serializer="json"):
    """A rendered email plus its delivery state (attempts, backoff, provider)."""

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
    accepted_at: int
    rendered_at: int
    locale: str | None = None
    created_at: int | None = None
    replay: bool = False
    attempts: int = 0
    not_before: int | None = None
    provider: str | None = None
    history: list[Attempt] = []
