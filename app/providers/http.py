"""HTTP provider adapter shaped like SendGrid v3 Mail Send (``POST /v3/mail/send``).

Status mapping (SendGrid's documented codes):
  202 accepted; 400/403/413 -> PermanentProviderError (the message is rejected);
  401 -> TransientProviderError (our credentials: a provider-wide fault, not the
  message's); 429 -> ThrottledError with Retry-After; 5xx, timeouts, connection
  errors -> TransientProviderError.
The event id goes out as the ``Idempotency-Key`` header and in ``custom_args``.
"""

from __future__ import annotations

import time
from email.utils import parseaddr
from typing import Any

import httpx
from httpx_aiohttp import HttpxAiohttpClient

from app.errors import PermanentProviderError, ThrottledError, TransientProviderError
from app.providers.base import OutboundEmail, RateLimitInfo, SendReceipt


class HttpProvider:
    def __init__(
        self,
        *,
        name: str,
        base_url: str,
        api_key: str,
        timeout_s: float = 10.0,
        max_connections: int = 100,
        transport: httpx.AsyncBaseTransport | None = None,
    ) -> None:
        self.name = name
        # httpx's API on aiohttp's connection pool (unless a transport is injected):
        # httpcore's pool cost ~4 ms CPU per request at 64 concurrent, this ~0.6 ms.
        self._client = HttpxAiohttpClient(
            base_url=base_url,
            timeout=timeout_s,
            headers={"Authorization": f"Bearer {api_key}"},
            limits=httpx.Limits(
                max_connections=max_connections, max_keepalive_connections=max_connections
            ),
            transport=transport,
        )

    async def aclose(self) -> None:
        await self._client.aclose()

    async def send(self, email: OutboundEmail) -> SendReceipt:
        started = time.perf_counter()
        try:
            resp = await self._client.post(
                "/v3/mail/send",
                json=request_body(email),
                headers={"Idempotency-Key": email.event_id},
            )
        except httpx.TimeoutException as exc:
            raise TransientProviderError(
                f"{self.name}: request timed out ({type(exc).__name__})",
                provider=self.name,
                reason="provider_timeout",
            ) from exc
        except httpx.HTTPError as exc:
            raise TransientProviderError(
                f"{self.name}: {type(exc).__name__}: {exc}", provider=self.name
            ) from exc
        latency = time.perf_counter() - started
        status = resp.status_code
        if status == 202 or 200 <= status < 300:
            return SendReceipt(
                provider=self.name,
                message_id=resp.headers.get("X-Message-Id", ""),
                latency_s=latency,
                rate_limit=rate_limit_of(resp.headers),
                replayed=resp.headers.get("Idempotent-Replayed") == "true",
            )
        detail = error_detail(resp)
        if status == 429:
            raise ThrottledError(
                f"{self.name}: throttled (429): {detail}",
                provider=self.name,
                retry_after=retry_after_of(resp.headers),
            )
        if status == 401:
            raise TransientProviderError(
                f"{self.name}: authorization failed (401): {detail}",
                provider=self.name,
                status=status,
                reason="provider_auth",
            )
        if status in (400, 403, 413):
            raise PermanentProviderError(
                f"{self.name}: rejected ({status}): {detail}", provider=self.name, status=status
            )
        raise TransientProviderError(
            f"{self.name}: server error ({status}): {detail}", provider=self.name, status=status
        )


def request_body(email: OutboundEmail) -> dict[str, Any]:
    name, address = parseaddr(email.from_address)
    sender = {"email": address, "name": name} if name else {"email": address}
    return {
        "personalizations": [{"to": [{"email": email.to}]}],
        "from": sender,
        "subject": email.subject,
        "content": [
            {"type": "text/plain", "value": email.text},
            {"type": "text/html", "value": email.html},
        ],
        "custom_args": {
            "event_id": email.event_id,
            "priority": email.priority,
            "source": email.source,
            "template": f"{email.template}@{email.template_version}",
        },
    }


def error_detail(resp: httpx.Response) -> str:
    """SendGrid's ``{"errors": [{"message", "field"}]}`` as one line."""
    try:
        errors = resp.json().get("errors") or []
        parts = [
            f"{e.get('field')}: {e.get('message')}" if e.get("field") else str(e.get("message"))
            for e in errors
        ]
        if parts:
            return "; ".join(parts)
    except Exception:  # body is not the documented JSON: fall back to the text
        pass
    return resp.text[:200] or resp.reason_phrase


def _int(headers: httpx.Headers, name: str) -> int | None:
    value = headers.get(name)
    try:
        return int(value) if value is not None else None
    except ValueError:
        return None


def rate_limit_of(headers: httpx.Headers) -> RateLimitInfo | None:
    limit = _int(headers, "X-RateLimit-Limit")
    remaining = _int(headers, "X-RateLimit-Remaining")
    reset = _int(headers, "X-RateLimit-Reset")
    if limit is None and remaining is None:
        return None
    return RateLimitInfo(limit=limit, remaining=remaining, reset_at=float(reset) if reset else None)


def retry_after_of(headers: httpx.Headers) -> float | None:
    value = headers.get("Retry-After")
    if value is None:
        return None
    try:
        return max(0.0, float(value))
    except ValueError:
        return None
