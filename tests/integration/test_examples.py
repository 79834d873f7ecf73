"""Producers in other languages, run as a user would, against the local stack.

One dev-mode worker (every stage in one process) serves the whole module; each
example produces to this module's namespaced ``email.raw-events`` and the test
waits until the event is on ``email.sent``. Covers docs/producing.md's examples
(kcat, Node JSON and Avro, Java) and ``spillway send`` (JSON and Avro).
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import time
from collections.abc import Iterator

import pytest

from app.settings import PROJECT_ROOT
from tests.plugins.stack import Env

pytestmark = pytest.mark.integration

EXAMPLES = PROJECT_ROOT / "examples"


@pytest.fixture(scope="module")
def env(stack: None) -> Iterator[Env]:
    e = Env("test_examples")
    e.workers.add("all", SPILLWAY_INTAKE_AUTH="off")
    e.observe()
    yield e
    e.close()


def run(
    env: Env,
    cmd: list[str],
    cwd: str | os.PathLike[str] = PROJECT_ROOT,
    timeout: float = 120,
    **extra: str,
) -> str:
    """Run an example with the module's topic; return its output (fail on a non-zero exit)."""
    child_env = {
        **os.environ,
        "TOPIC": env.topic("email.raw-events"),
        "KAFKA_BOOTSTRAP": env.settings.kafka.bootstrap,
        **env.overrides,
        **extra,
    }
    done = subprocess.run(
        cmd, cwd=cwd, env=child_env, capture_output=True, text=True, timeout=timeout
    )
    assert done.returncode == 0, f"{cmd} exited {done.returncode}:\n{done.stdout}\n{done.stderr}"
    return done.stdout


def delivered(env: Env, *event_ids: str, timeout: float = 90) -> None:
    assert env.observer is not None
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        env.workers.check_alive()
        tally = env.observer.snapshot()
        if set(event_ids) <= set(tally.sent):
            return
        dead = {i: tally.dead[i].reason for i in event_ids if i in tally.dead}
        assert not dead, f"dead-lettered: {dead}"
        time.sleep(0.2)
    pytest.fail(f"not delivered within {timeout} s: {set(event_ids) - set(tally.sent)}")


@pytest.mark.skipif(shutil.which("kcat") is None, reason="kcat missing: scripts/setup installs it")
def test_kcat(env: Env) -> None:
    event_id = f"{env.ns}-kcat"
    out = run(env, [str(EXAMPLES / "kcat" / "produce.sh"), event_id, "grace@example.com"])
    assert f"produced {event_id}" in out
    delivered(env, event_id)


@pytest.mark.skipif(shutil.which("npm") is None, reason="needs Node.js and npm")
def test_node_json_and_avro(env: Env) -> None:
    node_dir = EXAMPLES / "node"
    if not (node_dir / "node_modules" / "kafkajs").exists():
        run(env, ["npm", "ci", "--no-audit", "--no-fund"], cwd=node_dir, timeout=300)
    ids = [f"{env.ns}-node-json", f"{env.ns}-node-avro"]
    assert "(json)" in run(env, ["node", "produce.js", ids[0]], cwd=node_dir)
    assert "(avro)" in run(
        env,
        ["node", "produce.js", "--avro", ids[1]],
        cwd=node_dir,
        SCHEMA_REGISTRY_URL=env.settings.registry.url,
    )
    delivered(env, *ids)
    assert env.observer is not None
    sent = env.observer.snapshot().sent
    assert {sent[i].template for i in ids} == {"order_confirmation"}


@pytest.mark.skipif(shutil.which("mvn") is None, reason="needs Maven (scripts/setup installs it)")
def test_java(env: Env) -> None:
    event_id = f"{env.ns}-java"
    out = run(
        env,
        ["mvn", "-q", "-B", "compile", "exec:java", f"-Dexec.args={event_id}"],
        cwd=EXAMPLES / "java",
        timeout=300,
    )
    assert f"{event_id} -> " in out
    delivered(env, event_id)


def test_spillway_send(env: Env) -> None:
    ids = [f"{env.ns}-cli-json", f"{env.ns}-cli-avro"]
    cli = [
        sys.executable,
        "-m",
        "app.cli.main",
        "send",
        "-t",
        "password_reset",
        "--to",
        "cli@example.com",
        "-p",
        "critical",
    ]
    out = run(env, [*cli, "--event-id", ids[0]])
    assert out.startswith(f"{ids[0]} -> {env.topic('email.raw-events')} partition ")
    run(env, [*cli, "--event-id", ids[1], "--format", "avro"])
    delivered(env, *ids)
