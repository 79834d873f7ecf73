"""HTTP provider adapter shaped like SendGrid v3 Mail Send (``POST /v3/mail/send``).

Status mapping (SendGrid's documented codes):
  2xx accepted (a missing ``X-Message-Id`` is accepted with the id empty: the stage
  counts it); 400/403/413 -> PermanentProviderError (the message is rejected);
  401 -> TransientProviderError (our credentials: a provider-wide fault, not the
  message's); 409 -> ConflictError (Resend's documented meaning: a request with
  this idempotency key is in progress or was accepted), or PermanentProviderError
  ``idempotency_conflict`` when the body says the key was used for another payload;
  429 -> ThrottledError with Retry-After (parsed strictly, app/providers/headers.py);
  5xx and other answers -> TransientProviderError (an answer: not accepted).
No answer: a failure to connect proves nothing was sent; anything after the request
may have gone out (read timeout, connection reset or closed before the answer) is
``ambiguous``. A request the client cannot encode (a non-ASCII event id in the
``Idempotency-Key`` header, a lone surrogate in the body) is an UnsendableError of
that message, raised before any I/O.

Guarantee (``idempotency_ttl_s``): SendGrid v3 honours no idempotency key, so this
adapter declares 0 unless configured otherwise (a Resend-like endpoint: 86400).
The event id still goes out as ``Idempotency-Key`` and in ``custom_args``.
"""

from __future__ import annotations

import time
from email.utils import parseaddr
from typing import Any

import aiohttp
import httpx
from httpx_aiohttp import HttpxAiohttpClient

from app.errors import (
    ConflictError,
    PermanentProviderError,
    ThrottledError,
    TransientProviderError,
    UnsendableError,
)
from app.providers.base import OutboundEmail, RateLimitInfo, SendReceipt
from app.providers.headers import non_negative_int, rate_limit_reset_at, retry_after_s

#: SendGrid v3 Mail Send honours no idempotency key.
DEFAULT_IDEMPOTENCY_TTL_S = 0.0
#: Longest message id kept; a longer or non-printable X-Message-Id counts as missing.
MAX_MESSAGE_ID = 256


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
        idempotency_ttl_s: float | None = None,
    ) -> None:
        self.name = name
        self.idempotency_ttl_s = (
            DEFAULT_IDEMPOTENCY_TTL_S if idempotency_ttl_s is None else idempotency_ttl_s
        )
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
            request = self._client.build_request(
                "POST",
                "/v3/mail/send",
                json=request_body(email),
                headers={"Idempotency-Key": email.event_id},
            )
        except (UnicodeError, ValueError, TypeError) as exc:
            raise UnsendableError(
                f"{self.name}: the email cannot be encoded as a request: {type(exc).__name__}"
            ) from exc
        try:
            resp = await self._client.send(request)
        except httpx.HTTPError as exc:
            sent = not _not_sent(exc)
            timeout = isinstance(exc, httpx.TimeoutException)
            raise TransientProviderError(
                f"{self.name}: {type(exc).__name__}: {exc}"
                + (" (the request may have been accepted)" if sent else " (nothing sent)"),
                provider=self.name,
                reason="provider_timeout" if timeout else None,
                ambiguous=sent,
            ) from exc
        latency = time.perf_counter() - started
        status = resp.status_code
        now = time.time()
        if 200 <= status < 300:
            return SendReceipt(
                provider=self.name,
                message_id=message_id_of(resp.headers.get("X-Message-Id")),
                latency_s=latency,
                rate_limit=rate_limit_of(resp.headers, now),
                replayed=resp.headers.get("Idempotent-Replayed") == "true",
            )
        detail = error_detail(resp)
        if status == 429:
            wait = retry_after_s(resp.headers.get("Retry-After"), now)
            if wait is None:  # no usable Retry-After: the reset time, if it is one
                reset = rate_limit_reset_at(resp.headers.get("X-RateLimit-Reset"), now)
                wait = None if reset is None else max(0.0, reset - now)
            raise ThrottledError(
                f"{self.name}: throttled (429): {detail}", provider=self.name, retry_after=wait
            )
        if status == 409:
            if "invalid_idempotent_request" in detail or "invalid_idempotent_request" in resp.text:
                raise PermanentProviderError(
                    f"{self.name}: idempotency key used for another payload (409): {detail}",
                    provider=self.name,
                    status=status,
                    reason="idempotency_conflict",
                )
            raise ConflictError(
                f"{self.name}: a request with this idempotency key exists (409): {detail}",
                provider=self.name,
                status=status,
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


def _not_sent(exc: httpx.HTTPError) -> bool:
    """True only when the error proves no request reached the provider: the
    connection was never made. httpx_aiohttp maps aiohttp's errors coarsely (a server
    that closed the connection after reading the request becomes ConnectTimeout), so
    the aiohttp cause decides when there is one."""
    cause = exc.__cause__
    if isinstance(cause, aiohttp.ClientError | TimeoutError):
        return isinstance(cause, aiohttp.ClientConnectorError | aiohttp.ConnectionTimeoutError)
    return isinstance(exc, httpx.ConnectError | httpx.ConnectTimeout)


def message_id_of(value: str | None) -> str:
    """The provider's message id, or "" when it is missing or not a sane token."""
    if value is None:
        return ""
    value = value.strip()
    if len(value) > MAX_MESSAGE_ID or not value.isprintable() or not value.isascii():
        return ""
    return value


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


def rate_limit_of(headers: httpx.Headers, now: float) -> RateLimitInfo | None:
    limit = non_negative_int(headers.get("X-RateLimit-Limit"))
    remaining = non_negative_int(headers.get("X-RateLimit-Remaining"))
    if limit is None and remaining is None:
        return None
    reset_at = rate_limit_reset_at(headers.get("X-RateLimit-Reset"), now)
    return RateLimitInfo(limit=limit, remaining=remaining, reset_at=reset_at)


def retry_after_of(headers: httpx.Headers) -> float | None:
    """Retry-After in seconds from now (strict RFC 9110; None: absent or unusable)."""
    return retry_after_s(headers.get("Retry-After"), time.time())
