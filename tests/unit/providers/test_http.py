from __future__ import annotations

import json

import httpx
import pytest

from app.errors import PermanentProviderError, ThrottledError, TransientProviderError
from app.providers.base import OutboundEmail
from app.providers.http import HttpProvider

EMAIL = OutboundEmail(
    event_id="e-1",
    to="a@b.example",
    from_address="Shop <s@b.example>",
    subject="Hi",
    html="<p>h</p>",
    text="h",
    priority="critical",
    source="src",
    template="t",
    template_version="v1",
)


def provider(handler: object) -> HttpProvider:
    return HttpProvider(
        name="sim", base_url="http://sim", api_key="k", transport=httpx.MockTransport(handler)
    )  # type: ignore[arg-type]


async def test_sends_sendgrid_shaped_request_with_idempotency_key() -> None:
    seen: list[httpx.Request] = []

    def handler(request: httpx.Request) -> httpx.Response:
        seen.append(request)
        return httpx.Response(
            202,
            headers={
                "X-Message-Id": "m1",
                "X-RateLimit-Limit": "100",
                "X-RateLimit-Remaining": "7",
                "X-RateLimit-Reset": "1700000000",
            },
        )

    receipt = await provider(handler).send(EMAIL)
    req = seen[0]
    body = json.loads(req.content)
    assert req.url.path == "/v3/mail/send"
    assert req.headers["Authorization"] == "Bearer k"
    assert req.headers["Idempotency-Key"] == "e-1"
    assert body["personalizations"][0]["to"][0]["email"] == "a@b.example"
    assert body["custom_args"]["event_id"] == "e-1"
    assert body["from"] == {"email": "s@b.example", "name": "Shop"}
    assert {c["type"] for c in body["content"]} == {"text/plain", "text/html"}
    assert receipt.message_id == "m1"
    assert receipt.rate_limit is not None and receipt.rate_limit.remaining == 7


@pytest.mark.parametrize(
    ("status", "error", "needle"),
    [
        (400, PermanentProviderError, "personalizations.0.to.0.email: rejected"),
        (429, ThrottledError, "throttled"),
        (401, TransientProviderError, "authorization"),
        (503, TransientProviderError, r"server error \(503\)"),
    ],
)
async def test_errors_are_classified(status: int, error: type, needle: str) -> None:
    def handler(request: httpx.Request) -> httpx.Response:
        return httpx.Response(
            status,
            json={"errors": [{"message": "rejected", "field": "personalizations.0.to.0.email"}]},
            headers={"Retry-After": "3"},
        )

    with pytest.raises(error, match=needle) as info:
        await provider(handler).send(EMAIL)
    if status == 429:
        assert info.value.retry_after == 3.0


async def test_connection_error_is_transient() -> None:
    def handler(request: httpx.Request) -> httpx.Response:
        raise httpx.ConnectError("refused")

    with pytest.raises(TransientProviderError, match="ConnectError"):
        await provider(handler).send(EMAIL)
