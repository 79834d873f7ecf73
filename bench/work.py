"""The render-and-send unit of work every peer does, with Spillway's own pieces:
the same templates (:class:`app.templating.TemplateStore`), the same address checks,
the same request body and adapter (:class:`app.providers.http.HttpProvider`).

A peer sends once per event; throttling (429) and transient failures are retried
after the provider's ``Retry-After`` (what a straightforward app does); a permanent
rejection or a render error counts as dead.
"""

from __future__ import annotations

import asyncio
import json
import os
import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

import httpx

from app.errors import PermanentProviderError, ThrottledError, TransientProviderError
from app.providers.base import OutboundEmail
from app.providers.http import HttpProvider, request_body, retry_after_of
from app.settings import Settings
from app.templating import TemplateStore, validate_address

MAX_ATTEMPTS = 200  # throttled retries under a quota: a peer keeps trying, it does not drop mail
PROVIDER_ENV = "BENCH_PROVIDER_URL"


def provider_url() -> str:
    return os.environ.get(PROVIDER_ENV, "http://127.0.0.1:8030")


@dataclass
class Renderer:
    """Event dict -> OutboundEmail, as Spillway's render stage does it."""

    templates: TemplateStore = field(
        default_factory=lambda: TemplateStore(Settings().templates_dir)
    )
    default_sender: str = field(default_factory=lambda: Settings().default_sender)

    def outbound(self, event: Mapping[str, Any]) -> OutboundEmail:
        to = validate_address(str(event["to"]))
        parts = self.templates.render(
            str(event["template"]),
            event.get("data") or {},
            version=event.get("template_version"),
            locale=event.get("locale"),
        )
        return OutboundEmail(
            event_id=str(event["event_id"]),
            to=to,
            from_address=str(event.get("from_address") or self.default_sender),
            subject=parts.subject,
            html=parts.html,
            text=parts.text,
            priority=str(event.get("priority") or "normal"),
            source=str(event.get("source") or ""),
            template=parts.template,
            template_version=parts.template_version,
        )


def http_provider(max_connections: int = 64) -> HttpProvider:
    return HttpProvider(
        name="sim", base_url=provider_url(), api_key="sim-key", max_connections=max_connections
    )


async def send_async(provider: HttpProvider, email: OutboundEmail) -> None:
    """Send with Spillway's adapter; retry throttling and transient errors."""
    for attempt in range(MAX_ATTEMPTS):
        try:
            await provider.send(email)
            return
        except ThrottledError as exc:
            await asyncio.sleep(exc.retry_after or 0.1)
        except TransientProviderError:
            await asyncio.sleep(min(2.0, 0.1 * 2**attempt))
    raise TransientProviderError(f"gave up after {MAX_ATTEMPTS} attempts", provider="sim")


def send_sync(client: httpx.Client, email: OutboundEmail) -> None:
    """The same request as :func:`send_async` for thread-pool workers (Celery)."""
    for attempt in range(MAX_ATTEMPTS):
        try:
            resp = client.post(
                "/v3/mail/send",
                json=request_body(email),
                headers={"Idempotency-Key": email.event_id},
            )
        except httpx.HTTPError:
            time.sleep(min(2.0, 0.1 * 2**attempt))
            continue
        if 200 <= resp.status_code < 300:
            return
        if resp.status_code == 429:
            time.sleep(retry_after_of(resp.headers) or 0.1)
            continue
        if resp.status_code in (400, 403, 413):
            raise PermanentProviderError(
                f"rejected ({resp.status_code})", provider="sim", status=resp.status_code
            )
        time.sleep(min(2.0, 0.1 * 2**attempt))
    raise TransientProviderError(f"gave up after {MAX_ATTEMPTS} attempts", provider="sim")


def sync_client(max_connections: int = 64) -> httpx.Client:
    return httpx.Client(
        base_url=provider_url(),
        timeout=10.0,
        headers={"Authorization": "Bearer sim-key"},
        limits=httpx.Limits(
            max_connections=max_connections, max_keepalive_connections=max_connections
        ),
    )


def decode_event(payload: bytes) -> dict[str, Any]:
    value = json.loads(payload)
    assert isinstance(value, dict)
    return value
