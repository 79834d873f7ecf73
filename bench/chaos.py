"""The chaos suite (issue 12): faults while a mixed backlog drains under a saturated quota.

    scripts/chaos [--events 10000] [--quota 100] [--scenarios baseline,scale,...]
                  [--stack private|shared] [--session-timeout 10]

Each scenario runs the whole pipeline as real workers (``faust -A app worker``, one
process per stage: render, route, dispatch with its retry agents, started by
``harness.workers``) against a provider simulator of its own with a fixed-window quota
of ``--quota`` requests/s (Spillway is told the same quota). Events (10% critical, 60%
normal, 30% bulk) are produced at twice the quota, so lanes hold a normal and bulk
backlog and the quota is saturated for the whole run. Scenarios:

- ``baseline``: no fault (its drain time is every scenario's ``baseline_drain_s``);
- ``scale``: dispatch 1 -> 3 -> 1, twice, while the backlog waits;
- ``zombie``: two dispatch workers; one is SIGSTOPped past the session timeout and
  SIGCONTed once the group has moved its partitions to the other;
- ``kill``: five SIGKILLs, stages in turn (dispatch, render, route, dispatch, render),
  each restarted at once;
- ``term``: SIGTERM to each stage in turn, each restarted once it exited;
- ``broker``: the (private) broker SIGKILLed mid-run and restarted.

Figures per scenario (``bench/results/chaos-<UTC>.json``): ``produced``; ``sent``
(distinct events the provider accepted); ``dead`` (distinct events on email.dead that
were not sent); ``missing`` (produced, neither sent nor dead); ``requests_for_accepted_keys``
(requests the provider got for a key it had already accepted); ``max_requests_per_s``
(the simulator's own per-second request counts, 429s included); ``quota_per_s``;
``drain_s`` (first produce to the last acceptance); ``baseline_drain_s``; ``forced_kills``
(workers still running ``STOP_BOUND_S`` after SIGTERM, then SIGKILLed). A scenario passes
with 0 missing, 0 requests for accepted keys, no second above the quota, drain within
2x the baseline and 0 forced kills.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import random
import signal
import subprocess
import threading
import time
import uuid
from collections import Counter
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from confluent_kafka import Producer

from app.runtime import registry_client
from app.serde import Serde
from app.settings import PROJECT_ROOT, Settings
from app.templating import TemplateStore
from app.topology import DEAD, RAW, SENT, topic_name, topic_schemas
from bench.chaos_stack import PrivateStack
from bench.infra import Simulator
from harness import burst
from harness.observe import Observer
from harness.workers import Worker, Workers, wait_until

RESULTS_DIR = PROJECT_ROOT / "bench" / "results"
MIX = (
    ("critical", "password_reset", 0.10),
    ("normal", "order_confirmation", 0.60),
    ("bulk", "newsletter", 0.30),
)
STAGES = ("render", "route", "dispatch")
STOP_BOUND_S = 35.0  # the shutdown bound (30 s) plus a margin for a loaded machine
SCENARIOS = ("baseline", "scale", "zombie", "kill", "term", "broker")


@dataclass
class Stack:
    bootstrap: str
    registry_url: str
    private: PrivateStack | None = None


@dataclass
class Figures:
    scenario: str
    produced: int = 0
    sent: int = 0
    dead: int = 0
    missing: int = 0
    requests_for_accepted_keys: int = 0
    max_requests_per_s: int = 0
    quota_per_s: int = 0
    drain_s: float | None = None
    baseline_drain_s: float | None = None
    forced_kills: int = 0
    # beyond the list
    requests: int = 0
    status_429: int = 0
    seconds_above_quota: dict[str, int] = field(default_factory=dict)  # second -> requests
    # arrivals per second from the first request on (the simulator's clock), and 429s
    requests_per_s: list[int] = field(default_factory=list)
    status_429_per_s: list[int] = field(default_factory=list)
    measured_by: str = ""  # where requests_for_accepted_keys and max_requests_per_s come from
    sent_records_missing: int = 0  # accepted by the provider, no email.sent record
    faults: list[str] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    failures: list[str] = field(default_factory=list)

    def judge(self) -> None:
        f = self.failures
        f.clear()
        if self.missing:
            f.append(f"{self.missing} missing")
        if self.requests_for_accepted_keys:
            f.append(f"{self.requests_for_accepted_keys} requests for accepted keys")
        if self.max_requests_per_s > self.quota_per_s:
            f.append(f"{self.max_requests_per_s} requests in one second > {self.quota_per_s}")
        if self.forced_kills:
            f.append(f"{self.forced_kills} workers needed SIGKILL")
        if self.drain_s is None:
            f.append("did not drain")
        elif self.baseline_drain_s and self.drain_s > 2 * self.baseline_drain_s:
            f.append(f"drain {self.drain_s:.0f}s > 2x baseline {self.baseline_drain_s:.0f}s")

    def row(self) -> dict[str, Any]:
        return asdict(self)


# --- workload ---------------------------------------------------------------------------


def workload(n: int, samples: dict[str, Any], prefix: str, seed: int = 12) -> list[dict[str, Any]]:
    rng = random.Random(seed)
    weights = [w for _, _, w in MIX]
    out = []
    for i in range(n):
        priority, template, _ = rng.choices(MIX, weights=weights)[0]
        out.append(
            {
                "event_id": f"{prefix}-{i}",
                "template": template,
                "priority": priority,
                "to": f"user{i}@example.com",
                "data": burst.template_data(template, rng, i, samples),
                "source": "chaos",
            }
        )
    return out


class Feeder(threading.Thread):
    """Produces the encoded events at ``rate`` per s (acks=all), each checked."""

    def __init__(self, bootstrap: str, topic: str, records: list[tuple[bytes, bytes]], rate: float):
        super().__init__(daemon=True)
        self.topic, self.records, self.rate = topic, records, rate
        self.producer = Producer(
            {
                "bootstrap.servers": bootstrap,
                "linger.ms": 5,
                "acks": "all",
                "enable.idempotence": True,
                "message.timeout.ms": 300_000,
                "log_level": 2,  # the broker scenario's reconnect noise is expected
            }
        )
        self.acked = 0
        self.errors: list[str] = []
        self.started_at = 0.0

    def _delivered(self, err: Any, _msg: Any) -> None:
        if err is None:
            self.acked += 1
        else:
            self.errors.append(str(err))

    def run(self) -> None:
        self.started_at = time.time()
        t0 = time.monotonic()
        for i, (key, value) in enumerate(self.records):
            due = t0 + i / self.rate
            while (now := time.monotonic()) < due:
                self.producer.poll(min(0.05, due - now))
            while True:
                try:
                    self.producer.produce(
                        self.topic, key=key, value=value, on_delivery=self._delivered
                    )
                    break
                except BufferError:
                    self.producer.poll(0.05)
            self.producer.poll(0)
        while self.producer.flush(5) > 0:
            pass


# --- group observation --------------------------------------------------------------------


_ADMINS: dict[str, Any] = {}


def group_members(bootstrap: str, group: str) -> tuple[str, int]:
    """(state, member count) of a consumer group (one admin client per bootstrap)."""
    from confluent_kafka.admin import AdminClient

    admin = _ADMINS.get(bootstrap)
    if admin is None:
        admin = _ADMINS[bootstrap] = AdminClient({"bootstrap.servers": bootstrap})
    try:
        desc = admin.describe_consumer_groups([group], request_timeout=5)[group].result()
    except Exception as exc:  # broker away, group unknown
        return f"error: {exc.__class__.__name__}", 0
    return str(desc.state.name), len(desc.members)


# --- one run ------------------------------------------------------------------------------


class Run:
    """One scenario's namespace, simulator, workers and observer."""

    def __init__(
        self,
        name: str,
        stack: Stack,
        n: int,
        quota: int,
        log_root: Path,
        session_timeout_s: float,
    ) -> None:
        self.name, self.stack, self.n, self.quota = name, stack, n, quota
        self.session_timeout_s = session_timeout_s
        self.ns = f"chaos{name[:6]}{uuid.uuid4().hex[:6]}"
        self.log_dir = log_root / name
        self.figures = Figures(name, quota_per_s=quota)
        self.sim = Simulator(self.log_dir, quota=quota)
        self.settings = Settings(
            topic_namespace=f"{self.ns}.",
            app_id_prefix=self.ns,
            kafka_bootstrap=stack.bootstrap,
            schema_registry_url=stack.registry_url,
        )
        provider: dict[str, Any] = {"name": "sim", "url": self.sim.url, "quota_per_s": quota}
        if NO_IDEM:  # a provider that does not dedupe: a repeated request is a second email
            provider["api_key"] = f"{client_helpers().NO_IDEMPOTENCY_KEY}-{self.ns}"
        overrides = {
            "SPILLWAY_TOPIC_NAMESPACE": f"{self.ns}.",
            "SPILLWAY_APP_ID_PREFIX": self.ns,
            "SPILLWAY_KAFKA_BOOTSTRAP": stack.bootstrap,
            "SPILLWAY_SCHEMA_REGISTRY_URL": stack.registry_url,
            "SPILLWAY_DATA_DIR": str(self.log_dir / "faust-data"),
            "SPILLWAY_SESSION_TIMEOUT_S": str(session_timeout_s),
            "SPILLWAY_PROVIDERS": json.dumps([provider]),
        }
        self.workers = Workers(overrides, self.log_dir)
        self.observer: Observer | None = None
        self.feeder: Feeder | None = None
        self.records: list[dict[str, Any]] | None = None  # the request log, after finish
        self.registry = registry_client(self.settings)
        self.serde = Serde(self.registry, topic_schemas(self.settings))
        self.serde.register()

    # --- workers ---

    def group(self, stage: str) -> str:
        return f"{self.ns}-{stage}"

    def alive(self, stage: str) -> list[Worker]:
        return [w for w in self.workers.workers if w.stage == stage and w.alive()]

    def add(self, stage: str) -> Worker:
        return self.workers.add(stage)

    def wait_group(self, stage: str, members: int, timeout: float) -> bool:
        """Until the stage's group is STABLE with exactly ``members`` members."""
        ok = wait_until(
            lambda: group_members(self.stack.bootstrap, self.group(stage)) == ("STABLE", members),
            timeout,
            interval=0.5,
        )
        if not ok:
            state = group_members(self.stack.bootstrap, self.group(stage))
            self.note(f"{stage} group not STABLE with {members} members in {timeout:.0f}s: {state}")
        return ok

    def terminate(self, workers: list[Worker]) -> None:
        """SIGTERM, wait up to STOP_BOUND_S (all at once), SIGKILL the rest (forced kills)."""
        live = [w for w in workers if w.alive() and w.proc is not None]
        for w in live:
            assert w.proc is not None
            with contextlib.suppress(ProcessLookupError):
                os.kill(w.proc.pid, signal.SIGCONT)  # a stopped process cannot act on SIGTERM
            w.proc.send_signal(signal.SIGTERM)
        deadline = time.monotonic() + STOP_BOUND_S
        for w in live:
            assert w.proc is not None
            try:
                w.proc.wait(max(0.1, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                w.proc.kill()
                w.proc.wait(10)
                self.figures.forced_kills += 1
                self.note(f"{w.stage} pid {w.proc.pid} alive {STOP_BOUND_S:.0f}s after SIGTERM")

    def kill(self, w: Worker) -> None:
        assert w.proc is not None
        w.proc.kill()
        w.proc.wait(10)

    def note(self, text: str) -> None:
        elapsed = time.time() - self.t0 if hasattr(self, "t0") else 0.0
        self.figures.notes.append(f"t+{elapsed:.0f}s {text}")

    def fault(self, text: str) -> None:
        elapsed = time.time() - self.t0 if hasattr(self, "t0") else 0.0
        self.figures.faults.append(f"t+{elapsed:.0f}s {text}")

    # --- progress ---

    def accepted(self) -> int:
        try:
            return self.sim.accepted()
        except Exception:
            return 0

    def done(self) -> int:
        """Distinct events sent or dead, as email.sent and email.dead tell; with an
        idempotent simulator its accepted count (distinct keys) may run ahead of them."""
        if self.observer is None:
            return 0
        snap = self.observer.snapshot()
        dead = len(snap.dead) + len(snap.dead_without_id)
        sent = len(snap.sent) if NO_IDEM else max(len(snap.sent), self.accepted())
        return sent + dead

    def wait_accepted(self, fraction: float, timeout: float = 600.0) -> bool:
        target = int(self.n * fraction)
        return wait_until(lambda: self.accepted() >= target, timeout, interval=0.5)

    def exits(self) -> None:
        """Workers that exited by themselves (not by a signal of ours) are noted once."""
        for w in self.workers.workers:
            if w.proc is not None and w.proc.poll() is not None and not getattr(w, "_seen", False):
                w._seen = True  # type: ignore[attr-defined]
                if w.proc.returncode not in (0, -signal.SIGKILL, -signal.SIGTERM):
                    self.note(f"{w.stage} pid {w.proc.pid} exited with {w.proc.returncode}")

    # --- the run ---

    def create_topics(self) -> None:
        """The pipeline's topics exist before the workers start, as in production. (On a
        loaded machine a worker that created its input topic itself sometimes subscribed
        before the topic was in its metadata, logged "Ignoring missing topic" and never read
        it: render on email.raw-events, route on email.rendered. Not what this suite tests.)"""
        from harness.topics import create_pipeline_topics

        create_pipeline_topics(self.stack.bootstrap, self.settings)

    def start(self, dispatch_workers: int = 1) -> None:
        self.create_topics()
        for stage in STAGES:
            for _ in range(dispatch_workers if stage == "dispatch" else 1):
                self.add(stage)
        if not self.workers.wait_ready(self.stack.bootstrap, self.ns, timeout=180):
            self.note("workers not all in their groups after 180 s")
        self.observer = Observer(
            self.stack.bootstrap,
            self.serde,
            topic_name(SENT, self.settings),
            topic_name(DEAD, self.settings),
        ).start()
        store = TemplateStore(self.settings.templates_dir)
        samples = {t: store.sample_data(t) for _, t, _ in MIX}
        raw = topic_name(RAW, self.settings)
        records = [
            (
                e["event_id"].encode(),
                burst.encode("good", e, self.serde, raw, use_avro=i % 2 == 0),
            )
            for i, e in enumerate(workload(self.n, samples, self.ns))
        ]
        self.feeder = Feeder(self.stack.bootstrap, raw, records, rate=2.0 * self.quota)
        self.t0 = time.time()
        self.feeder.start()

    def drain(self, stall_s: float, cap_s: float) -> None:
        """Wait for every event to be sent or dead; give up after ``stall_s`` without
        progress or ``cap_s`` in all."""
        last, last_change = -1, time.monotonic()
        start = time.monotonic()
        while True:
            self.exits()
            done = self.done()
            if done >= self.n:
                break
            if done != last:
                last, last_change = done, time.monotonic()
            elif time.monotonic() - last_change > stall_s:
                self.note(f"stalled at {done}/{self.n}: no progress for {stall_s:.0f}s")
                break
            if time.monotonic() - start > cap_s:
                self.note(f"gave up at {done}/{self.n} after {cap_s:.0f}s")
                break
            time.sleep(0.5)
        time.sleep(3.0)  # late duplicates still count

    def finish(self) -> Figures:
        f = self.figures
        last_accept: float | None = None
        self.terminate(self.workers.workers)
        if self.feeder is not None:
            self.feeder.join(30)
            f.produced = self.feeder.acked
            if self.feeder.errors:
                self.note(f"{len(self.feeder.errors)} produce errors: {self.feeder.errors[:3]}")
        entries = self.sim.entries()
        stats = self.sim.client.stats(series=True)
        records = request_log(self.sim)
        self.records = records
        ours = {f"{self.ns}-{i}" for i in range(self.n)}
        if records is not None:
            accepted = [r for r in records if r["outcome"] == "accepted"]
            sent_ids = {str(r["key"]) for r in accepted} & ours
            f.requests_for_accepted_keys = sum(
                len(v) for v in client_helpers().requests_after_acceptance(records).values()
            )
            per_second = Counter(int(r["received_at"]) for r in records)
            f.max_requests_per_s = max(per_second.values(), default=0)
            if per_second:
                first, last = min(per_second), max(per_second)
                throttled = Counter(int(r["received_at"]) for r in records if r["status"] == 429)
                f.requests_per_s = [per_second.get(s, 0) for s in range(first, last + 1)]
                f.status_429_per_s = [throttled.get(s, 0) for s in range(first, last + 1)]
            f.seconds_above_quota = {
                f"t+{sec - self.t0:.0f}s": n
                for sec, n in sorted(per_second.items())
                if n > self.quota
            }
            f.measured_by = "request log" + (" (no idempotency keys)" if NO_IDEM else "")
            if accepted:
                last_accept = max(float(r["decided_at"]) for r in accepted)
        else:
            sent_ids = {str(e.get("key") or e["custom_args"].get("event_id")) for e in entries}
            sent_ids &= ours
            f.requests_for_accepted_keys = requests_for_accepted_keys(stats, entries)
            f.max_requests_per_s = max(
                (int(s["requests"]) for s in stats.get("per_second", [])), default=0
            )
            f.measured_by = "ledger (idempotent simulator)"
            if entries:
                last_accept = max(float(e["accepted_at"]) for e in entries)
        dead_ids: set[str] = set()
        sent_records: set[str] = set()
        if self.observer is not None:
            time.sleep(2.0)
            snap = self.observer.snapshot()
            self.observer.stop()
            dead_ids = set(snap.dead) - sent_ids
            sent_records = set(snap.sent)
            if snap.dead_without_id:
                self.note(f"{len(snap.dead_without_id)} dead letters without an event id")
            if snap.dead:
                self.note(f"dead reasons: {dict(snap.reasons())}")
        f.sent = len(sent_ids)
        f.dead = len(dead_ids)
        f.missing = max(0, f.produced - f.sent - f.dead)
        f.sent_records_missing = len(sent_ids - sent_records)
        f.requests = int(stats["requests"])
        f.status_429 = int(stats.get("by_status", {}).get("429", 0))
        if f.missing == 0 and last_accept is not None:
            f.drain_s = round(last_accept - self.t0, 1)
        self.sim.close()
        self.registry.close()
        return f


def client_helpers() -> Any:
    import simulator.client

    return simulator.client


#: True when the simulator has accounts without idempotency keys (helper G's request log):
#: then every request for an already accepted key is a second email, not a replay.
NO_IDEM: bool = hasattr(client_helpers(), "NO_IDEMPOTENCY_KEY")


def request_log(sim: Simulator) -> list[dict[str, Any]] | None:
    """Every request the simulator got (any outcome), or None if it has no request log."""
    client = sim.client
    if not hasattr(client, "requests"):
        return None
    try:
        summary = client.requests_summary()
        records: list[dict[str, Any]] = client.requests()
    except Exception:
        return None
    if summary.get("dropped"):
        raise RuntimeError(f"the simulator dropped {summary['dropped']} request records")
    if len(records) < int(summary["matched"]):
        raise RuntimeError(f"read {len(records)} request records of {summary['matched']}")
    return records


def requests_for_accepted_keys(stats: dict[str, Any], entries: list[dict[str, Any]]) -> int:
    """Requests for a key the provider had already accepted. The idempotent simulator
    answers them as replays and counts them per ledger entry (``requests`` - 1)."""
    by_entries = sum(max(0, int(e.get("requests", 1)) - 1) for e in entries)
    return max(by_entries, int(stats.get("duplicate_requests", 0)))


# --- scenarios ---------------------------------------------------------------------------


def sc_baseline(run: Run) -> None:
    run.start()


def sc_scale(run: Run) -> None:
    run.start()
    for cycle, at in enumerate((0.10, 0.45)):
        run.wait_accepted(at)
        added = [run.add("dispatch"), run.add("dispatch")]
        run.fault(f"cycle {cycle + 1}: dispatch 1 -> 3")
        run.wait_group("dispatch", 3, timeout=120)
        time.sleep(5.0)  # let the three share the lanes for a moment
        live = run.alive("dispatch")
        # first cycle stops the two new workers, the second the two oldest ones
        stop = added if cycle == 0 else [w for w in live if w not in added][:1] + added[:1]
        pids = [w.proc.pid for w in stop if w.proc]
        run.fault(f"cycle {cycle + 1}: dispatch 3 -> 1 (SIGTERM pids {pids})")
        run.terminate(stop)
        run.wait_group("dispatch", 1, timeout=120)


def sc_zombie(run: Run) -> None:
    run.start(dispatch_workers=2)
    run.wait_accepted(0.15)
    zombie = run.alive("dispatch")[-1]
    assert zombie.proc is not None
    os.kill(zombie.proc.pid, signal.SIGSTOP)
    stopped = time.monotonic()
    run.fault(f"SIGSTOP dispatch pid {zombie.proc.pid}")
    run.wait_group("dispatch", 1, timeout=run.session_timeout_s * 4 + 60)
    while time.monotonic() - stopped < run.session_timeout_s + 2:
        time.sleep(0.2)
    os.kill(zombie.proc.pid, signal.SIGCONT)
    run.fault(f"SIGCONT after {time.monotonic() - stopped:.0f}s")


def sc_kill(run: Run) -> None:
    run.start()
    order = ("dispatch", "render", "route", "dispatch", "render")
    for i, stage in enumerate(order):
        run.wait_accepted(0.08 + 0.12 * i)
        victims = run.alive(stage)
        if not victims:
            run.note(f"no live {stage} worker to kill")
            continue
        run.kill(victims[0])
        run.fault(f"SIGKILL {stage}")
        run.add(stage)
        run.wait_group(stage, 1, timeout=run.session_timeout_s * 3 + 90)


def sc_term(run: Run) -> None:
    run.start()
    for i, stage in enumerate(("render", "route", "dispatch")):
        run.wait_accepted(0.10 + 0.15 * i)
        victims = run.alive(stage)
        if not victims:
            run.note(f"no live {stage} worker to stop")
            continue
        run.fault(f"SIGTERM {stage}")
        run.terminate(victims[:1])
        run.add(stage)
        run.wait_group(stage, 1, timeout=120)


def sc_broker(run: Run) -> None:
    stack = run.stack.private
    if stack is None:
        raise RuntimeError("the broker scenario needs the private stack (--stack private)")
    run.start()
    run.wait_accepted(0.25)
    pid = stack.kill_broker()
    run.fault(f"SIGKILL broker pid {pid}")
    time.sleep(5.0)
    stack.start_broker()
    run.fault("broker restarted")


RUNNERS: dict[str, Callable[[Run], None]] = {
    "baseline": sc_baseline,
    "scale": sc_scale,
    "zombie": sc_zombie,
    "kill": sc_kill,
    "term": sc_term,
    "broker": sc_broker,
}


def run_scenario(
    name: str,
    stack: Stack,
    n: int,
    quota: int,
    log_root: Path,
    *,
    session_timeout_s: float = 10.0,
    baseline_drain_s: float | None = None,
    stall_s: float = 120.0,
) -> Figures:
    run = Run(name, stack, n, quota, log_root, session_timeout_s)
    try:
        try:
            RUNNERS[name](run)
        except Exception as exc:
            run.note(f"scenario step failed: {exc.__class__.__name__}: {exc}")
        expected = n / (quota * 0.85)
        run.drain(stall_s=stall_s, cap_s=max(6 * expected, 600))
    finally:
        figures = run.finish()
    figures.baseline_drain_s = baseline_drain_s
    figures.judge()
    return figures


# --- the suite ----------------------------------------------------------------------------


COLUMNS = (
    ("scenario", "{}"),
    ("produced", "{}"),
    ("sent", "{}"),
    ("dead", "{}"),
    ("missing", "{}"),
    ("requests_for_accepted_keys", "{}"),
    ("max_requests_per_s", "{}"),
    ("quota_per_s", "{}"),
    ("drain_s", "{}"),
    ("baseline_drain_s", "{}"),
    ("forced_kills", "{}"),
)


def table(rows: list[Figures]) -> str:
    heads = [c for c, _ in COLUMNS] + ["result"]
    short = {"requests_for_accepted_keys": "req_accepted_keys", "max_requests_per_s": "max_req/s"}
    lines = [[short.get(h, h) for h in heads]]
    for r in rows:
        d = r.row()
        lines.append(
            [fmt.format(d[c]) for c, fmt in COLUMNS]
            + ["pass" if not r.failures else "FAIL: " + "; ".join(r.failures)]
        )
    widths = [max(len(line[i]) for line in lines) for i in range(len(heads) - 1)]
    out = []
    for line in lines:
        cells = [v.rjust(w) for v, w in zip(line[:-1], widths, strict=True)]
        out.append("  ".join(cells) + "  " + line[-1])
    return "\n".join(out)


def git_commit() -> str | None:
    try:
        return subprocess.run(
            ["git", "rev-parse", "HEAD"],
            cwd=PROJECT_ROOT,
            capture_output=True,
            text=True,
            check=True,
        ).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return None


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="scripts/chaos", description=__doc__.split("\n\n")[0])
    p.add_argument("--events", type=int, default=10_000)
    p.add_argument("--quota", type=int, default=100, help="provider quota, requests/s")
    p.add_argument("--scenarios", default=",".join(SCENARIOS))
    p.add_argument(
        "--stack",
        choices=("private", "shared"),
        default="private",
        help="private: a broker + registry of the run's own (needed by 'broker'); "
        "shared: the local stack of scripts/stack (127.0.0.1:9092)",
    )
    p.add_argument("--session-timeout", type=float, default=10.0)
    p.add_argument(
        "--stall", type=float, default=90.0, help="give up after this long without progress"
    )
    p.add_argument("--no-save", action="store_true")
    args = p.parse_args(argv)
    names = [s.strip() for s in args.scenarios.split(",") if s.strip()]
    unknown = [s for s in names if s not in RUNNERS]
    if unknown:
        p.error(f"unknown scenarios {unknown}; choose from {list(RUNNERS)}")
    if "baseline" not in names:
        names.insert(0, "baseline")
    stamp = datetime.now(UTC).strftime("%Y%m%dT%H%M%SZ")
    log_root = PROJECT_ROOT / "var" / f"chaos-{stamp}"
    private: PrivateStack | None = None
    if args.stack == "private":
        private = PrivateStack(log_root / "stack")
        print(f"starting a private broker and registry under {private.root} ...", flush=True)
        private.up()
        stack = Stack(private.bootstrap, private.registry_url, private)
    else:
        if "broker" in names:
            p.error("the broker scenario kills its broker: it needs --stack private")
        default = Settings()
        stack = Stack(default.kafka.bootstrap, default.registry.url)
    rows: list[Figures] = []
    baseline: float | None = None
    try:
        for name in names:
            when = f"{datetime.now(UTC):%H:%M:%S}"
            print(f"[{when}] {name}: {args.events} events, quota {args.quota}/s", flush=True)
            figures = run_scenario(
                name,
                stack,
                args.events,
                args.quota,
                log_root,
                session_timeout_s=args.session_timeout,
                baseline_drain_s=baseline,
                stall_s=args.stall,
            )
            if name == "baseline":
                baseline = figures.drain_s
                figures.baseline_drain_s = baseline
                figures.judge()
            rows.append(figures)
            print(table([figures]).splitlines()[-1], flush=True)
            print(f"    measured by: {figures.measured_by}", flush=True)
            for line in figures.faults + figures.notes:
                print(f"    {line}", flush=True)
    finally:
        if private is not None:
            private.down()
    doc = {
        "suite": "chaos",
        "started": stamp,
        "commit": git_commit(),
        "events": args.events,
        "quota_per_s": args.quota,
        "stack": args.stack,
        "session_timeout_s": args.session_timeout,
        "logs": str(log_root.relative_to(PROJECT_ROOT)),
        "scenarios": [r.row() for r in rows],
    }
    print()
    print(table(rows))
    if not args.no_save:
        RESULTS_DIR.mkdir(parents=True, exist_ok=True)
        path = RESULTS_DIR / f"chaos-{stamp}.json"
        path.write_text(json.dumps(doc, indent=2) + "\n")
        print(f"\nsaved {path.relative_to(PROJECT_ROOT)}")
    return 0 if all(not r.failures for r in rows) else 1


if __name__ == "__main__":
    raise SystemExit(main())
