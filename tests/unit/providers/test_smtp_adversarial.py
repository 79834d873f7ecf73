"""SmtpProvider against a raw asyncio SMTP server that misbehaves at each step."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from typing import Any

import pytest

from app.errors import PermanentProviderError, TransientProviderError, UnsendableError
from app.providers.base import OutboundEmail
from app.providers.smtp import SmtpProvider, prepare


def email(**over: Any) -> OutboundEmail:
    fields: dict[str, Any] = dict(
        event_id="e-1",
        to="a@b.example",
        from_address="Sender <s@b.example>",
        subject="s",
        html="<p>h</p>",
        text="h",
        priority="normal",
        source="src",
        template="t",
        template_version="v1",
    )
    fields.update(over)
    return OutboundEmail(**fields)


@dataclass
class SmtpAdversary:
    """``at``: the step that misbehaves (``mail``, ``data``, ``end``: after the message
    body); ``how``: ``hang``, ``close`` or a reply like ``451 try later``."""

    at: str
    how: str
    bodies: int = 0  # messages whose body was fully received
    server: Any = None
    port: int = 0
    writers: list[asyncio.StreamWriter] = field(default_factory=list)

    async def start(self) -> None:
        self.server = await asyncio.start_server(self._conn, "127.0.0.1", 0)
        self.port = self.server.sockets[0].getsockname()[1]

    async def stop(self) -> None:
        for w in self.writers:
            w.close()
        self.server.close()
        await self.server.wait_closed()

    async def _misbehave(self, writer: asyncio.StreamWriter) -> bool:
        if self.how == "hang":
            await asyncio.Event().wait()
        if self.how == "close":
            writer.transport.abort()
            return True
        writer.write(f"{self.how}\r\n".encode())
        return False

    async def _conn(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.writers.append(writer)
        try:
            writer.write(b"220 adversary\r\n")
            while line := await reader.readline():
                cmd = line.decode("latin-1").strip().upper()
                if cmd.startswith(("EHLO", "HELO")):
                    writer.write(b"250 adversary\r\n")
                elif cmd.startswith("MAIL"):
                    if self.at == "mail" and await self._misbehave(writer):
                        return
                    if self.at != "mail":
                        writer.write(b"250 ok\r\n")
                elif cmd.startswith("RCPT"):
                    writer.write(b"250 ok\r\n")
                elif cmd == "DATA":
                    if self.at == "data" and await self._misbehave(writer):
                        return
                    if self.at == "data":
                        continue
                    writer.write(b"354 go on\r\n")
                    while (await reader.readline()) not in (b".\r\n", b""):
                        pass
                    self.bodies += 1
                    if self.at == "end" and await self._misbehave(writer):
                        return
                    if self.at != "end":
                        writer.write(b"250 queued\r\n")
                elif cmd == "QUIT":
                    writer.write(b"221 bye\r\n")
                    return
                else:
                    writer.write(b"250 ok\r\n")
                await writer.drain()
        except (ConnectionError, asyncio.CancelledError):
            pass


@pytest.fixture
async def servers() -> AsyncIterator[list[SmtpAdversary]]:
    made: list[SmtpAdversary] = []
    yield made
    for s in made:
        await s.stop()


async def send_to(servers: list[SmtpAdversary], at: str, how: str) -> Exception:
    adv = SmtpAdversary(at, how)
    await adv.start()
    servers.append(adv)
    provider = SmtpProvider(name="smtp", host="127.0.0.1", port=adv.port, timeout_s=0.5)
    try:
        await asyncio.wait_for(provider.send(email()), 10)
    except Exception as exc:
        return exc
    finally:
        await provider.aclose()
    raise AssertionError("the send succeeded")


@pytest.mark.parametrize("how", ["hang", "close"])
async def test_a_lost_answer_after_the_message_is_ambiguous(
    servers: list[SmtpAdversary], how: str
) -> None:
    exc = await send_to(servers, "end", how)
    assert isinstance(exc, TransientProviderError) and exc.ambiguous
    assert servers[0].bodies == 1  # the server had the whole message


@pytest.mark.parametrize("how", ["hang", "close"])
async def test_a_failure_before_data_is_not_ambiguous(
    servers: list[SmtpAdversary], how: str
) -> None:
    exc = await send_to(servers, "mail", how)
    assert isinstance(exc, TransientProviderError) and not exc.ambiguous
    assert servers[0].bodies == 0


@pytest.mark.parametrize(
    ("reply", "cls"),
    [("451 try later", TransientProviderError), ("554 no", PermanentProviderError)],
)
async def test_a_reply_after_the_message_is_an_answer(
    servers: list[SmtpAdversary], reply: str, cls: type[Exception]
) -> None:
    exc = await send_to(servers, "end", reply)
    assert type(exc) is cls and not getattr(exc, "ambiguous", False)


@pytest.mark.parametrize(
    "over",
    [
        {"from_address": "Sender\u2028Name <s@b.example>"},
        {"from_address": "Sender\nBcc: x@evil.example <s@b.example>"},
        {"subject": "hi\r\nBcc: x@evil.example"},
        {"text": "lone \ud800 surrogate"},
    ],
)
def test_an_unencodable_message_is_the_messages_fault(over: dict[str, str]) -> None:
    with pytest.raises(UnsendableError) as info:
        prepare(email(**over))
    assert info.value.reason == "invalid_header" and not info.value.retriable
