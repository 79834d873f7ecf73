from __future__ import annotations

import json
from typing import Any

import pytest

from app.models import DeadLetter, DispatchRequest, RawEvent
from app.serde import Serde
from app.settings import Settings
from app.stages.common import Origin
from app.stages.render import RenderStage, default_sealer
from app.templating import TemplateStore
from tests.plugins.factories import raw_event as reset_event

ORIGIN = Origin("email.raw-events", 2, 41, 1_700_000_000_000, b"k1")
STORE = TemplateStore(Settings().templates_dir)


@pytest.fixture
def stage(serde: Serde) -> RenderStage:
    return RenderStage(serde, STORE, "Shop <no-reply@shop.example>", clock=lambda: 1_700_000_001.0)




async def test_json_event_is_rendered(stage: RenderStage) -> None:
    out = await stage.handle(json.dumps(reset_event()).encode(), ORIGIN)
    assert out.topic == "rendered.critical" and out.key == b"e-1"
    email = out.value
    assert isinstance(email, DispatchRequest) and email.attempts == 0
    assert dict(out.headers) == {
        "spillway-priority": b"critical",
        "spillway-event-id": b"e-1",
        "spillway-template": b"password_reset",
    }
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
    assert out.topic == "rendered.normal"  # the event's default priority
    assert out.value.template_version == "v1"
    for line in data["order"]["lines"]:
        assert line["name"] in out.value.text


async def test_data_json_is_merged(stage: RenderStage) -> None:
    event = reset_event(data={}, data_json=json.dumps(STORE.sample_data("password_reset")))
    out = await stage.handle(json.dumps(event).encode(), ORIGIN)
    assert out.topic == "rendered.critical"


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


# --- records that used to halt the stage (issue 13): each is one dead letter ---------


def sealed_dead(out: Any, reason: str, serde: Serde) -> DeadLetter:
    """The emission is a dead letter with ``reason``, already encoded, and decodes."""
    assert out.topic == "dead", out
    assert out.encoded is not None
    dl = serde.decode_known(out.encoded, "dead_letter")
    assert dl.reason == reason, dl.message
    return dl  # type: ignore[no-any-return]


@pytest.mark.parametrize("payload", [None, b""])
async def test_tombstone_and_empty_value_are_dead_as_empty_value(
    stage: RenderStage, serde: Serde, payload: bytes | None
) -> None:
    out = await stage.handle(payload, ORIGIN)
    dl = sealed_dead(out, "empty_value", serde)
    assert dl.payload == b"" and dl.payload_format == "unknown" and dl.event_id == "k1"
    assert out.key == b"k1" and not dl.retriable


@pytest.mark.parametrize("created_at", [10**20, -(10**20), 2**63])
async def test_created_at_outside_a_long_is_dead(
    stage: RenderStage, serde: Serde, created_at: int
) -> None:
    payload = json.dumps(reset_event(created_at=created_at)).encode()
    dl = sealed_dead(await stage.handle(payload, ORIGIN), "schema_violation", serde)
    assert "created_at" in dl.message and dl.payload == payload


async def test_created_at_at_the_edges_of_a_long_renders(stage: RenderStage) -> None:
    for created_at in (2**63 - 1, -(2**63)):
        out = await stage.handle(json.dumps(reset_event(created_at=created_at)).encode(), ORIGIN)
        assert out.topic == "rendered.critical" and out.encoded


@pytest.mark.parametrize(
    "event",
    [
        reset_event(data={**STORE.sample_data("password_reset"), "user": {"name": "\ud800"}}),
        reset_event(event_id="e-\udfff"),
        reset_event(source="\ud800"),
        reset_event(data={}, data_json='{"user": {"name": "\\ud800"}}'),
    ],
)
async def test_lone_surrogate_is_dead_not_a_crash(
    stage: RenderStage, serde: Serde, event: dict[str, object]
) -> None:
    payload = json.dumps(event).encode()  # ensure_ascii: "\\ud800" escapes, as a producer sends
    out = await stage.handle(payload, ORIGIN)
    dl = sealed_dead(out, "invalid_field", serde)
    assert "surrogate" in dl.message and dl.payload == payload


async def test_rendered_email_larger_than_a_record_is_dead_as_too_large(serde: Serde) -> None:
    data = STORE.sample_data("order_confirmation")
    line = data["order"]["lines"][0]
    data["order"]["lines"] = [dict(line, name="x" * 2000) for _ in range(300)]
    stage = RenderStage(serde, STORE, "s@shop.example", clock=lambda: 1.0)
    event = reset_event(template="order_confirmation", data=data)
    payload = json.dumps(event).encode()
    out = await stage.handle(payload, ORIGIN)
    dl = sealed_dead(out, "too_large", serde)
    assert dl.payload == payload and dl.template == "order_confirmation"
    assert len(out.encoded or b"") < stage.sealer.max_bytes  # type: ignore[union-attr]


async def test_oversized_input_is_cut_to_fit_its_dead_letter(serde: Serde) -> None:
    sealer = default_sealer(serde, max_bytes=50_000)
    stage = RenderStage(serde, STORE, "s@shop.example", sealer=sealer)
    payload = b"\x7f" + b"x" * 80_000
    out = await stage.handle(payload, ORIGIN)
    dl = sealed_dead(out, "undecodable", serde)
    assert len(out.encoded or b"") <= 50_000
    assert payload.startswith(dl.payload) and "payload cut from 80001" in dl.message


