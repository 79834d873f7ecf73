"""Records with sensible defaults: one factory per record type, every field overridable.

``raw_event`` returns the JSON-able dict an upstream service sends (tests often break
it on purpose); the others return the typed records of ``app.models``.
"""

from __future__ import annotations

from typing import Any

from app.models import Attempt, DeadLetter, DispatchRequest, RawEvent, RenderedEmail, SendResult
from app.settings import Settings
from app.stages.deadletters import StoredDeadLetter
from app.templating import TemplateStore

T0 = 1_700_000_000_000  # epoch ms, on a minute boundary + 20 s
STORE = TemplateStore(Settings().templates_dir)


def raw_event(**over: Any) -> dict[str, Any]:
    """A password-reset event as JSON would carry it (``data`` is the template's sample)."""
    event: dict[str, Any] = {
        "event_id": "e-1",
        "template": "password_reset",
        "to": "ann@example.com",
        "priority": "critical",
        "source": "accounts",
        "data": STORE.sample_data("password_reset"),
    }
    event.update(over)
    return event


def raw_record(**over: Any) -> RawEvent:
    """The same event as the typed record (Avro path)."""
    return RawEvent(**raw_event(**over))


#: what a rendered email says (shared by RenderedEmail and DispatchRequest)
EMAIL: dict[str, Any] = {
    "to": "a@b.example",
    "from_address": "s@b.example",
    "subject": "s",
    "html": "<p>h</p>",
    "text": "h",
    "template": "t",
    "template_version": "v1",
    "source": "src",
}


def rendered_email(**over: Any) -> RenderedEmail:
    fields = {"event_id": "e", "priority": "normal", **EMAIL, "accepted_at": 1, "rendered_at": 2}
    return RenderedEmail(**{**fields, **over})


def dispatch_request(
    event_id: str = "e-1", priority: str = "normal", **over: Any
) -> DispatchRequest:
    """A first-attempt request (attempts 0, no history)."""
    fields = {"event_id": event_id, "priority": priority, **EMAIL}
    return DispatchRequest(**{**fields, "accepted_at": 1_000, "rendered_at": 1_100, **over})


def failed_request(**over: Any) -> DispatchRequest:
    """A request that failed three times at the provider (it waits in retry-3)."""
    fields: dict[str, Any] = {
        "event_id": "d1",
        "priority": "critical",
        "to": "a@example.com",
        "from_address": "s@example.com",
        "html": "h",
        "text": "t",
        "template": "password_reset",
        "source": "accounts",
        "accepted_at": T0,
        "rendered_at": T0,
        "attempts": 3,
        "not_before": T0 + 9000,
        "history": [
            Attempt(
                at=T0,
                stage="dispatch",
                error_class="E",
                reason="provider_unavailable",
                message="503",
                retriable=True,
                provider="sim-http",
            ),
        ],
    }
    fields.update(over)
    return dispatch_request(**fields)


def send_result(**over: Any) -> SendResult:
    fields: dict[str, Any] = {
        "event_id": "e1",
        "priority": "critical",
        "provider": "sim-http",
        "provider_message_id": "m1",
        "attempts": 1,
        "provider_latency_ms": 12.0,
        "time_to_send_ms": 1500.0,
        "template": "password_reset",
        "template_version": "v1",
        "source": "s",
        "accepted_at": 1,
        "sent_at": 2,
    }
    fields.update(over)
    return SendResult(**fields)


def bare_dead_letter(**over: Any) -> DeadLetter:
    """A dead letter with only the required fields (no event, template or source)."""
    fields: dict[str, Any] = {
        "stage": "render",
        "error_class": "RenderError",
        "reason": "render_error",
        "message": "x",
        "retriable": False,
        "original_topic": "t",
        "original_partition": 0,
        "original_offset": 1,
        "payload": b"",
        "payload_format": "json",
        "dead_at": 1,
    }
    return DeadLetter(**{**fields, **over})


def dead_letter(**over: Any) -> DeadLetter:
    """A render dead letter with every optional label set (event, template, source)."""
    fields: dict[str, Any] = {
        "message": "template 'order_confirmation' v2: 'customer' is undefined",
        "original_topic": "email.raw-events",
        "original_partition": 1,
        "original_offset": 7,
        "payload": b'{"event_id": "e1"}',
        "dead_at": T0,
        "event_id": "e1",
        "template": "order_confirmation",
        "template_version": "v2",
        "source": "shop",
    }
    return bare_dead_letter(**{**fields, **over})


def stored(dl: DeadLetter, partition: int = 0, offset: int = 0) -> StoredDeadLetter:
    """A dead letter as read back from the dead topic (keyed by its event id)."""
    return StoredDeadLetter(partition, offset, (dl.event_id or "").encode() or None, dl)
