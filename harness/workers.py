"""Start and stop stage workers (``faust -A app worker``) as child processes."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from collections import Counter
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path

from app.settings import PROJECT_ROOT


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


#: Stages that fill Kafka run at a lower CPU priority when every stage shares one
#: machine (the demo, the benchmark): dispatch keeps the provider's pace (issue 14).
FILLING_STAGES_NICE = {"render": 10, "route": 10}


def one_host_env(stage: str) -> dict[str, str]:
    """Extra settings of ``stage``'s worker when all stages share one machine."""
    nice = FILLING_STAGES_NICE.get(stage, 0)
    return {"SPILLWAY_WORKER_NICE": str(nice)} if nice else {}


@dataclass
class Worker:
    stage: str
    env: dict[str, str]
    log_path: Path
    proc: subprocess.Popen[bytes] | None = None

    @property
    def web_url(self) -> str:
        return f"http://127.0.0.1:{self.env['SPILLWAY_WEB_PORT']}"

    def start(self) -> None:
        log = self.log_path.open("ab")
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "faust", "-A", "app", "worker", "-l", "info"],
            cwd=PROJECT_ROOT,
            env=self.env,
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
        log.close()

    def alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def stop(self, sig: int = signal.SIGTERM, timeout: float = 20.0) -> None:
        if not self.alive():
            return
        assert self.proc is not None
        self.proc.send_signal(sig)
        try:
            self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait(10)

    def kill(self) -> None:
        self.stop(signal.SIGKILL)


@dataclass
class Workers:
    """One worker per stage, sharing ``overrides`` (SPILLWAY_* settings)."""

    overrides: Mapping[str, str]
    log_dir: Path
    workers: list[Worker] = field(default_factory=list)

    def add(self, stage: str, **extra: str) -> Worker:
        env = {
            **os.environ,
            **self.overrides,
            **extra,
            "SPILLWAY_STAGE": stage,
            "SPILLWAY_WEB_PORT": str(free_port()),
        }
        self.log_dir.mkdir(parents=True, exist_ok=True)
        n = sum(w.stage == stage for w in self.workers)
        worker = Worker(stage, env, self.log_dir / f"worker-{stage}-{n}.log")
        worker.start()
        self.workers.append(worker)
        return worker

    def wait_ready(self, bootstrap: str, app_id_prefix: str, timeout: float = 60.0) -> bool:
        """Wait until every stage's consumer group is stable with all its members."""
        from confluent_kafka import ConsumerGroupState
        from confluent_kafka.admin import AdminClient

        admin = AdminClient({"bootstrap.servers": bootstrap})
        wanted = Counter(w.stage for w in self.workers if w.stage != "intake" and w.alive())
        groups = [f"{app_id_prefix}-{stage}" for stage in wanted]

        def ready() -> bool:
            self.check_alive()
            futures = admin.describe_consumer_groups(groups, request_timeout=5)
            for stage, future in zip(wanted, futures.values(), strict=True):
                try:
                    desc = future.result()
                except Exception:
                    return False
                if desc.state != ConsumerGroupState.STABLE or len(desc.members) < wanted[stage]:
                    return False
            return True

        return wait_until(ready, timeout, interval=0.5)

    def check_alive(self) -> None:
        for w in self.workers:
            if (
                w.proc is not None
                and w.proc.poll() is not None
                and w.proc.returncode
                not in (
                    0,
                    -signal.SIGKILL,
                    -signal.SIGTERM,
                )
            ):
                tail = w.log_path.read_text(errors="replace")[-3000:]
                raise RuntimeError(f"{w.stage} worker exited with {w.proc.returncode}:\n{tail}")

    def stop(self) -> None:
        for w in self.workers:
            w.stop()

    def __enter__(self) -> Workers:
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()


def wait_until(predicate: Callable[[], bool], timeout: float, interval: float = 0.2) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(interval)
    return False
