"""A private Kafka broker + Schema Registry for the chaos suite, on ports of its own.

It is ``scripts/stack`` run with ``SPILLWAY_STACK_DIR`` and the ``SPILLWAY_STACK_*_PORT``
variables pointing elsewhere: its own data dir (Kafka data, logs, pid files), the jars and
JVM caches of the shared stack dir linked in (no second download). Killing this broker
never touches the shared one (``scripts/stack`` finds its processes by their own
``server.properties`` path and pid files).
"""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
from pathlib import Path

from app.settings import PROJECT_ROOT
from harness.workers import free_port

STACK = [sys.executable, str(PROJECT_ROOT / "scripts" / "stack")]
SHARED_PARTS = ("lib", "dist", "apicurio", "cache")  # read-only parts linked from the shared dir


def shared_stack_dir() -> Path:
    raw = os.environ.get("SPILLWAY_STACK_DIR", "").strip()
    root = Path(raw) if raw else Path(".stack")
    return (root if root.is_absolute() else PROJECT_ROOT / root).resolve()


class PrivateStack:
    """``up()`` starts Kafka and the registry under ``root``; ``kill_broker()`` SIGKILLs the
    broker; ``start_broker()`` starts it again on the same data; ``down()`` stops and wipes."""

    def __init__(self, root: Path) -> None:
        self.root = root.resolve()
        self.kafka_port = free_port()
        self.registry_port = free_port()
        self.env = {
            **os.environ,
            "SPILLWAY_STACK_DIR": str(self.root),
            "SPILLWAY_STACK_KAFKA_PORT": str(self.kafka_port),
            "SPILLWAY_STACK_KAFKA_CONTROLLER_PORT": str(free_port()),
            "SPILLWAY_STACK_REGISTRY_PORT": str(self.registry_port),
            "SPILLWAY_STACK_REGISTRY_MGMT_PORT": str(free_port()),
            "SPILLWAY_STACK_SIM_PORT": str(free_port()),
            "SPILLWAY_STACK_SMTP_PORT": str(free_port()),
            "SPILLWAY_STACK_SMTP_HTTP_PORT": str(free_port()),
        }

    @property
    def bootstrap(self) -> str:
        return f"127.0.0.1:{self.kafka_port}"

    @property
    def registry_url(self) -> str:
        return f"http://127.0.0.1:{self.registry_port}/apis/ccompat/v7"

    def _stack(self, *args: str, check: bool = True) -> None:
        log = self.root / "stack-commands.log"
        with log.open("ab") as out:
            proc = subprocess.run(
                [*STACK, *args], env=self.env, stdout=out, stderr=subprocess.STDOUT
            )
        if check and proc.returncode != 0:
            raise RuntimeError(f"scripts/stack {' '.join(args)} failed; see {log}")

    def up(self) -> None:
        self.root.mkdir(parents=True, exist_ok=True)
        shared = shared_stack_dir()
        for part in SHARED_PARTS:
            link, target = self.root / part, shared / part
            if target.exists() and not link.exists():
                link.symlink_to(target, target_is_directory=True)
        self._stack("up", "--only", "kafka,registry", "--timeout", "180")

    def broker_pid(self) -> int | None:
        try:
            return int((self.root / "run" / "kafka.pid").read_text().strip())
        except (OSError, ValueError):
            return None

    def kill_broker(self) -> int:
        pid = self.broker_pid()
        if pid is None:
            raise RuntimeError("the private broker has no pid file")
        os.kill(pid, signal.SIGKILL)
        return pid

    def start_broker(self) -> None:
        self._stack("up", "--only", "kafka", "--timeout", "180")

    def down(self) -> None:
        self._stack("down", "--only", "kafka,registry", "--wipe", check=False)
        for part in SHARED_PARTS:
            link = self.root / part
            if link.is_symlink():
                link.unlink()
        shutil.rmtree(self.root / "kafka", ignore_errors=True)
