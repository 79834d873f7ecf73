"""Retention and cleanup of every topic, subject naming, and the startup checks'
verdicts (issue 15 points 6 and 7). The same checks against the real broker:
tests/integration/test_topology_checks.py."""

from __future__ import annotations

from typing import Any

import pytest
from confluent_kafka.schema_registry import SchemaRegistryClient

from app.factory import create_app
from app.serde import Serde
from app.settings import Settings
from app.startup_checks import ExistingTopic, problems
from app.topology import (
    COMPACTED,
    DEAD,
    LANES,
    RAW,
    RETRIES,
    SENT,
    TABLES,
    TOPICS,
    TopicPolicy,
    changelog_topics,
    policy_of,
    subject_of,
)

HOUR_MS = 3_600_000
DAY_MS = 24 * HOUR_MS


def test_every_topic_has_a_policy_within_the_issue_bounds() -> None:
    s = Settings()
    for logical in TOPICS:
        p = policy_of(logical, s)
        assert p.cleanup == "delete" and p.retention_ms is not None, logical
    for logical in (RAW, *LANES.values(), *RETRIES.values()):
        assert HOUR_MS <= policy_of(logical, s).retention_ms <= 7 * DAY_MS  # type: ignore[operator]
    assert policy_of(DEAD, s).retention_ms == 14 * DAY_MS
    assert policy_of(DEAD, Settings(retention_dead_days=1.5)).retention_ms == 36 * HOUR_MS
    assert policy_of(SENT, Settings(retention_sent_hours=2)).retention_ms == 2 * HOUR_MS


@pytest.mark.parametrize("field", ["retention_dead_days", "retention_events_hours"])
@pytest.mark.parametrize("bad", [0, -1, float("nan"), float("inf"), 10**9, "x", None])
def test_retention_settings_refuse_nonsense(field: str, bad: object) -> None:
    with pytest.raises(ValueError):
        policy_of(DEAD, Settings(**{field: bad}))  # type: ignore[arg-type]


def test_policy_config_is_what_kafka_takes() -> None:
    assert TopicPolicy("delete", 5).config() == {"cleanup.policy": "delete", "retention.ms": "5"}
    assert COMPACTED.config() == {"cleanup.policy": "compact"}


def test_declared_faust_topics_carry_the_policy() -> None:
    app = create_app(Settings(stage="all", schema_registry_url="mock://topo"))
    topology = app.spillway  # type: ignore[attr-defined]
    for logical, topic in topology.topology.topics.items():
        assert topic.config == policy_of(logical, topology.settings).config(), logical
    changelogs = {t.changelog_topic.get_topic_name(): t for t in app.tables.values()}
    assert set(changelogs) == set(changelog_topics(topology.settings, "all"))
    for name, table in changelogs.items():
        assert table.changelog_topic.compacting, name  # Faust creates it compacted


def test_changelog_names_follow_the_owning_stage() -> None:
    s = Settings(app_id_prefix="p")
    assert changelog_topics(s, "dispatch") == {
        "p-dispatch-sent-ledger-changelog": "sent-ledger",
        "p-dispatch-dispatch-pressure-changelog": "dispatch-pressure",
    }
    assert changelog_topics(s, "render") == {}
    assert set(changelog_topics(s, "all").values()) == set(TABLES)
    for stage in ("dispatch", "analyser"):  # what the real apps declare
        app = create_app(Settings(stage=stage, app_id_prefix="p", schema_registry_url="mock://c"))
        names = {t.changelog_topic.get_topic_name() for t in app.tables.values()}
        assert names == set(changelog_topics(app.spillway.settings, stage))  # type: ignore[attr-defined]


def test_expected_topics_of_a_stage() -> None:
    app = create_app(Settings(stage="analyser", schema_registry_url="mock://e"))
    expected = app.spillway.topology.expected_topics()  # type: ignore[attr-defined]
    assert expected == {
        "email.dead": (4, policy_of(DEAD, Settings())),
        "spillway-analyser-dead-letter-counts-changelog": (4, COMPACTED),
    }


