"""The benchmark's own processes (provider simulator, Redis, PostgreSQL, peer
workers) and a resource sampler (peak RSS, CPU seconds per process tree)."""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import subprocess
import tempfile
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import psutil

from app.settings import PROJECT_ROOT
from harness.workers import free_port, wait_until
from simulator.client import SyncSimulatorClient, provider_command

PG_BIN = Path("/usr/lib/postgresql/15/bin")


def spawn(
    args: list[str], log: Path, env: dict[str, str] | None = None, user: str | None = None
) -> subprocess.Popen[bytes]:
    log.parent.mkdir(parents=True, exist_ok=True)
    with log.open("ab") as out:
        return subprocess.Popen(
            ["runuser", "-u", user, "--", *args] if user else args,
            cwd=PROJECT_ROOT,
            env=env if env is not None else dict(os.environ),
            stdout=out,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )


def stop(proc: subprocess.Popen[bytes] | None, timeout: float = 15.0) -> None:
    if proc is None or proc.poll() is not None:
        return
    proc.send_signal(signal.SIGTERM)
    try:
        proc.wait(timeout)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait(10)


class Simulator:
    """A provider simulator of the benchmark's own (unlimited, or ``quota`` per s)."""

    def __init__(self, log_dir: Path, quota: int | None = None) -> None:
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        args = provider_command(self.port, *(["--quota", str(quota)] if quota else []))
        self.proc = spawn(args, log_dir / f"simulator-{self.port}.log")
        self.client = SyncSimulatorClient(self.url, timeout=120)
        self.client.wait_ready(timeout=20)

    def accepted(self) -> int:
        return int(self.client.stats(series=False)["accepted"])

    def entries(self) -> list[dict[str, Any]]:
        return list(self.client.ledger(limit=10_000_000)["entries"])

    def close(self) -> None:
        self.client.close()
        stop(self.proc)


class Redis:
    def __init__(self, log_dir: Path) -> None:
        self.port = free_port()
        self.url = f"redis://127.0.0.1:{self.port}/0"
        self.proc = spawn(
            [
                "redis-server",
                "--port",
                str(self.port),
                "--bind",
                "127.0.0.1",
                "--save",
                "",
                "--appendonly",
                "no",
                "--daemonize",
                "no",
            ],
            log_dir / f"redis-{self.port}.log",
        )
        import redis

        client = redis.Redis.from_url(self.url)

        def up() -> bool:
            try:
                return bool(client.ping())
            except redis.RedisError:
                return False

        if not wait_until(up, 20):
            raise RuntimeError("redis-server did not start")
        client.close()

    def close(self) -> None:
        stop(self.proc)


class Postgres:
    """A throwaway cluster: initdb in a temp dir, run as the ``postgres`` user."""

    def __init__(self, log_dir: Path) -> None:
        self.port = free_port()
        self.dir = Path(tempfile.mkdtemp(prefix="bench-pg-"))
        shutil.chown(self.dir, "postgres", "postgres")
        data, sock = self.dir / "data", self.dir
        run = ["runuser", "-u", "postgres", "--"]
        subprocess.run(
            [
                *run,
                str(PG_BIN / "initdb"),
                "-D",
                str(data),
                "-A",
                "trust",
                "-U",
                "postgres",
                "--no-sync",
            ],
            check=True,
            capture_output=True,
        )
        # Throughput settings for a throwaway benchmark cluster (as queue libraries'
        # docs suggest for tests): no fsync wait; the rest is stock.
        self.proc = spawn(
            [
                str(PG_BIN / "postgres"),
                "-D",
                str(data),
                "-p",
                str(self.port),
                "-k",
                str(sock),
                "-c",
                "listen_addresses=",
                "-c",
                "synchronous_commit=off",
                "-c",
                "max_connections=50",
            ],
            log_dir / f"postgres-{self.port}.log",
            user="postgres",
        )
        self.dsn = f"host={sock} port={self.port} user=postgres dbname=postgres"
        import psycopg

        def up() -> bool:
            try:
                psycopg.connect(self.dsn, connect_timeout=2).close()
                return True
            except psycopg.Error:
                return False

        if not wait_until(up, 30, interval=0.3):
            raise RuntimeError("postgres did not start")

    def server_pid(self) -> int:
        return self.proc.pid

    def close(self) -> None:
        if self.proc.poll() is None:
            # runuser forwards SIGTERM to postgres: a "smart" shutdown; SIGINT is "fast"
            os.killpg(self.proc.pid, signal.SIGINT)
            try:
                self.proc.wait(20)
            except subprocess.TimeoutExpired:
                os.killpg(self.proc.pid, signal.SIGKILL)
                self.proc.wait(10)
        shutil.rmtree(self.dir, ignore_errors=True)


