"""A Schema Registry stopped for 60 s mid-run (issue 13): every valid event is
delivered and none is dead.

The shared registry is never touched: the test starts its own Apicurio (the same
jar and flags as ``scripts/stack``, on free ports) and freezes it with SIGSTOP, which
keeps its in-memory schema ids (a restart would lose them). During the outage,
events arrive framed with writer schemas the render worker has not cached (other
producers' schema versions), so render must look them up: it waits for the
registry instead of dead-lettering them as ``undecodable``.

Long (about two minutes): runs only with ``SPILLWAY_LONG_TESTS=1``
(``SPILLWAY_LONG_TESTS=1 python3 -m pytest -m long``).
"""

from __future__ import annotations

import io
import json
import os
import re
import signal
import struct
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import fastavro
import httpx
import pytest

from app.models import RawEvent
from app.runtime import registry_client
from app.serde import Serde, load_schema_texts, to_avro
from app.settings import PROJECT_ROOT, Settings
from app.topology import topic_schemas
from harness.observe import Observer
from harness.workers import free_port, wait_until
from tests.plugins.stack import Env

pytestmark = [
    pytest.mark.integration,
    pytest.mark.long,
    pytest.mark.skipif(
        not os.environ.get("SPILLWAY_LONG_TESTS"), reason="long suite: SPILLWAY_LONG_TESTS=1"
    ),
]

OUTAGE_S = 60.0
APICURIO_MIN_JAVA = 21


def find_java() -> str | None:
    candidates = [
        Path(os.environ[v]) / "bin" / "java"
        for v in ("SPILLWAY_STACK_JAVA_HOME", "JAVA_HOME")
        if os.environ.get(v)
    ]
    candidates += sorted(Path("/usr/lib/jvm").glob("*/bin/java"), reverse=True)
    for java in candidates:
        if not java.is_file():
            continue
        out = subprocess.run([str(java), "-version"], capture_output=True, text=True).stderr
        m = re.search(r'version "(\d+)', out)
        if m and int(m.group(1)) >= APICURIO_MIN_JAVA:
            return str(java)
    return None


class OwnRegistry:
    """An Apicurio Registry of the test's own (in-memory storage)."""

    def __init__(self, log_dir: Path) -> None:
        jars = sorted(PROJECT_ROOT.glob(".stack/apicurio/**/quarkus-run.jar"))
        java = find_java()
        if not jars or java is None:
            pytest.skip("Apicurio jar or Java 21+ missing (scripts/stack fetch)")
        self.port, mgmt = free_port(), free_port()
        self.url = f"http://127.0.0.1:{self.port}/apis/ccompat/v7"
        log_dir.mkdir(parents=True, exist_ok=True)
        with (log_dir / f"registry-{self.port}.log").open("ab") as log:
            self.proc = subprocess.Popen(
                [
                    java,
                    "-Xmx512m",
                    "-XX:TieredStopAtLevel=1",
                    "-Dquarkus.http.host=127.0.0.1",
                    f"-Dquarkus.http.port={self.port}",
                    "-Dquarkus.management.host=127.0.0.1",
                    f"-Dquarkus.management.port={mgmt}",
                    "-Dapicurio.rules.global.compatibility=BACKWARD",
                    "-jar",
                    str(jars[0]),
                ],
                stdout=log,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )

        def ready() -> bool:
            try:
                return httpx.get(f"{self.url}/subjects", timeout=2).status_code == 200
            except httpx.HTTPError:
                return False

        if not wait_until(ready, timeout=180, interval=0.5):
            self.close()
            raise RuntimeError("own Apicurio did not start within 180 s")

    def stop(self) -> None:
        self.proc.send_signal(signal.SIGSTOP)

    def resume(self) -> None:
        self.proc.send_signal(signal.SIGCONT)

    def close(self) -> None:
        self.proc.send_signal(signal.SIGCONT)
        self.proc.terminate()
        try:
            self.proc.wait(20)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait(10)


@pytest.fixture
def own_registry(env: Env) -> Iterator[OwnRegistry]:
    registry = OwnRegistry(env.workers.log_dir)
    yield registry
    registry.close()


def variant(registry: Any, subject: str, n: int) -> tuple[int, Any]:
    """Another producer's raw_event schema version (one extra optional field)."""
    from confluent_kafka.schema_registry import Schema

    schema = json.loads(load_schema_texts()["raw_event"])
    schema["fields"].append({"name": f"producer_field_{n}", "type": ["null", "string"],
                             "default": None})  # fmt: skip
    text = json.dumps(schema)
    return registry.register_schema(subject, Schema(text, "AVRO")), fastavro.parse_schema(schema)


