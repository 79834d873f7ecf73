"""Fixtures for the simulator tests: in-process servers and a controllable clock."""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterator

import pytest
from aiohttp.test_utils import TestClient, TestServer

from simulator.provider import STATE_KEY, ProviderConfig, create_app
from simulator.smtp_sink import RunningSink, SinkConfig, start_sink
from tests.plugins.sim import FakeClock, Proc, Sim, free_port, spawn


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock()


@pytest.fixture
async def sim(clock: FakeClock) -> AsyncIterator[Sim]:
    """The provider simulator on a fake clock, served on a real local port."""
    app = create_app(ProviderConfig(), clock=clock)
    async with TestClient(TestServer(app)) as client:
        yield Sim(client, app[STATE_KEY], clock)


@pytest.fixture
async def sink() -> AsyncIterator[RunningSink]:
    running = await start_sink(SinkConfig(), smtp_port=0, http_port=0)
    try:
        yield running
    finally:
        await running.close()


@pytest.fixture
def provider_proc() -> Iterator[Proc]:
    """``python -m simulator.provider`` on a free port."""
    port = free_port()
    proc = spawn("simulator.provider", "--port", str(port), "--quota", "1000", ports=(port,))
    yield proc
    if proc.proc.poll() is None:
        proc.stop()


@pytest.fixture
def sink_proc() -> Iterator[Proc]:
    """``python -m simulator.smtp_sink`` on free ports (smtp, http)."""
    smtp, http = free_port(), free_port()
    proc = spawn(
        "simulator.smtp_sink", "--port", str(smtp), "--http-port", str(http), ports=(smtp, http)
    )
    yield proc
    if proc.proc.poll() is None:
        proc.stop()
