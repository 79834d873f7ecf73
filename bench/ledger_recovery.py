"""How long a dispatch worker takes to recover a sent-ledger of N keys (issue 12 pt 8).

Fills the sent-ledger's changelog with N entries (as dispatch writes them), then starts
a real dispatch worker (``faust -A app worker``) three times against it and reads, from
its log, how long the table recovery took and when the worker was ready:

- ``cold-memory``: store ``memory://``: every start replays the whole changelog;
- ``cold-rocksdb``: store ``rocksdb://`` (rocksdict) with an empty data dir: the same
  replay, also written to the local RocksDB;
- ``warm-rocksdb``: the same data dir again, after 1,000 more entries were added: only the
  changelog tail is read.

    python3 -m bench.ledger_recovery                 # 1,000,000 keys, shared stack
    python3 -m bench.ledger_recovery --keys 100000   # quicker

Figures go to ``bench/results/ledger-recovery-<UTC>.json`` and docs/dispatch.md.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import signal
import subprocess
import sys
import tempfile
import time
import uuid
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from app.settings import PROJECT_ROOT, Settings
from app.tables import key_partition
from app.tables.ledger import TABLE_NAME

STAMP = re.compile(r"^\[(\d{4}-\d\d-\d\d \d\d:\d\d:\d\d,\d{3})\]")


def fill(bootstrap: str, topic: str, partitions: int, start: int, n: int, prefix: str) -> float:
    """Write entries ``start..start+n-1`` to the changelog; returns seconds taken."""
    from confluent_kafka import Producer

    producer = Producer(
        {"bootstrap.servers": bootstrap, "linger.ms": 50, "compression.type": "lz4", "acks": "all"}
    )
    t0 = time.monotonic()
    now = time.time()
    for i in range(start, start + n):
        key = f"{prefix}-{i}".encode()
        value = json.dumps({"s": "sent", "p": "sim-http", "m": f"m-{i}", "t": now}).encode()
        while True:
            try:
                producer.produce(topic, value, key, partition=key_partition(key, partitions))
                break
            except BufferError:
                producer.poll(0.05)
        if i % 10_000 == 0:
            producer.poll(0)
    producer.flush(120)
    return time.monotonic() - t0


def create_changelog(bootstrap: str, topic: str, partitions: int) -> None:
    from confluent_kafka.admin import AdminClient, NewTopic

    admin = AdminClient({"bootstrap.servers": bootstrap})
    futures = admin.create_topics(
        [NewTopic(topic, partitions, 1, config={"cleanup.policy": "compact"})]
    )
    for future in futures.values():
        future.result(60)


def parse(ts: str) -> float:
    return datetime.strptime(ts, "%Y-%m-%d %H:%M:%S,%f").timestamp()


def run_worker(
    env: dict[str, str], log: Path, timeout_s: float
) -> dict[str, float | None]:
    """Start a dispatch worker, wait for 'Worker ready', stop it; the figures."""
    started = time.time()
    with log.open("w") as out:
        proc = subprocess.Popen(
            [sys.executable, "-m", "faust", "-A", "app", "worker", "-l", "info"],
            cwd=PROJECT_ROOT,
            env=env,
            stdout=out,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
    marks: dict[str, float] = {}
    deadline = time.monotonic() + timeout_s
    try:
        while time.monotonic() < deadline and "ready" not in marks:
            time.sleep(0.5)
            for line in log.read_text(errors="replace").splitlines():
                m = STAMP.match(line)
                if not m:
                    continue
                at = parse(m.group(1))
                if "Restoring state from changelog topics" in line:
                    marks.setdefault("restore_start", at)
                elif "Done reading from changelog topics" in line:
                    marks.setdefault("restore_done", at)
                elif "Worker ready" in line:
                    marks.setdefault("ready", at)
            if proc.poll() is not None:
                break
    finally:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(60)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait(10)
    restore = (
        marks["restore_done"] - marks["restore_start"]
        if "restore_done" in marks and "restore_start" in marks
        else None
    )
    return {
        "restore_s": None if restore is None else round(restore, 2),
        "ready_s": round(marks["ready"] - started, 2) if "ready" in marks else None,
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--keys", type=int, default=1_000_000)
    parser.add_argument("--tail", type=int, default=1_000)
    parser.add_argument("--timeout", type=float, default=900.0)
    args = parser.parse_args(argv)

    base = Settings()
    ns = f"ledgerbench{uuid.uuid4().hex[:6]}"
    app_id = f"{ns}-dispatch"
    changelog = f"{app_id}-{TABLE_NAME}-changelog"
    parts = base.kafka.topic_partitions
    work = Path(tempfile.mkdtemp(prefix="ledger-recovery-", dir=PROJECT_ROOT / "var"))
    create_changelog(base.kafka.bootstrap, changelog, parts)
    fill_s = fill(base.kafka.bootstrap, changelog, parts, 0, args.keys, ns)
    print(f"filled {args.keys} entries in {fill_s:.1f} s", flush=True)

    def env(store: str, data_dir: Path) -> dict[str, str]:
        e = dict(os.environ)
        e.update(
            SPILLWAY_STAGE="dispatch",
            SPILLWAY_APP_ID_PREFIX=ns,
            SPILLWAY_TOPIC_NAMESPACE=f"{ns}.",
            SPILLWAY_STORE=store,
            SPILLWAY_DATA_DIR=str(data_dir),
            SPILLWAY_WEB_PORT=str(_free_port()),
        )
        return e

    runs: list[dict[str, Any]] = []
    for name, store, data in (
        ("cold-memory", "memory://", work / "memory"),
        ("cold-rocksdb", "rocksdb://", work / "rocksdb"),
    ):
        figures = run_worker(env(store, data), work / f"{name}.log", args.timeout)
        runs.append({"run": name, **figures})
        print(runs[-1], flush=True)
    fill(base.kafka.bootstrap, changelog, parts, args.keys, args.tail, ns)
    figures = run_worker(env("rocksdb://", work / "rocksdb"), work / "warm.log", args.timeout)
    runs.append({"run": "warm-rocksdb", "tail": args.tail, **figures})
    print(runs[-1], flush=True)

    stamp = datetime.now(UTC).strftime("%Y%m%dT%H%M%SZ")
    out = PROJECT_ROOT / "bench" / "results" / f"ledger-recovery-{stamp}.json"
    out.write_text(
        json.dumps(
            {"keys": args.keys, "partitions": parts, "fill_s": round(fill_s, 1), "runs": runs},
            indent=2,
        )
        + "\n"
    )
    print(f"saved {out.relative_to(PROJECT_ROOT)}")
    return 0


def _free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


if __name__ == "__main__":
    raise SystemExit(main())
