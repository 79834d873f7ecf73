from __future__ import annotations

import pytest

from app.models import DispatchRequest, RenderedEmail
from app.serde import Serde
from app.stages.common import Origin
from app.stages.route import RouteStage

ORIGIN = Origin("email.rendered", 0, 7, None, b"e")


def rendered(priority: str) -> RenderedEmail:
    return RenderedEmail(
        event_id="e",
        priority=priority,
        to="a@b.example",
        from_address="s@b.example",
        subject="s",
        html="<p>h</p>",
        text="h",
        template="t",
        template_version="v1",
        source="src",
        accepted_at=1,
        rendered_at=2,
    )


@pytest.mark.parametrize("priority", ["critical", "normal", "bulk"])
async def test_routes_by_priority(serde: Serde, priority: str) -> None:
    out = await RouteStage(serde).handle(serde.encode("email.rendered", rendered(priority)), ORIGIN)
    assert out.topic == f"dispatch.{priority}" and out.key == b"e"
    assert isinstance(out.value, DispatchRequest)
    assert out.value.attempts == 0 and out.value.subject == "s"


async def test_undecodable_goes_dead(serde: Serde) -> None:
    out = await RouteStage(serde).handle(b"junk", ORIGIN)
    assert (out.topic, out.value.stage, out.value.reason) == ("dead", "route", "undecodable")
