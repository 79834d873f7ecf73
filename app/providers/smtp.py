"""SMTP provider adapter (aiosmtplib) with a small pool of open connections.

RCPT/DATA replies: 5xx -> PermanentProviderError; 4xx, connection and timeout
errors -> TransientProviderError. The Message-ID is derived from the event id,
and the event id travels as ``X-Spillway-Event-Id``, so a receiving system can
spot a duplicate.

Ambiguity: once DATA has started, a timeout or a lost connection before the final
reply may follow an accepted message (RFC 5321 section 4.5.3.2.6 warns of exactly
this duplicate): such an error is ``ambiguous``. Before DATA (connect, MAIL, RCPT)
nothing can have been accepted. A message that cannot be encoded (a line break or
U+2028 in a header, a lone surrogate) is an UnsendableError, raised before any I/O.

Guarantee: SMTP has no idempotency key (``idempotency_ttl_s`` = 0).
"""

from __future__ import annotations

import asyncio
import time
from email.errors import HeaderParseError
from email.message import EmailMessage
from email.utils import formatdate
from typing import Any

import aiosmtplib
from aiosmtplib.email import flatten_message

from app.errors import PermanentProviderError, TransientProviderError, UnsendableError
from app.providers.base import OutboundEmail, SendReceipt


def build_message(email: OutboundEmail) -> EmailMessage:
    msg = EmailMessage()
    msg["From"] = email.from_address
    msg["To"] = email.to
    msg["Subject"] = email.subject
    msg["Date"] = formatdate(localtime=False)
    msg["Message-ID"] = f"<{email.event_id}@spillway>"
    msg["X-Spillway-Event-Id"] = email.event_id
    msg["X-Spillway-Priority"] = email.priority
    msg.set_content(email.text)
    msg.add_alternative(email.html, subtype="html")
    return msg


class _Client(aiosmtplib.SMTP):
    """Remembers whether DATA started for the current message."""

    data_started = False

    async def data(self, *args: Any, **kwargs: Any) -> Any:
        self.data_started = True
        return await super().data(*args, **kwargs)


def prepare(email: OutboundEmail) -> EmailMessage:
    """The message, encodable as it will be sent, or UnsendableError."""
    try:
        message = build_message(email)
        flatten_message(message)
    except (UnicodeError, ValueError, TypeError, IndexError, HeaderParseError) as exc:
        raise UnsendableError(
            f"the email cannot be encoded for SMTP: {type(exc).__name__}: {exc}"
        ) from exc
    return message


class SmtpProvider:
    idempotency_ttl_s = 0.0  # SMTP has no idempotency key

    def __init__(
        self,
        *,
        name: str,
        host: str,
        port: int,
        username: str | None = None,
        password: str | None = None,
        start_tls: bool = False,
        timeout_s: float = 10.0,
        pool_size: int = 8,
    ) -> None:
        self.name = name
        self._kw = dict(
            hostname=host,
            port=port,
            username=username,
            password=password,
            start_tls=start_tls,
            timeout=timeout_s,
        )
        self._pool: asyncio.Queue[_Client] = asyncio.Queue()
        self._slots = asyncio.Semaphore(pool_size)

    async def _acquire(self) -> _Client:
        await self._slots.acquire()
        try:
            while not self._pool.empty():
                client = self._pool.get_nowait()
                if client.is_connected:
                    return client
            client = _Client(**self._kw)  # type: ignore[arg-type]
            await client.connect()
            return client
        except BaseException:
            self._slots.release()
            raise

    def _release(self, client: _Client, healthy: bool) -> None:
        if healthy and client.is_connected:
            self._pool.put_nowait(client)
        else:
            client.close()
        self._slots.release()

    async def send(self, email: OutboundEmail) -> SendReceipt:
        started = time.perf_counter()
        message = prepare(email)
        try:
            client = await self._acquire()
        except (aiosmtplib.SMTPException, OSError) as exc:
            raise TransientProviderError(
                f"{self.name}: cannot connect: {exc}", provider=self.name
            ) from exc
        healthy = False
        client.data_started = False
        try:
            await client.send_message(message)
            healthy = True
        except aiosmtplib.SMTPRecipientsRefused as exc:
            healthy = True  # the connection is fine; the recipient is not
            code = min((r.code for r in exc.recipients), default=550)
            detail = "; ".join(f"{r.recipient}: {r.code} {r.message}" for r in exc.recipients)
            cls = PermanentProviderError if code >= 500 else TransientProviderError
            raise cls(
                f"{self.name}: recipient refused: {detail}", provider=self.name, status=code
            ) from exc
        except aiosmtplib.SMTPResponseException as exc:
            healthy = exc.code < 500 or exc.code >= 550
            cls = PermanentProviderError if exc.code >= 500 else TransientProviderError
            raise cls(
                f"{self.name}: {exc.code} {exc.message}", provider=self.name, status=exc.code
            ) from exc
        except (TimeoutError, aiosmtplib.SMTPException, OSError) as exc:
            ambiguous = client.data_started
            raise TransientProviderError(
                f"{self.name}: {type(exc).__name__}: {exc}"
                + (" (after DATA: the message may have been accepted)" if ambiguous else ""),
                provider=self.name,
                reason="provider_timeout" if isinstance(exc, TimeoutError) else None,
                ambiguous=ambiguous,
            ) from exc
        finally:
            self._release(client, healthy)
        return SendReceipt(
            provider=self.name,
            message_id=message["Message-ID"].strip("<>"),
            latency_s=time.perf_counter() - started,
        )

    async def aclose(self) -> None:
        while not self._pool.empty():
            client = self._pool.get_nowait()
            client.close()
