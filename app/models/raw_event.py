"""``schemas/raw_event.avsc``: value of ``email.raw-events``."""

from __future__ import annotations

from typing import Any

import faust


class RawEvent(faust.Record, serializer="json"):
    """One email to send, as a producer states it.

    ``data`` holds plain JSON values here; on the Avro wire each value is wrapped
    as ``{"v": ...}`` (see :mod:`app.serde`). Records are never mutated after
    construction (defaults of container fields are shared).
    """

    event_id: str
    template: str
    to: str
    priority: str = "normal"
    data: dict[str, Any] = {}
    data_json: str | None = None
    source: str = "unknown"
    template_version: str | None = None
    locale: str | None = None
    from_address: str | None = None
    created_at: int | None = None
