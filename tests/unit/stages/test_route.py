from __future__ import annotations

import pytest

from app.models import DispatchRequest, RenderedEmail
from app.serde import Serde
from app.stages.common import Origin
from app.stages.render import default_sealer
from app.stages.route import RouteStage
from tests.plugins.factories import rendered_email

ORIGIN = Origin("email.rendered", 0, 7, None, b"e")


def rendered(priority: str) -> RenderedEmail:
    return rendered_email(priority=priority)


@pytest.mark.parametrize("priority", ["critical", "normal", "bulk"])
async def test_routes_by_priority(serde: Serde, priority: str) -> None:
    out = await RouteStage(serde).handle(serde.encode("email.rendered", rendered(priority)), ORIGIN)
    assert out.topic == f"dispatch.{priority}" and out.key == b"e"
    assert isinstance(out.value, DispatchRequest)
    assert out.value.attempts == 0 and out.value.subject == "s"


async def test_undecodable_goes_dead(serde: Serde) -> None:
    out = await RouteStage(serde).handle(b"junk", ORIGIN)
    assert (out.topic, out.value.stage, out.value.reason) == ("dead", "route", "undecodable")


# --- poison (issue 13): each record that used to halt a stage is one dead letter -----


@pytest.mark.parametrize("payload", [None, b""])
async def test_tombstone_is_dead_as_empty_value(serde: Serde, payload: bytes | None) -> None:
    out = await RouteStage(serde).handle(payload, ORIGIN)
    assert out.topic == "dead" and out.encoded
    dl = serde.decode_known(out.encoded, "dead_letter")
    assert (dl.stage, dl.reason, dl.payload, dl.event_id) == ("route", "empty_value", b"", "e")


async def test_output_is_encoded_by_the_stage(serde: Serde) -> None:
    out = await RouteStage(serde).handle(serde.encode("email.rendered", rendered("bulk")), ORIGIN)
    assert out.encoded is not None
    assert serde.decode_known(out.encoded, "dispatch_request").event_id == "e"


async def test_oversized_lane_message_is_dead_as_too_large(serde: Serde) -> None:
    email = rendered("normal")
    payload = serde.encode(
        "email.rendered", type(email)(**{**email.asdict(), "html": "x" * 30_000})
    )
    stage = RouteStage(serde, sealer=default_sealer(serde, max_bytes=20_000))
    out = await stage.handle(payload, ORIGIN)
    assert out.topic == "dead" and len(out.encoded or b"") <= 20_000
    dl = serde.decode_known(out.encoded, "dead_letter")
    assert dl.reason == "too_large" and dl.priority == "normal" and dl.template == "t"


async def test_hand_made_record_with_a_bad_header_is_dead(serde: Serde) -> None:
    email = rendered("critical")
    bad = type(email)(**{**email.asdict(), "from_address": "A\u2028B <a@b.example>"})
    out = await RouteStage(serde).handle(serde.encode("email.rendered", bad), ORIGIN)
    dl = serde.decode_known(out.encoded, "dead_letter")
    assert (out.topic, dl.reason) == ("dead", "invalid_header")
