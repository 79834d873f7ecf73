"""The provider interface every adapter implements."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol


@dataclass(frozen=True, slots=True)
class OutboundEmail:
    """What an adapter needs to send one email."""

    event_id: str  # also the provider idempotency key
    to: str
    from_address: str
    subject: str
    html: str
    text: str
    priority: str
    source: str
    template: str
    template_version: str


@dataclass(frozen=True, slots=True)
class RateLimitInfo:
    """The provider's own view of our quota, from X-RateLimit-* headers."""

    limit: int | None
    remaining: int | None
    reset_at: float | None  # unix seconds


@dataclass(frozen=True, slots=True)
class SendReceipt:
    provider: str
    message_id: str
    latency_s: float
    rate_limit: RateLimitInfo | None = None
    replayed: bool = False  # the provider had already accepted this idempotency key


class Provider(Protocol):
    """Sends one email or raises an :class:`app.errors.ProviderError` subclass."""

    name: str

    async def send(self, email: OutboundEmail) -> SendReceipt: ...

    async def aclose(self) -> None: ...