@dataclass
class Usage:
    peak_rss_mb: float = 0.0
    cpu_s: float = 0.0


def _tree(pid: int) -> list[psutil.Process]:
    try:
        root = psutil.Process(pid)
        return [root, *root.children(recursive=True)]
    except psutil.Error:
        return []


def _cpu(procs: list[psutil.Process]) -> float:
    total = 0.0
    for p in procs:
        try:
            t = p.cpu_times()
            total += t.user + t.system
        except psutil.Error:
            pass
    return total


@dataclass
class Sampler:
    """Samples the RSS of named process trees every ``every`` s (peak kept) and their
    CPU seconds from ``start()`` to the last sample before ``stop()``."""

    pids: dict[str, int]
    every: float = 0.25
    usage: dict[str, Usage] = field(default_factory=dict)
    _cpu0: dict[str, float] = field(default_factory=dict)
    _stop: threading.Event = field(default_factory=threading.Event)
    _thread: threading.Thread | None = None

    def start(self) -> Sampler:
        for name, pid in self.pids.items():
            self.usage[name] = Usage()
            self._cpu0[name] = _cpu(_tree(pid))
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()
        return self

    def sample(self) -> None:
        for name, pid in self.pids.items():
            procs = _tree(pid)
            rss = 0
            for p in procs:
                with contextlib.suppress(psutil.Error):
                    rss += p.memory_info().rss
            u = self.usage[name]
            u.peak_rss_mb = max(u.peak_rss_mb, rss / 2**20)
            if procs:
                u.cpu_s = max(u.cpu_s, _cpu(procs) - self._cpu0[name])

    def _run(self) -> None:
        while not self._stop.is_set():
            self.sample()
            time.sleep(self.every)

    def stop(self) -> dict[str, Usage]:
        self.sample()
        self._stop.set()
        if self._thread:
            self._thread.join(5)
        return self.usage


def broker_pid(port: int = 9092) -> int | None:
    """The process listening on the Kafka port (the local stack's broker)."""
    for conn in psutil.net_connections("tcp"):
        if conn.status == psutil.CONN_LISTEN and conn.laddr and conn.laddr.port == port:
            return conn.pid
    return None


class Profiler:
    """py-spy attached to running workers; on stop, each writes collapsed stacks
    (``<name>.folded``, one line per stack with its sample count) and a summary of
    the hottest functions (``<name>.top.txt``)."""

    def __init__(self, pids: dict[str, int], out_dir: Path, rate: int = 97) -> None:
        exe = shutil.which("py-spy")
        if exe is None:
            raise RuntimeError("py-spy is not installed: pip install py-spy")
        out_dir.mkdir(parents=True, exist_ok=True)
        self.out_dir = out_dir
        self.procs = {
            name: spawn(
                [
                    exe,
                    "record",
                    "--pid",
                    str(pid),
                    "--rate",
                    str(rate),
                    "--nonblocking",
                    "--format",
                    "raw",
                    "--output",
                    str(out_dir / f"{name}.folded"),
                ],
                out_dir / f"{name}.py-spy.log",
            )
            for name, pid in pids.items()
        }

    def stop(self) -> list[Path]:
        for proc in self.procs.values():
            if proc.poll() is None:
                proc.send_signal(signal.SIGINT)  # py-spy writes its output on SIGINT
        written = []
        for name, proc in self.procs.items():
            with contextlib.suppress(subprocess.TimeoutExpired):
                proc.wait(30)
            folded = self.out_dir / f"{name}.folded"
            if folded.exists():
                (self.out_dir / f"{name}.top.txt").write_text(hottest(folded))
                written.append(folded)
        return written


def hottest(folded: Path, limit: int = 40) -> str:
    """Functions by inclusive share of samples (a function counts once per stack), then
    by own share (samples where it was the innermost frame)."""
    inclusive: dict[str, int] = {}
    own: dict[str, int] = {}
    total = 0
    for line in folded.read_text(errors="replace").splitlines():
        stack, _, count = line.rpartition(" ")
        if not stack or not count.isdigit():
            continue
        n = int(count)
        total += n
        frames = stack.split(";")
        for frame in set(frames):
            inclusive[frame] = inclusive.get(frame, 0) + n
        own[frames[-1]] = own.get(frames[-1], 0) + n
    total = max(total, 1)
    lines = [f"{total} samples", "", "inclusive %  own %  function"]
    for frame, n in sorted(inclusive.items(), key=lambda kv: -kv[1])[:limit]:
        lines.append(f"{100 * n / total:10.1f}  {100 * own.get(frame, 0) / total:5.1f}  {frame}")
    lines += ["", "own %  function"]
    for frame, n in sorted(own.items(), key=lambda kv: -kv[1])[:limit]:
        lines.append(f"{100 * n / total:5.1f}  {frame}")
    return "\n".join(lines) + "\n"
