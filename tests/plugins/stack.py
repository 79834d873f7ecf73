"""The integration tier's fixtures: the real broker, registry, provider simulator and
SMTP sink.

``stack`` (session) runs ``scripts/stack up`` (idempotent) and, if it started the stack,
stops it at the end (not with ``SPILLWAY_KEEP_STACK=1``). ``env`` gives each test its
own topic namespace and app ids (an ``Env``), so tests never see each other's messages.
``own_sim`` starts provider simulators of the test's own (quotas, outages, error
injection).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from confluent_kafka import Producer

from app.runtime import registry_client
from app.serde import Serde
from app.settings import PROJECT_ROOT, Settings
from app.templating import TemplateStore
from app.topology import topic_schemas
from harness.observe import Observer
from harness.workers import Worker, Workers
from simulator.client import SyncSimulatorClient, SyncSmtpSinkClient, provider_command

STACK = [sys.executable, str(PROJECT_ROOT / "scripts" / "stack")]
ARTIFACTS = PROJECT_ROOT / "test-artifacts"


@pytest.fixture(scope="session")
def stack() -> Iterator[None]:
    started = False
    if subprocess.run([*STACK, "status"], capture_output=True).returncode != 0:
        up = subprocess.run([*STACK, "up"], check=True, capture_output=True, text=True)
        print(up.stdout, end="")
        # a status that failed under load while the stack ran (another session's, a
        # benchmark's): ``up`` found it running, so it is not this session's to stop
        started = "already running" not in up.stdout
    yield
    if started and not os.environ.get("SPILLWAY_KEEP_STACK"):
        subprocess.run([*STACK, "down"], check=False)


class Env:
    """One test's namespace: settings, serde, producer, observer, workers."""

    def __init__(self, name: str) -> None:
        ns = f"t{uuid.uuid4().hex[:8]}"
        self.ns = ns
        self.overrides = {
            "SPILLWAY_TOPIC_NAMESPACE": f"{ns}.",
            "SPILLWAY_APP_ID_PREFIX": ns,
            # the shared simulator honours idempotency keys (24 h) unless told otherwise
            "SPILLWAY_PROVIDER_IDEMPOTENCY_KEY_TTL_S": "86400",
        }
        self.settings = Settings(topic_namespace=f"{ns}.", app_id_prefix=ns)
        registry = registry_client(self.settings)
        self.serde = Serde(registry, topic_schemas(self.settings))
        self.serde.register()
        self.producer = Producer(
            {"bootstrap.servers": self.settings.kafka.bootstrap, "linger.ms": 5, "acks": "all"}
        )
        self.samples = {
            n: TemplateStore(self.settings.templates_dir).sample_data(n)
            for n in ("password_reset", "order_confirmation", "newsletter")
        }
        self.workers = Workers(self.overrides, ARTIFACTS / name / ns)
        self.observer: Observer | None = None
        self.sim = SyncSimulatorClient("http://127.0.0.1:8030")
        self.sink = SyncSmtpSinkClient("http://127.0.0.1:8031")

    def topic(self, name: str) -> str:
        return self.settings.topic(name)

    def produce(self, key: bytes | None, value: bytes) -> None:
        while True:
            try:
                self.producer.produce(self.topic("email.raw-events"), key=key, value=value)
                return
            except BufferError:
                self.producer.poll(0.1)

    def observe(self) -> Observer:
        self.observer = Observer(
            self.settings.kafka.bootstrap,
            self.serde,
            self.topic("email.sent"),
            self.topic("email.dead"),
        ).start()
        return self.observer

    def ledger(self) -> list[dict[str, Any]]:
        """The simulator's accepted messages that belong to this test."""
        entries = self.sim.ledger(limit=1_000_000)["entries"]
        return [e for e in entries if str(e["key"]).startswith(self.ns)]

    def close(self) -> None:
        stop_all(self.workers.workers)
        if self.observer:
            self.observer.stop()
        self.producer.flush(10)
        self.sim.close()
        self.sink.close()
        self.serde.registry.close()


def stop_all(workers: list[Worker]) -> None:
    """End a test's workers: SIGKILL to every live one at once, then reap them.

    After the test's assertions the workers' shutdown proves nothing (no test checks it
    here; the SIGTERM paths have tests of their own: ShutdownGuard's unit tests, the
    chaos suite's ``forced_kills``), and every test has its own topics and groups, so a
    group member left to expire harms no one. A graceful SIGTERM drain took about 2 s a
    test (1.5 s a worker when they were stopped one after another)."""
    live = [w for w in workers if w.alive() and w.proc is not None]
    for w in live:
        assert w.proc is not None
        w.proc.kill()
    for w in live:
        assert w.proc is not None
        w.proc.wait(10)


@pytest.fixture
def env(stack: None, request: pytest.FixtureRequest) -> Iterator[Env]:
    e = Env(request.node.name.replace("/", "_")[:60])
    yield e
    e.close()


def healthy(url: str) -> bool:
    """The worker at ``url`` answers its /health with 200."""
    try:
        return httpx.get(f"{url}/health", timeout=1).status_code == 200
    except httpx.HTTPError:
        return False


def artifacts_dir() -> Path:
    ARTIFACTS.mkdir(exist_ok=True)
    return ARTIFACTS


class OwnSimulator:
    """A provider simulator process of a test's own, for configs that must not leak
    into other tests (quotas, outages, error injection)."""

    def __init__(self, log_dir: Path, **config: Any) -> None:
        from harness.workers import free_port

        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        log_dir.mkdir(parents=True, exist_ok=True)
        sets = [f"{key}={json.dumps(value)}" for key, value in config.items()]
        args = provider_command(self.port, *(arg for s in sets for arg in ("--set", s)))
        with (log_dir / f"simulator-{self.port}.log").open("ab") as log:
            self.proc = subprocess.Popen(
                args, cwd=PROJECT_ROOT, stdout=log, stderr=subprocess.STDOUT
            )
        self.client = SyncSimulatorClient(self.url)
        self.client.wait_ready(timeout=20)

    def entries(self) -> list[dict[str, Any]]:
        return list(self.client.ledger(limit=1_000_000)["entries"])

    def per_second(self) -> list[dict[str, Any]]:
        return list(self.client.stats()["per_second"])

    def close(self) -> None:
        self.client.close()
        self.proc.terminate()
        self.proc.wait(10)


@pytest.fixture
def own_sim(env: Env, request: pytest.FixtureRequest) -> Iterator[Any]:
    """Factory: ``own_sim(quota=..., ...)`` starts a simulator; all stop at the end."""
    sims: list[OwnSimulator] = []

    def start(**config: Any) -> OwnSimulator:
        sim = OwnSimulator(env.workers.log_dir, **config)
        sims.append(sim)
        return sim

    yield start
    for sim in sims:
        sim.close()