@pytest.mark.parametrize(
    ("over", "what"),
    [
        ({"event_id": "é-1"}, "event id"),
        ({"event_id": "e 1"}, "event id"),
        ({"event_id": "e<1>"}, "event id"),
        ({"event_id": "x" * 256}, "event id"),
        ({"from_address": "Jane\u2028Doe <jane@example.com>"}, "sender name"),
        ({"from_address": "Jane\u0085Doe <jane@example.com>"}, "sender name"),
        ({"to": "jörg@example.com"}, "SMTPUTF8"),
        ({"from_address": "jörg@example.com"}, "SMTPUTF8"),
    ],
)
async def test_header_values_a_provider_would_refuse_are_dead_at_render(
    stage: RenderStage, serde: Serde, over: dict[str, object], what: str
) -> None:
    payload = json.dumps(reset_event(**over)).encode()
    dl = sealed_dead(await stage.handle(payload, ORIGIN), "invalid_header", serde)
    assert what in dl.message and dl.payload == payload


async def test_header_values_are_encoded_for_providers(stage: RenderStage) -> None:
    event = reset_event(
        to="ann@bücher.example", from_address="Jörg Müller <j@münchen.example>"
    )
    out = await stage.handle(json.dumps(event).encode(), ORIGIN)
    assert out.topic == "rendered.critical"
    assert out.value.to == "ann@xn--bcher-kva.example"
    assert out.value.from_address == "Jörg Müller <j@xn--mnchen-3ya.example>"


async def test_control_characters_in_the_subject_are_dropped(stage: RenderStage) -> None:
    data = STORE.sample_data("password_reset")
    data["shop"]["name"] = "Shop\x85\x9f\x00\u2028Name"
    out = await stage.handle(json.dumps(reset_event(data=data)).encode(), ORIGIN)
    assert out.topic == "rendered.critical", out.value
    assert out.value.subject.isprintable()


async def test_deep_json_nesting_is_dead(stage: RenderStage, serde: Serde) -> None:
    deep: object = 1
    for _ in range(100):
        deep = [deep]
    dl = sealed_dead(
        await stage.handle(json.dumps(reset_event(data={"x": deep})).encode(), ORIGIN),
        "schema_violation",
        serde,
    )
    assert "deeper" in dl.message
    hostile = b'{"event_id": "e-1", "data": ' + b"[" * 100_000 + b"]" * 100_000 + b"}"
    sealed_dead(await stage.handle(hostile, ORIGIN), "undecodable", serde)


async def test_unknown_schema_id_is_undecodable(stage: RenderStage, serde: Serde) -> None:
    payload = b"\x00\x00\x0f\x12\x06\x02x"
    sealed_dead(await stage.handle(payload, ORIGIN), "undecodable", serde)


@pytest.mark.parametrize("header", [b"99999999999999", b"-5", b"x", b"9" * 5000])
async def test_untrusted_replay_header_never_breaks_a_dead_letter(
    stage: RenderStage, serde: Serde, header: bytes
) -> None:
    origin = Origin("email.raw-events", 0, 1, None, b"k", (("spillway-replay", header),))
    dl = sealed_dead(await stage.handle(b"\x7fjunk", origin), "undecodable", serde)
    assert 1 <= dl.replayed <= 1_000_000


@pytest.mark.parametrize(
    "over",
    [
        # the display-form regex took 2.5 s on 20,000 blanks and grows with the square:
        # 900 kB of them would hold the stage for over an hour (pytest-timeout fails it)
        {"from_address": "a" + " " * 900_000 + "x"},
        {"from_address": "N" * 900_000 + " <a@b.example>"},
        {"to": "a" * 900_000 + "@example.com"},
    ],
)
async def test_huge_addresses_are_refused_before_any_parsing(
    stage: RenderStage, serde: Serde, over: dict[str, object]
) -> None:
    dl = sealed_dead(
        await stage.handle(json.dumps(reset_event(**over)).encode(), ORIGIN),
        "invalid_field",
        serde,
    )
    assert "longer than" in dl.message


# --- issue 14: the output's topic and headers come from the event's own priority ------


@pytest.mark.parametrize("priority", ["critical", "normal", "bulk"])
@pytest.mark.parametrize("source_topic", ["email.raw-events", "email.raw-events.critical"])
async def test_the_events_priority_picks_the_rendered_topic(
    stage: RenderStage, serde: Serde, priority: str, source_topic: str
) -> None:
    origin = Origin(source_topic, 1, 3, 1_700_000_000_000, b"e-1")
    out = await stage.handle(json.dumps(reset_event(priority=priority)).encode(), origin)
    assert out.topic == f"rendered.{priority}" and out.encoded
    assert dict(out.headers)["spillway-priority"] == priority.encode()
    # the bytes are a DispatchRequest: route moves them to the lane as they are
    request = serde.decode_known(out.encoded, "dispatch_request")
    assert (request.priority, request.attempts, request.event_id) == (priority, 0, "e-1")


async def test_a_replay_keeps_its_count_in_a_header(stage: RenderStage) -> None:
    origin = Origin("email.raw-events", 0, 1, None, b"e-1", (("spillway-replay", b"3"),))
    out = await stage.handle(json.dumps(reset_event()).encode(), origin)
    assert out.value.replay is True
    assert dict(out.headers)["spillway-replay"] == b"3"
    plain = await stage.handle(json.dumps(reset_event()).encode(), ORIGIN)
    assert "spillway-replay" not in dict(plain.headers)