def framed(schema_id: int, parsed: Any, event: RawEvent) -> bytes:
    body = io.BytesIO()
    fastavro.schemaless_writer(body, parsed, to_avro(event))
    return struct.pack(">bI", 0, schema_id) + body.getvalue()


def test_registry_stopped_60s_mid_run_delivers_every_valid_event_and_none_dead(
    env: Env, own_registry: OwnRegistry
) -> None:
    settings = Settings(
        topic_namespace=f"{env.ns}.", app_id_prefix=env.ns, schema_registry_url=own_registry.url
    )
    registry = registry_client(settings)
    serde = Serde(registry, topic_schemas(settings))
    serde.register()
    raw_topic = env.topic("email.raw-events")
    for stage in ("render", "route", "dispatch"):
        env.workers.add(stage, SPILLWAY_SCHEMA_REGISTRY_URL=own_registry.url)
    assert env.workers.wait_ready(env.settings.kafka.bootstrap, env.ns)
    observer = Observer(
        env.settings.kafka.bootstrap, serde, env.topic("email.sent"), env.topic("email.dead")
    ).start()
    variants = [variant(registry, f"{env.ns}-producer-{n}-value", n) for n in range(3)]

    produced: list[str] = []
    with_variant: list[str] = []

    def produce(phase: str, i: int, use_variant: bool) -> None:
        event_id = f"{env.ns}-{phase}-{i}"
        event = RawEvent(
            event_id=event_id,
            template="password_reset",
            to="ann@example.com",
            priority=("critical", "normal", "bulk")[i % 3],
            data=env.samples["password_reset"],
            source=phase,
        )
        if use_variant:
            schema_id, parsed = variants[i % len(variants)]
            value = framed(schema_id, parsed, event)
            with_variant.append(event_id)
        elif i % 2:
            value = serde.encode(raw_topic, event)
        else:
            value = json.dumps(event.asdict()).encode()
        env.produce(event_id.encode(), value)
        produced.append(event_id)

    # before: 15 s of one event every 0.25 s, all with schemas the workers know
    for i in range(60):
        produce("before", i, use_variant=False)
        env.producer.poll(0)
        time.sleep(0.25)
    env.producer.flush(10)
    assert observer.wait_for(len(produced), timeout=60, check=env.workers.check_alive).done == 60

    own_registry.stop()
    stopped = time.monotonic()
    i = 0
    while time.monotonic() - stopped < OUTAGE_S:  # during: unknown writer schemas arrive
        produce("during", i, use_variant=i % 4 == 0)
        env.producer.poll(0)
        i += 1
        time.sleep(0.25)
    env.producer.flush(10)
    at_resume = observer.snapshot()
    env.workers.check_alive()
    own_registry.resume()
    resumed = time.monotonic()
    during = [e for e in produced if "-during-" in e]
    caught_up_s: float | None = None
    for i in range(40):  # after: 10 s more, variants included
        produce("after", i, use_variant=i % 4 == 0)
        env.producer.poll(0)
        time.sleep(0.25)
        if caught_up_s is None:
            sent_now = observer.snapshot().sent
            if all(e in sent_now for e in during):
                caught_up_s = time.monotonic() - resumed
    env.producer.flush(10)
    tally = observer.wait_for(len(produced), timeout=120, check=env.workers.check_alive)
    drained_s = time.monotonic() - resumed
    observer.stop()
    registry.close()

    env.workers.check_alive()
    assert all(w.alive() for w in env.workers.workers), "a worker stopped"
    missing = [e for e in produced if e not in tally.sent]
    assert not missing, f"{len(missing)} of {len(produced)} not delivered: {missing[:5]}"
    assert tally.dead_records == 0, f"dead letters: {tally.reasons()}"
    delivered_during = sum(1 for e in during if e in at_resume.sent)
    render_log = next(w for w in env.workers.workers if w.stage == "render").log_path.read_text(
        errors="replace"
    )
    waits = render_log.count("schema registry unreachable looking up schema id")
    assert waits >= 1, "render never had to wait for the registry"
    assert "reachable again" in render_log
    print(
        f"registry stopped {OUTAGE_S:.0f} s: {len(produced)} events produced "
        f"({len(during)} during the outage, {sum(1 for e in during if e in with_variant)} "
        f"of them with unseen writer schemas), {len(tally.sent)} delivered, "
        f"{tally.dead_records} dead; {delivered_during} of the outage's events delivered "
        f"before the registry came back; render logged {waits} wait line(s); the outage's "
        f"events all delivered {caught_up_s if caught_up_s is None else round(caught_up_s, 1)} "
        f"s after the registry resumed, everything {drained_s:.1f} s after"
    )
