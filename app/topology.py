"""The whole topology in one place: topics, their value schemas, and which stage
runs which agents.

    email.raw-events.{critical,normal,bulk} + email.raw-events (catch-all)
        --[render]--> email.rendered.{critical,normal,bulk}
        --[route]--> email.dispatch.{critical,normal,bulk} --[dispatch]--> email.sent;
    every stage can also emit to email.dead.
    dispatch --(retryable failure)--> email.dispatch.retry-N --(after its delay)--> lane.

Priority travels in the topic from the first hop (issue 14): a producer that knows an
event's priority writes it to ``email.raw-events.<priority>`` (the HTTP intake does so
for JSON events), and each stage runs one agent per priority topic, so a critical
event never waits in a partition behind a burst of bulk. ``email.raw-events`` stays
the catch-all for producers that don't care: render reads it at normal priority and
sends each event on by the priority it holds. ``email.rendered`` (no priority) is only
read, for records written before the per-priority topics and dead-letter replays.
The rendered topics carry DispatchRequest values with routing headers
(``app.stages.route.ROUTING_HEADERS``), so route copies bytes to the lanes.

Agents refer to topics by the logical names below, never by strings of their own.
Every topic carries raw bytes: values are Avro in Confluent framing (JSON is also
accepted on raw-events), decoded by the stage itself so that a bad message becomes
a dead letter instead of an error inside Faust.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from app.models import PRIORITIES
from app.settings import Settings

RAW = "raw"
RENDERED = "rendered"
#: Per-priority raw and rendered topics (logical names), by priority.
RAW_LANES = {p: f"raw.{p}" for p in PRIORITIES}
RENDERED_LANES = {p: f"rendered.{p}" for p in PRIORITIES}
SENT = "sent"
DEAD = "dead"
LANES = {p: f"dispatch.{p}" for p in PRIORITIES}
#: Delayed retry topics, by attempt (Spring Kafka's retryable-topics pattern): a
#: message that failed n times waits on retry-n until its not_before, then goes back
#: to its lane. Attempts past the last topic reuse it.
RETRIES = {n: f"dispatch.retry-{n}" for n in (1, 2, 3)}


def dispatch_topics() -> dict[str, str]:
    """Lane or retry name (``critical``, ``retry-1``) -> Kafka topic name (no namespace):
    the topics the dispatch stage reads, as the status page names them."""
    names = (*LANES.values(), *RETRIES.values())
    return {name.removeprefix("dispatch."): TOPICS[name][0] for name in names}


def retry_topic(attempts: int) -> str:
    return RETRIES[min(attempts, max(RETRIES))]


#: logical name -> (Kafka topic name, value schema file stem)
TOPICS: dict[str, tuple[str, str]] = {
    RAW: ("email.raw-events", "raw_event"),
    **{raw: (f"email.raw-events.{p}", "raw_event") for p, raw in RAW_LANES.items()},
    RENDERED: ("email.rendered", "rendered_email"),
    # DispatchRequest values: route moves their bytes to the lanes unchanged.
    **{r: (f"email.rendered.{p}", "dispatch_request") for p, r in RENDERED_LANES.items()},
    **{lane: (f"email.{lane}", "dispatch_request") for lane in LANES.values()},
    **{name: (f"email.{name}", "dispatch_request") for name in RETRIES.values()},
    SENT: ("email.sent", "send_result"),
    DEAD: ("email.dead", "dead_letter"),
}

#: Faust tables (app/tables/*) -> the stage whose app owns them. Each has a compacted
#: changelog topic named ``<app id>-<table>-changelog`` (app id: ``<prefix>-<stage>``).
TABLES: dict[str, str] = {
    "sent-ledger": "dispatch",
    "dispatch-pressure": "dispatch",
    "dead-letter-counts": "analyser",
}

#: logical topic -> which retention setting applies (see :func:`policy_of`)
RETENTION_CLASS: dict[str, str] = {
    RAW: "events",
    RENDERED: "events",
    **{name: "events" for name in (*RAW_LANES.values(), *RENDERED_LANES.values())},
    **{lane: "events" for lane in LANES.values()},
    **{name: "events" for name in RETRIES.values()},
    SENT: "sent",
    DEAD: "dead",
}


@dataclass(frozen=True)
class TopicPolicy:
    """How Kafka keeps a topic: ``cleanup.policy`` and ``retention.ms`` (None: compacted,
    kept until a newer value of the key replaces it)."""

    cleanup: str  # "delete" or "compact"
    retention_ms: int | None

    def config(self) -> dict[str, str]:
        """Topic configs set when the topic is created."""
        conf = {"cleanup.policy": self.cleanup}
        if self.retention_ms is not None:
            conf["retention.ms"] = str(self.retention_ms)
        return conf


COMPACTED = TopicPolicy("compact", None)


def policy_of(logical: str, settings: Settings) -> TopicPolicy:
    """Retention and cleanup policy of a pipeline topic (lanes and raw events: hours to
    days; dead letters: ``retention_dead_days``, 14 by default)."""
    kind = RETENTION_CLASS[logical]
    if kind == "events":
        return TopicPolicy("delete", int(settings.policy.retention_events_hours * 3_600_000))
    if kind == "sent":
        return TopicPolicy("delete", int(settings.policy.retention_sent_hours * 3_600_000))
    return TopicPolicy("delete", int(settings.policy.retention_dead_days * 86_400_000))


def changelog_topics(settings: Settings, stage: str = "all") -> dict[str, str]:
    """Changelog topic name -> table, for the tables the apps of ``stage`` own (the
    apps of a dev-mode ``all`` worker: one app id, every table)."""
    out: dict[str, str] = {}
    for table, owner in TABLES.items():
        if stage == "all" or stage == owner:
            out[f"{settings.app_id(stage if stage == 'all' else owner)}-{table}-changelog"] = table
    return out


def subject_of(topic: str) -> str:
    """Schema Registry subject of a topic's values: TopicNameStrategy, ``<topic>-value``
    (the only strategy Spillway uses; app/serde.py registers under it)."""
    return f"{topic}-value"


#: stage -> (topics it consumes, topics it produces)
STAGES: dict[str, tuple[tuple[str, ...], tuple[str, ...]]] = {
    "intake": ((), (RAW, *RAW_LANES.values())),
    "render": ((*RAW_LANES.values(), RAW), (*RENDERED_LANES.values(), DEAD)),
    "route": ((*RENDERED_LANES.values(), RENDERED), (*LANES.values(), DEAD)),
    "dispatch": (
        (*LANES.values(), *RETRIES.values()),
        (SENT, DEAD, *LANES.values(), *RETRIES.values()),
    ),
    "analyser": ((DEAD,), ()),  # counts dead letters; produces only its table's changelog
}
STAGE_ORDER = ("intake", "render", "route", "dispatch", "analyser")


def stages_of(stage: str) -> tuple[str, ...]:
    """The stages one worker runs: ``all`` (dev mode) runs every stage."""
    return STAGE_ORDER if stage == "all" else (stage,)


def topic_name(logical: str, settings: Settings | None = None) -> str:
    """The Kafka name of topic ``logical`` (``sent`` -> ``email.sent``), in ``settings``'
    namespace (none: without one): for code that has no Topology (CLI, harness, bench)."""
    name = TOPICS[logical][0]
    return settings.topic(name) if settings is not None else name


def topic_schemas(settings: Settings | None = None) -> dict[str, str]:
    """Kafka topic name (in ``settings``' namespace; none: no namespace) -> schema file
    stem: what a ``Serde`` is built with, by the workers, the CLI and the harness."""
    name = settings.topic if settings is not None else str
    return {name(topic): schema for topic, schema in TOPICS.values()}


@dataclass
class Topology:
    """The Faust topic objects of one app, by logical name."""

    settings: Settings
    topics: dict[str, Any]

    def name(self, logical: str) -> str:
        return self.settings.topic(TOPICS[logical][0])

    def schema_of(self, logical: str) -> str:
        return TOPICS[logical][1]

    def topic_schemas(self) -> dict[str, str]:
        """Kafka topic name -> schema file stem, for registration."""
        return topic_schemas(self.settings)

    def policy(self, logical: str) -> TopicPolicy:
        return policy_of(logical, self.settings)

    def expected_topics(self, stage: str | None = None) -> dict[str, tuple[int, TopicPolicy]]:
        """Topic name -> (partitions, policy) that a worker of ``stage`` relies on: its
        pipeline topics and its tables' changelogs (compacted)."""
        stage = stage or self.settings.stage
        parts = self.settings.kafka.topic_partitions
        out = {self.name(lg): (parts, self.policy(lg)) for lg in self.used_by(stage)}
        for changelog in changelog_topics(self.settings, stage):
            out[changelog] = (parts, COMPACTED)
        return out

    def used_by(self, stage: str) -> list[str]:
        names: list[str] = []
        for s in stages_of(stage):
            consumed, produced = STAGES[s]
            names += [n for n in (*consumed, *produced) if n not in names]
        return names


def declare(app: Any, settings: Settings) -> Topology:
    topics = {
        logical: app.topic(
            settings.topic(name),
            partitions=settings.kafka.topic_partitions,
            replicas=settings.kafka.topic_replication,
            key_type=bytes,
            value_type=bytes,
            key_serializer="raw",
            value_serializer="raw",
            internal=True,  # Faust creates it with our partition count if missing
            config=policy_of(logical, settings).config(),  # retention, cleanup policy
        )
        for logical, (name, _) in TOPICS.items()
    }
    return Topology(settings, topics)
