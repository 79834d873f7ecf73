"""A real intake (app.intake.IntakeService on aiohttp, 127.0.0.1:<ephemeral>) for the
unit tests: the sink keeps what would be appended and acknowledges at once.

Fixture: ``serve`` (``await serve(sink=None, **settings)`` -> a Served intake; all are
closed at the end of the test)."""

from __future__ import annotations

import asyncio
import contextlib
import io
from collections.abc import AsyncIterator, Awaitable, Callable
from types import SimpleNamespace
from typing import Any

import aiohttp
import pytest
from aiohttp import web
from aiohttp.test_utils import TestServer

from app.intake import IntakeService, web_app
from app.settings import Settings

MAX_RECORD = 1_000_000  # Faust's default producer_max_request_size


class MemorySink:
    """Acknowledges every record at once and keeps it."""

    topic = "email.raw-events"

    def __init__(self, max_record_bytes: int = MAX_RECORD) -> None:
        self.max_record_bytes = max_record_bytes
        self.records: list[tuple[bytes | None, bytes, list[tuple[str, bytes]]]] = []
        #: The priority topic each record went to (None: the catch-all), issue 14.
        self.priorities: list[str | None] = []

    async def send(
        self,
        key: bytes | None,
        value: bytes,
        headers: list[tuple[str, bytes]],
        priority: str | None = None,
    ) -> Awaitable[Any]:
        self.records.append((key, value, headers))
        self.priorities.append(priority)
        future = asyncio.get_running_loop().create_future()
        offset = len(self.records) - 1
        future.set_result(SimpleNamespace(topic=self.topic, partition=0, offset=offset))
        return future


class Served:
    """One intake on 127.0.0.1:<ephemeral> plus what it did."""

    def __init__(self, server: TestServer, sink: MemorySink, answered: list[int]) -> None:
        self.server, self.sink, self.answered = server, sink, answered
        self.url = str(server.make_url(""))
        self.port = server.port
        assert self.port is not None

    async def post(
        self, path: str, data: Any, headers: dict[str, str] | None = None
    ) -> tuple[int, dict[str, Any]]:
        async with (
            aiohttp.ClientSession() as session,
            session.post(
                f"{self.url}{path}",
                data=io.BytesIO(data) if isinstance(data, bytes) else data,
                headers={"content-type": "application/json", **(headers or {})},
            ) as r,
        ):
            assert r.content_type == "application/json"
            return r.status, await r.json()

    async def raw(self, request: bytes, then: bytes = b"", pause: float = 0.0) -> bytes:
        """Send ``request`` over a socket, optionally ``then`` after ``pause`` seconds,
        and read the answer (its head and Content-Length bytes)."""
        reader, writer = await asyncio.open_connection("127.0.0.1", self.port)
        try:
            writer.write(request)
            await writer.drain()
            if then:
                await asyncio.sleep(pause)
                writer.write(then)
                await writer.drain()
            return await asyncio.wait_for(read_answer(reader), timeout=30)
        finally:
            writer.close()

    async def wait_answered(self, n: int, within_s: float = 10.0) -> None:
        async with asyncio.timeout(within_s):
            while len(self.answered) < n:  # noqa: ASYNC110 (a deadline-bounded poll)
                await asyncio.sleep(0.01)


Serve = Callable[..., Awaitable[Served]]


@contextlib.asynccontextmanager
async def intakes() -> AsyncIterator[Serve]:
    """``start(sink=None, **settings)`` -> a Served intake; all closed at the end."""
    servers: list[TestServer] = []

    async def start(sink: MemorySink | None = None, **overrides: Any) -> Served:
        settings = Settings(**{"intake_auth": "off", **overrides})
        sink = sink or MemorySink()
        service = IntakeService(settings, sink)
        answered: list[int] = []  # statuses; 0: cancelled (the client went away)

        @web.middleware
        async def record(request: web.Request, handler: Any) -> web.StreamResponse:
            try:
                response: web.StreamResponse = await handler(request)
            except asyncio.CancelledError:  # aiohttp cancels a handler whose client left
                answered.append(0)
                raise
            answered.append(response.status)
            return response

        application = web_app(service)
        application.middlewares.append(record)
        server = TestServer(application, host="127.0.0.1", port=0)
        await server.start_server()
        servers.append(server)
        return Served(server, sink, answered)

    try:
        yield start
    finally:
        for server in servers:
            await server.close()



async def read_answer(reader: asyncio.StreamReader) -> bytes:
    head = await reader.readuntil(b"\r\n\r\n")
    length = next(
        int(line.split(b":")[1])
        for line in head.split(b"\r\n")
        if line.lower().startswith(b"content-length:")
    )
    return head + await reader.readexactly(length)


@pytest.fixture
async def serve() -> AsyncIterator[Serve]:
    async with intakes() as start:
        yield start
