"""Helpers shared by the simulator tests: a fake clock, in-process servers, subprocesses."""

from __future__ import annotations

import socket
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from aiohttp.test_utils import TestClient

from simulator.provider import ProviderState

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


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


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
