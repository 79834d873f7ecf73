"""The benchmark's smoke tier needs the local stack (Kafka, registry), Debian's
redis-server and PostgreSQL 15; it starts the stack if it is not running (and then
stops it again), like tests/integration."""

from __future__ import annotations

import subprocess
import sys
from collections.abc import Iterator

import pytest

from app.settings import PROJECT_ROOT

STACK = [sys.executable, str(PROJECT_ROOT / "scripts" / "stack")]


@pytest.fixture(scope="session")
def bench_stack() -> Iterator[None]:
    running = subprocess.run([*STACK, "status"], capture_output=True).returncode == 0
    if not running:
        subprocess.run([*STACK, "up"], check=True)
    yield
    if not running:
        subprocess.run([*STACK, "down"], check=False)
