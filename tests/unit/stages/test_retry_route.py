"""The retry agent's routing: a record of a retry topic goes back to its lane after its
not_before, and one it cannot read becomes a dead letter instead of stopping the worker."""

from __future__ import annotations

import pytest

from app.models import DispatchRequest
from app.serde import Serde
from app.stages.common import Origin
from app.stages.dispatch import retry_route
from app.topology import DEAD, LANES
from tests.plugins.factories import dispatch_request

ORIGIN = Origin("email.dispatch.retry-1", 2, 7, None, b"e-9")
NOW_S = 1_700_000_000.0


def request(priority: str, not_before: int | None) -> DispatchRequest:
    return dispatch_request("e-9", priority, attempts=1, not_before=not_before)


@pytest.mark.parametrize("priority", ["critical", "normal", "bulk"])
async def test_back_to_its_own_lane_after_not_before(serde: Serde, priority: str) -> None:
    payload = serde.encode("email.dispatch.retry-1", request(priority, int(NOW_S * 1000) + 2500))
    out, delay = await retry_route(serde, payload, ORIGIN, clock=lambda: NOW_S)
    assert out.topic == LANES[priority]
    assert out.key == b"e-9" and out.value.event_id == "e-9"
    assert delay == pytest.approx(2.5)


async def test_due_or_past_not_before_waits_nothing(serde: Serde) -> None:
    for not_before in (None, 0, int(NOW_S * 1000) - 10_000):
        payload = serde.encode("email.dispatch.retry-1", request("normal", not_before))
        _, delay = await retry_route(serde, payload, ORIGIN, clock=lambda: NOW_S)
        assert delay == 0.0


@pytest.mark.parametrize(
    ("payload", "reason"),
    [(None, "empty_value"), (b"", "empty_value"), (b"\x00\x00\x00\x00\x09garbage", None)],
)
async def test_unreadable_record_is_a_dead_letter_not_a_crash(
    serde: Serde, payload: bytes | None, reason: str | None
) -> None:
    out, delay = await retry_route(serde, payload, ORIGIN, clock=lambda: NOW_S)
    assert out.topic == DEAD and delay == 0.0
    assert out.value.stage == "dispatch"
    assert out.value.original_partition == 2 and out.value.original_offset == 7
    if reason is not None:
        assert out.value.reason == reason
    else:
        assert out.value.reason not in ("", "internal_error")
