"""The simulator tests' helpers and fixtures: a fake clock, in-process servers,
subprocesses.

Fixtures: ``clock`` (a FakeClock), ``sim`` (the provider simulator on that clock,
served on a local port), ``sink`` (the SMTP sink on free ports), ``provider_proc`` and
``sink_proc`` (``python -m simulator.<name>`` as a process on free ports).
"""

from __future__ import annotations

import socket
import subprocess
import sys
import time
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from aiohttp.test_utils import TestClient, TestServer

from harness.workers import free_port
from simulator.provider import STATE_KEY, ProviderConfig, ProviderState, create_app
from simulator.smtp_sink import RunningSink, SinkConfig, start_sink

ROOT = Path(__file__).resolve().parents[2]

# Not near a window boundary, so tests that stay within one second stay in one window.
T0 = 1_700_000_000.25


class FakeClock:
    """A settable stand-in for time.time()."""

    def __init__(self, now: float = T0) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += seconds


@dataclass
class Sim:
    client: TestClient[Any, Any]
    state: ProviderState
    clock: FakeClock


def wait_port(port: int, timeout: float = 15.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        with socket.socket() as s:
            if s.connect_ex(("127.0.0.1", port)) == 0:
                return
        time.sleep(0.05)
    raise TimeoutError(f"port {port} not open after {timeout}s")


@dataclass
class Proc:
    proc: subprocess.Popen[str]
    ports: tuple[int, ...]

    def stop(self) -> tuple[int, str]:
        """SIGTERM; returns (exit code, stderr)."""
        self.proc.terminate()
        _, err = self.proc.communicate(timeout=10)
        return self.proc.returncode, err


def spawn(module: str, *args: str, ports: tuple[int, ...]) -> Proc:
    proc = subprocess.Popen(
        [sys.executable, "-m", module, *args],
        cwd=ROOT,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        for port in ports:
            wait_port(port)
    except TimeoutError:
        proc.kill()
        raise
    return Proc(proc, ports)


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
