from __future__ import annotations

import json

import pytest

from app.models import DeadLetter, RawEvent, RenderedEmail
from app.serde import Serde
from app.settings import Settings
from app.stages.common import Origin
from app.stages.render import RenderStage
from app.templating import TemplateStore

ORIGIN = Origin("email.raw-events", 2, 41, 1_700_000_000_000, b"k1")
STORE = TemplateStore(Settings().templates_dir)


@pytest.fixture
def stage(serde: Serde) -> RenderStage:
    return RenderStage(serde, STORE, "Shop <no-reply@shop.example>", clock=lambda: 1_700_000_001.0)


def reset_event(**over: object) -> dict[str, object]:
    event: dict[str, object] = {
        "event_id": "e-1",
        "template": "password_reset",
        "to": "ann@example.com",
        "priority": "critical",
        "source": "accounts",
        "data": STORE.sample_data("password_reset"),
    }
    event.update(over)
    return event


async def test_json_event_is_rendered(stage: RenderStage) -> None:
    out = await stage.handle(json.dumps(reset_event()).encode(), ORIGIN)
    assert out.topic == "rendered" and out.key == b"e-1"
    email = out.value
    assert isinstance(email, RenderedEmail)
    assert email.priority == "critical" and email.to == "ann@example.com"
    assert email.accepted_at == ORIGIN.timestamp_ms
    assert "reset" in email.subject.lower() and email.html and email.text
    assert email.from_address == "Shop <no-reply@shop.example>"


async def test_avro_event_with_nested_order_lines(stage: RenderStage, serde: Serde) -> None:
    data = STORE.sample_data("order_confirmation")
    raw = RawEvent(
        event_id="e-2",
        template="order_confirmation",
        to="bo@example.com",
        data=data,
        template_version="v1",
    )
    out = await stage.handle(serde.encode("email.raw-events", raw), ORIGIN)
    assert out.topic == "rendered"
    assert out.value.template_version == "v1"
    for line in data["order"]["lines"]:
        assert line["name"] in out.value.text


async def test_data_json_is_merged(stage: RenderStage) -> None:
    event = reset_event(data={}, data_json=json.dumps(STORE.sample_data("password_reset")))
    out = await stage.handle(json.dumps(event).encode(), ORIGIN)
    assert out.topic == "rendered"


@pytest.mark.parametrize(
    ("payload", "reason"),
    [
        (b"\x07garbage", "undecodable"),
        (b'{"event_id": "e-1"}', "schema_violation"),
        (json.dumps(reset_event(template="nope")).encode(), "unknown_template"),
        (json.dumps(reset_event(template_version="v9")).encode(), "unknown_template"),
        (json.dumps(reset_event(data={})).encode(), "render_error"),
        (json.dumps(reset_event(to="not-an-address")).encode(), "invalid_field"),
        (json.dumps(reset_event(data_json="[1]")).encode(), "schema_violation"),
    ],
)
async def test_bad_events_become_dead_letters(
    stage: RenderStage, payload: bytes, reason: str
) -> None:
    out = await stage.handle(payload, ORIGIN)
    assert out.topic == "dead"
    dl = out.value
    assert isinstance(dl, DeadLetter)
    assert dl.reason == reason and dl.stage == "render" and not dl.retriable
    assert (dl.original_topic, dl.original_partition, dl.original_offset) == (
        "email.raw-events",
        2,
        41,
    )
    assert dl.payload == payload and dl.message
    assert dl.event_id in ("e-1", "k1")


async def test_missing_variable_names_it(stage: RenderStage) -> None:
    out = await stage.handle(json.dumps(reset_event(data={"user": {"name": "A"}})).encode(), ORIGIN)
    assert out.value.reason == "render_error"
    assert "reset_url" in out.value.message or "undefined" in out.value.message


async def test_unexpected_error_is_dead_and_retriable(
    stage: RenderStage, monkeypatch: pytest.MonkeyPatch
) -> None:
    def boom(*a: object, **k: object) -> None:
        raise RuntimeError("bug")

    monkeypatch.setattr(stage.templates, "render", boom)
    out = await stage.handle(json.dumps(reset_event()).encode(), ORIGIN)
    assert (out.topic, out.value.reason, out.value.retriable) == ("dead", "internal_error", True)
