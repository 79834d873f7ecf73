"""A real ``faust -A app worker`` listens on 127.0.0.1 only (issue 15 point 4: workers
bound 0.0.0.0 although SPILLWAY_WEB_HOST defaults to 127.0.0.1). The listening
socket is read from /proc/net/tcp, as the kernel has it."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import time
import uuid
from pathlib import Path

import httpx
import pytest

from app.settings import PROJECT_ROOT
from harness.workers import free_port

pytestmark = [
    pytest.mark.integration,
    pytest.mark.skipif(not Path("/proc/net/tcp").exists(), reason="needs Linux /proc"),
]


def listeners(port: int) -> set[str]:
    """Local addresses of the sockets LISTENing on ``port`` (IPv4 and IPv6)."""
    found: set[str] = set()
    for table, width in (("/proc/net/tcp", 8), ("/proc/net/tcp6", 32)):
        path = Path(table)
        if not path.exists():
            continue
        for line in path.read_text().splitlines()[1:]:
            fields = line.split()
            local, state = fields[1], fields[3]
            addr, _, hexport = local.partition(":")
            if state != "0A" or int(hexport, 16) != port:  # 0A: LISTEN
                continue
            raw = bytes.fromhex(addr)
            if width == 8:
                found.add(socket.inet_ntop(socket.AF_INET, raw[::-1]))
            else:  # four little-endian 32-bit words
                words = b"".join(raw[i : i + 4][::-1] for i in range(0, 16, 4))
                found.add(socket.inet_ntop(socket.AF_INET6, words))
    return found


@pytest.mark.parametrize("web_host", [None, "0.0.0.0"])
def test_a_worker_binds_what_spillway_web_host_says(stack: None, web_host: str | None) -> None:
    ns = f"t{uuid.uuid4().hex[:8]}"
    port = free_port()
    env = {
        **{k: v for k, v in os.environ.items() if k != "SPILLWAY_WEB_HOST"},
        "SPILLWAY_STAGE": "analyser",
        "SPILLWAY_TOPIC_NAMESPACE": f"{ns}.",
        "SPILLWAY_APP_ID_PREFIX": ns,
        "SPILLWAY_WEB_PORT": str(port),
        "SPILLWAY_DATA_DIR": str(PROJECT_ROOT / "var" / "test-faust" / ns),
    }
    if web_host is not None:
        env["SPILLWAY_WEB_HOST"] = web_host
    proc = subprocess.Popen(
        [sys.executable, "-m", "faust", "-A", "app", "worker", "-l", "warn"],
        cwd=PROJECT_ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
        text=True,
    )  # fmt: skip
    try:
        deadline = time.monotonic() + 90
        healthy = False
        while not healthy and time.monotonic() < deadline and proc.poll() is None:
            try:
                healthy = httpx.get(f"http://127.0.0.1:{port}/health", timeout=2).is_success
            except httpx.HTTPError:
                time.sleep(0.5)
        assert healthy, "the worker's web server never answered on 127.0.0.1"
        bound = listeners(port)
        if web_host is None:
            assert bound == {"127.0.0.1"}, bound
        else:
            assert bound == {"0.0.0.0"}, bound
    finally:
        proc.terminate()
        try:
            proc.communicate(timeout=30)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.communicate(timeout=10)