def test_subjects_use_the_topic_name_strategy() -> None:
    registry = SchemaRegistryClient.new_client({"url": "mock://subjects"})
    s = Settings(topic_namespace="ns.")
    topics = {s.topic(name): schema for name, schema in TOPICS.values()}
    Serde(registry, topics).register()
    assert sorted(registry.get_subjects()) == sorted(subject_of(t) for t in topics)
    assert subject_of("ns.email.dead") == "ns.email.dead-value"


# --- startup check verdicts ---------------------------------------------------------------

EXPECTED = {
    "email.dead": (4, TopicPolicy("delete", 14 * DAY_MS)),
    "app-t-changelog": (4, COMPACTED),
}


def test_matching_or_missing_topics_pass() -> None:
    assert problems(EXPECTED, {}) == ([], [])
    ok = {
        "email.dead": ExistingTopic(4, "delete", 14 * DAY_MS),
        "app-t-changelog": ExistingTopic(4, "compact", 604800000),
    }
    assert problems(EXPECTED, ok) == ([], [])
    more = {"email.dead": ExistingTopic(8, "delete", 14 * DAY_MS)}
    assert problems(EXPECTED, more) == ([], [])  # more partitions: more workers may share


def test_every_mismatch_is_named() -> None:
    bad = {
        "email.dead": ExistingTopic(2, "compact", 14 * DAY_MS),
        "app-t-changelog": ExistingTopic(4, "delete", 1000),
        "unrelated": ExistingTopic(1, None, None),
    }
    errors, warnings = problems(EXPECTED, bad)
    assert len(errors) == 3, errors
    assert "app-t-changelog is a table changelog with cleanup.policy=delete" in errors[0]
    assert "email.dead has 2 partitions, the topology needs 4" in errors[1]
    assert "email.dead has cleanup.policy=compact" in errors[2]
    assert warnings == []


def test_compact_delete_changelog_is_accepted_and_retention_only_warns() -> None:
    found = {
        "app-t-changelog": ExistingTopic(4, "compact,delete", 1),
        "email.dead": ExistingTopic(4, "delete", 7 * DAY_MS),
    }
    errors, warnings = problems(EXPECTED, found)
    assert errors == []
    week, fortnight = 7 * DAY_MS, 14 * DAY_MS
    assert warnings == [f"email.dead has retention.ms={week}, the topology says {fortnight}"]


def test_missing_cleanup_policy_means_the_broker_default_delete() -> None:
    errors, _ = problems(EXPECTED, {"app-t-changelog": ExistingTopic(4, None, None)})
    assert len(errors) == 1 and "cleanup.policy=delete" in errors[0]
    assert problems(EXPECTED, {"email.dead": ExistingTopic(4, "", None)}) == ([], [])


# --- the hook that runs the checks at worker start -----------------------------------------


class FakeApp:
    def __init__(self) -> None:
        self.started = 0

    async def on_first_start(self) -> None:
        self.started += 1


@pytest.mark.parametrize("enabled", [True, False])
def test_install_runs_the_check_at_first_start(
    monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture, enabled: bool
) -> None:
    import asyncio

    from app import startup_checks

    calls: list[Any] = []

    def failing_check(settings: Settings, topology: Any) -> list[str]:
        calls.append(topology)
        raise startup_checks.TopologyMismatch("worker x stopped: 1 existing topic(s) ...")

    monkeypatch.setattr(startup_checks, "check_topics", failing_check)
    app = FakeApp()
    startup_checks.install(app, Settings(startup_checks=enabled), "topology")  # type: ignore[arg-type]
    if enabled:
        with pytest.raises(SystemExit) as info:
            asyncio.run(app.on_first_start())
        assert info.value.code == startup_checks.EXIT_TOPOLOGY == 78
        assert "worker x stopped" in caplog.text
        assert calls == ["topology"]
    else:
        asyncio.run(app.on_first_start())
        assert calls == []
    assert app.started == 1  # Faust's own first-start work ran first, either way


def test_unreachable_kafka_is_not_a_verdict() -> None:
    from app.startup_checks import check_topics

    class DeadAdmin:
        def list_topics(self, timeout: float) -> Any:
            raise RuntimeError("no broker")

    app = create_app(Settings(stage="render", schema_registry_url="mock://dead"))
    warnings = check_topics(app.spillway.settings, app.spillway.topology, DeadAdmin())  # type: ignore[attr-defined]
    assert warnings and "not checked" in warnings[0]
