"""Retention applied at creation, and the startup checks, on the real broker (issue 15
points 6 and 7). Each test uses its own namespace and app id prefix."""

from __future__ import annotations

import asyncio
import contextlib
import os
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator

import pytest
from confluent_kafka.admin import AdminClient, ConfigResource, NewTopic, ResourceType

from app.factory import create_app
from app.settings import PROJECT_ROOT, Settings
from app.startup_checks import EXIT_TOPOLOGY, TopologyMismatch, check_topics
from app.topology import DEAD, RAW, SENT, TOPICS, changelog_topics

pytestmark = pytest.mark.integration


@pytest.fixture
def ns(stack: None) -> Iterator[str]:
    ns = f"t{uuid.uuid4().hex[:8]}"
    yield ns
    admin = AdminClient({"bootstrap.servers": Settings().kafka.bootstrap})
    mine = [t for t in admin.list_topics(timeout=10).topics if t.startswith(ns)]
    if mine:
        for f in admin.delete_topics(mine).values():
            with contextlib.suppress(Exception):
                f.result(10)


def configs(admin: AdminClient, topic: str) -> dict[str, str]:
    [future] = admin.describe_configs([ConfigResource(ResourceType.TOPIC, topic)]).values()
    return {k: v.value for k, v in future.result(10).items()}


def create(admin: AdminClient, topics: list[NewTopic]) -> None:
    for f in admin.create_topics(topics).values():
        f.result(15)
    names = {t.topic for t in topics}
    deadline = time.monotonic() + 15  # metadata reaches every listener shortly after
    while not names <= set(admin.list_topics(timeout=10).topics):
        assert time.monotonic() < deadline, f"{names} never appeared in the metadata"
        time.sleep(0.1)


def test_topics_are_created_with_their_retention_and_policy(ns: str) -> None:
    s = Settings(
        stage="dispatch", topic_namespace=f"{ns}.", app_id_prefix=ns, retention_dead_days=2
    )
    app = create_app(s)
    topology = app.spillway.topology  # type: ignore[attr-defined]

    async def declare_all() -> None:  # Faust's own creation path (Topic.declare)
        await app.producer.start()
        try:
            for logical in topology.used_by("dispatch"):
                await topology.topics[logical].declare()
            for table in app.tables.values():
                await table.changelog_topic.declare()
        finally:
            await app.producer.stop()

    asyncio.run(declare_all())
    admin = AdminClient(s.kafka.client_config())
    dead = configs(admin, s.topic(TOPICS[DEAD][0]))
    assert (dead["cleanup.policy"], dead["retention.ms"]) == ("delete", str(2 * 86_400_000))
    sent = configs(admin, s.topic(TOPICS[SENT][0]))
    assert sent["retention.ms"] == str(int(s.policy.retention_sent_hours * 3_600_000))
    lane = configs(admin, s.topic("email.dispatch.critical"))
    assert lane["retention.ms"] == str(int(s.policy.retention_events_hours * 3_600_000))
    changelogs = changelog_topics(s, "dispatch")
    assert len(changelogs) == 2
    for name in changelogs:
        assert configs(admin, name)["cleanup.policy"] == "compact", name
    assert check_topics(s, topology) == []  # what we created passes the checks


def test_check_names_every_mismatch(ns: str) -> None:
    s = Settings(stage="analyser", topic_namespace=f"{ns}.", app_id_prefix=ns)
    admin = AdminClient(s.kafka.client_config())
    [changelog] = changelog_topics(s, "analyser")
    create(
        admin,
        [
            NewTopic(s.topic(TOPICS[DEAD][0]), 2, 1),
            NewTopic(changelog, 4, 1, config={"cleanup.policy": "delete"}),
        ],
    )
    topology = create_app(s).spillway.topology  # type: ignore[attr-defined]
    with pytest.raises(TopologyMismatch) as info:
        check_topics(s, topology)
    text = str(info.value)
    assert "2 existing topic(s) do not match" in text
    assert f"{ns}.email.dead has 2 partitions, the topology needs 4" in text
    assert f"{changelog} is a table changelog with cleanup.policy=delete" in text
    assert s.topic(TOPICS[RAW][0]) not in text  # not used by the analyser, not created


def test_worker_stops_with_one_clear_message(ns: str) -> None:
    """A real ``faust -A app worker`` on a topic with too few partitions exits non-zero
    before consuming, and says why."""
    s = Settings(stage="route", topic_namespace=f"{ns}.", app_id_prefix=ns)
    admin = AdminClient(s.kafka.client_config())
    create(admin, [NewTopic(s.topic("email.rendered"), 1, 1)])
    env = {
        **os.environ,
        "SPILLWAY_STAGE": "route",
        "SPILLWAY_TOPIC_NAMESPACE": f"{ns}.",
        "SPILLWAY_APP_ID_PREFIX": ns,
        "SPILLWAY_WEB_PORT": "0",
        "SPILLWAY_DATA_DIR": str(PROJECT_ROOT / "var" / "test-faust" / ns),
    }
    proc = subprocess.Popen(
        [sys.executable, "-m", "faust", "-A", "app", "worker", "-l", "warn"],
        cwd=PROJECT_ROOT,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    deadline = time.monotonic() + 60
    try:
        while proc.poll() is None and time.monotonic() < deadline:
            time.sleep(0.2)
        assert proc.poll() is not None, "the worker kept running on a mismatched topic"
    finally:
        if proc.poll() is None:
            proc.kill()
        output = proc.communicate(timeout=10)[0]
    assert proc.returncode == EXIT_TOPOLOGY, output[-2000:]
    assert "Traceback" not in output, output[-3000:]
    assert f"{ns}.email.rendered has 1 partitions, the topology needs 4" in output, output[-3000:]
    # it never created its other topics: it stopped before any consumer started
    assert s.topic("email.dispatch.normal") not in admin.list_topics(timeout=10).topics
