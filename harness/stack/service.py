"""A service of the stack: a detached process with a pid file, a log, ports, a command
line it is recognised by (recycled-pid guard) and a readiness probe."""

from __future__ import annotations

import os
import subprocess
from collections.abc import Sequence
from pathlib import Path

import httpx

from harness.stack.common import proc_cmdline, rotate
from harness.stack.config import HOST, REPO, Settings, StackError


class Service:
    name = ""

    def __init__(self, s: Settings) -> None:
        self.s = s

    # --- to override
    @property
    def ports(self) -> list[int]:
        raise NotImplementedError

    def owns(self, argv: Sequence[str]) -> bool:
        """Whether /proc/<pid>/cmdline is that of the process we start (recycled-pid guard)."""
        raise NotImplementedError

    def is_ours(self, pid: int) -> bool:
        argv = proc_cmdline(pid)
        return argv is not None and self.owns(argv)

    def command(self) -> list[str]:
        raise NotImplementedError

    def probe(self, timeout: float) -> str | None:
        """None when ready, else why not."""
        raise NotImplementedError

    def prepare(self) -> None:
        """Everything needed before the first start (fetch, format, config)."""

    def after_ready(self) -> str:
        """Post-readiness checks/setup; returns a detail for the report line."""
        return self.where()

    def where(self) -> str:
        return ""

    @property
    def log_file(self) -> Path:
        return self.s.logs / f"{self.name}.log"

    @property
    def log_files(self) -> list[Path]:
        """What `logs <service>` shows: the process's output, and any log it writes itself."""
        return [self.log_file]

    def env(self) -> dict[str, str]:
        return dict(os.environ)

    # --- common
    @property
    def pid_file(self) -> Path:
        return self.s.run / f"{self.name}.pid"

    def read_pid(self) -> int | None:
        try:
            return int(self.pid_file.read_text().strip())
        except (OSError, ValueError):
            return None

    def owned_pid(self) -> int | None:
        """Pid from the pid file if that process is alive and is what we started."""
        pid = self.read_pid()
        if pid is None:
            return None
        return pid if self.is_ours(pid) else None

    def start(self) -> subprocess.Popen[bytes]:
        self.s.logs.mkdir(parents=True, exist_ok=True)
        self.s.run.mkdir(parents=True, exist_ok=True)
        rotate(self.log_file)
        with self.log_file.open("ab") as log:
            proc = subprocess.Popen(
                self.command(),
                cwd=REPO,
                env=self.env(),
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                start_new_session=True,
                close_fds=True,
            )
        self.pid_file.write_text(f"{proc.pid}\n")
        return proc


class PythonService(Service):
    module = ""

    def owns(self, argv: Sequence[str]) -> bool:
        return "-m" in argv and self.module in argv

    def env(self) -> dict[str, str]:
        return {**os.environ, "PYTHONUNBUFFERED": "1"}

    def prepare(self) -> None:
        parts = self.module.split(".")
        base = REPO.joinpath(*parts)
        if not (base.with_suffix(".py").is_file() or (base / "__main__.py").is_file()):
            raise StackError(f"module {self.module} not found in {REPO} (not written yet?)")

    def _health(self, port: int, timeout: float) -> str | None:
        try:
            r = httpx.get(f"http://{HOST}:{port}/health", timeout=timeout)
        except httpx.HTTPError as exc:
            return f"GET :{port}/health: {exc.__class__.__name__}"
        return None if r.status_code == 200 else f"GET :{port}/health -> {r.status_code}"
