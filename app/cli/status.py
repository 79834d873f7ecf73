"""``spillway status``: each stage's consumer group, its members and lag, and dead letters.

From Kafka (confluent-kafka's AdminClient): consumer group state and members,
committed offsets against the topics' end offsets, and the record count of
``email.dead``. The intake stage has no consumer group and does not show.
Breaker states and dead letters by reason are not in Kafka: with ``--worker URL``
they are read from that worker's ``/status.json`` (app/status.py).
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from typing import Any

import click

from app.cli import (
    EXIT_CODES_HELP,
    EXIT_FAILURE,
    EXIT_UNAVAILABLE,
    CliError,
    kafka_config,
    load_settings,
)
from app.settings import Settings
from app.topology import DEAD, RAW, STAGE_ORDER, STAGES, TOPICS

#: Stages that consume (intake only produces); all but OPTIONAL must have a worker.
CONSUMER_STAGES = tuple(s for s in STAGE_ORDER if STAGES[s][0])
OPTIONAL_STAGES = {"analyser"}


@dataclass
class TopicLag:
    topic: str
    partitions: int
    records: int  # end - earliest, summed over partitions
    lag: int  # not yet consumed by the group, summed over partitions


@dataclass
class StageStatus:
    stage: str
    group: str
    state: str
    members: int
    topics: list[TopicLag] = field(default_factory=list)

    @property
    def lag(self) -> int:
        return sum(t.lag for t in self.topics)


@dataclass
class Report:
    bootstrap: str
    stages: list[StageStatus]
    dead_letters: int | None  # None: the topic does not exist yet
    raw_events: int | None
    missing_topics: list[str]
    workers: dict[str, Any] = field(default_factory=dict)  # --worker URL -> status.json

    def down(self) -> list[str]:
        """Stages with no live worker (the dev-mode ``all`` group covers every stage)."""
        if any(s.stage == "all" and s.members for s in self.stages):
            return []
        return [
            s.stage
            for s in self.stages
            if s.stage != "all" and s.stage not in OPTIONAL_STAGES and not s.members
        ]

    def asdict(self) -> dict[str, Any]:
        d = asdict(self)
        for s, stage in zip(d["stages"], self.stages, strict=True):
            s["lag"] = stage.lag
        d["down"] = self.down()
        return d


def consumed_topics(stage: str) -> list[str]:
    """Kafka topic names (un-namespaced) that ``stage`` consumes."""
    stages = CONSUMER_STAGES if stage == "all" else (stage,)
    return [TOPICS[logical][0] for s in stages for logical in STAGES[s][0]]


def collect(admin: Any, settings: Settings, timeout_s: float) -> Report:
    """Ask Kafka (through ``admin``, an AdminClient) for everything the report shows."""
    from confluent_kafka import ConsumerGroupTopicPartitions, TopicPartition
    from confluent_kafka.admin import OffsetSpec

    metadata = admin.list_topics(timeout=timeout_s)
    wanted = [settings.topic(name) for name, _ in TOPICS.values()]
    partitions = {t: len(metadata.topics[t].partitions) for t in wanted if t in metadata.topics}

    def offsets(spec: Any) -> dict[tuple[str, int], int]:
        request = {TopicPartition(t, p): spec for t, n in partitions.items() for p in range(n)}
        if not request:
            return {}
        futures = admin.list_offsets(request, request_timeout=timeout_s)
        return {(tp.topic, tp.partition): f.result().offset for tp, f in futures.items()}

    latest, earliest = offsets(OffsetSpec.latest()), offsets(OffsetSpec.earliest())

    def records(topic: str) -> int | None:
        if topic not in partitions:
            return None
        return sum(latest[(topic, p)] - earliest[(topic, p)] for p in range(partitions[topic]))

    stages = [*CONSUMER_STAGES, "all"]
    groups = [settings.app_id(stage) for stage in stages]
    described = admin.describe_consumer_groups(groups, request_timeout=timeout_s)
    result: list[StageStatus] = []
    for stage, group in zip(stages, groups, strict=True):
        desc = described[group].result()
        state = getattr(desc.state, "name", str(desc.state))
        [committed_f] = admin.list_consumer_group_offsets(
            [ConsumerGroupTopicPartitions(group)], request_timeout=timeout_s
        ).values()
        committed = {
            (tp.topic, tp.partition): tp.offset for tp in committed_f.result().topic_partitions
        }
        if not desc.members and not committed:
            if stage == "all" or stage in OPTIONAL_STAGES:
                continue  # never ran under this prefix
            state = "NO GROUP"  # Kafka calls an unknown group DEAD
        status = StageStatus(stage, group, state, len(desc.members))
        for name in consumed_topics(stage):
            topic = settings.topic(name)
            if topic not in partitions:
                continue
            lag = 0
            for p in range(partitions[topic]):
                end, start = latest[(topic, p)], earliest[(topic, p)]
                done = committed.get((topic, p), -1)
                lag += end - max(done, start) if done >= 0 else end - start
            status.topics.append(TopicLag(topic, partitions[topic], records(topic) or 0, lag))
        result.append(status)
    if any(s.stage == "all" and s.members for s in result):
        # a dev-mode worker runs every stage: per-stage groups that never ran are noise
        result = [s for s in result if s.state != "NO GROUP"]
    return Report(
        bootstrap=settings.kafka.bootstrap,
        stages=result,
        dead_letters=records(settings.topic(TOPICS[DEAD][0])),
        raw_events=records(settings.topic(TOPICS[RAW][0])),
        missing_topics=[t for t in wanted if t not in partitions],
    )


def worker_status(url: str, timeout_s: float) -> dict[str, Any]:
    """A worker's ``/status.json``, or ``{"error": ...}`` if it cannot be had."""
    import httpx

    try:
        response = httpx.get(url.rstrip("/") + "/status.json", timeout=timeout_s)
        response.raise_for_status()
        body = response.json()
        return body if isinstance(body, dict) else {"error": "not a JSON object"}
    except (httpx.HTTPError, ValueError) as exc:
        return {"error": f"{type(exc).__name__}: {exc}"[:200]}


def worker_lines(url: str, view: dict[str, Any]) -> list[str]:
    """Breakers and dead letters by reason from one worker's status model."""
    if "error" in view:
        return [f"worker {url}: unavailable ({view['error']})"]
    lines = [f"worker {url}:"]
    for p in view.get("providers") or []:
        lines.append(
            f"  provider {p.get('provider', '?'):<16} breaker {p.get('breaker', '?'):<10} "
            f"sent {p.get('sent', '-')}  quota/s {p.get('quota_per_s') or '-'}"
        )
    dead = view.get("dead_letters") or {}
    lines.append(f"  dead letters counted by this worker: {dead.get('total', '-')}")
    for row in dead.get("by_reason") or []:
        stage, reason = row.get("stage", "?"), row.get("reason", "?")
        lines.append(f"    {stage:<10}{reason:<26}{row.get('count')}")
    return lines


def render(report: Report, max_lag: int | None) -> str:
    lines = [f"Kafka {report.bootstrap}", ""]
    header = f"{'STAGE':<10}{'GROUP':<32}{'STATE':<14}{'MEMBERS':>8}{'LAG':>10}"
    lines.append(header)
    down = report.down()
    for s in report.stages:
        flag = "  DOWN" if s.stage in down else ""
        if max_lag is not None and s.lag > max_lag:
            flag += f"  LAG > {max_lag}"
        lines.append(f"{s.stage:<10}{s.group:<32}{s.state:<14}{s.members:>8}{s.lag:>10}{flag}")
        for t in s.topics:
            lines.append(f"{'':<10}  {t.topic:<40} lag {t.lag:>8}   of {t.records} records")
    lines.append("")
    raw = "-" if report.raw_events is None else report.raw_events
    dead = "-" if report.dead_letters is None else report.dead_letters
    lines.append(f"raw events retained: {raw}   dead letters retained: {dead}")
    if not report.workers:
        lines.append("breakers, dead letters by reason: add --worker URL (a worker's web server)")
    for url, view in report.workers.items():
        lines += ["", *worker_lines(url, view)]
    if report.missing_topics:
        lines.append(f"topics not created yet: {', '.join(report.missing_topics)}")
    return "\n".join(lines)


@click.command(
    epilog=EXIT_CODES_HELP,
    short_help="Stages' consumer groups, workers and lag; dead letters.",
)
@click.option(
    "--max-lag",
    type=click.IntRange(0),
    help="Exit 1 if any stage's lag is above this many records.",
)
@click.option(
    "--timeout",
    type=click.FloatRange(min=0.1),
    default=10.0,
    show_default=True,
    help="Seconds to wait for Kafka's answers.",
)
@click.option(
    "-w",
    "--worker",
    "workers",
    multiple=True,
    metavar="URL",
    help="A worker's web server (e.g. http://127.0.0.1:6069): adds its providers' breaker "
    "states and the dead letters by reason from its /status.json. Repeatable.",
)
@click.option("--json", "as_json", is_flag=True, help="Print the report as JSON.")
def status(max_lag: int | None, timeout: float, workers: tuple[str, ...], as_json: bool) -> None:
    """Show each stage's consumer group, live workers and lag, and the dead-letter count.

    Exits 1 when a stage has no live worker (unless a dev-mode `all` worker runs)
    or, with --max-lag, when a stage lags more than that: usable as a health check.
    The consumer groups are <SPILLWAY_APP_ID_PREFIX>-<stage>.
    """
    from confluent_kafka import KafkaException
    from confluent_kafka.admin import AdminClient

    settings = load_settings()
    admin = AdminClient(kafka_config(settings))
    try:
        report = collect(admin, settings, timeout)
    except KafkaException as exc:
        raise CliError(
            f"Kafka at {settings.kafka.bootstrap} did not answer: {exc}", EXIT_UNAVAILABLE
        ) from None
    report.workers = {url: worker_status(url, timeout) for url in workers}
    if as_json:
        click.echo(json.dumps(report.asdict(), indent=2))
    else:
        click.echo(render(report, max_lag))
    lagging = [s.stage for s in report.stages if max_lag is not None and s.lag > max_lag]
    if report.down() or lagging:
        problems = [f"no live worker: {', '.join(report.down())}"] if report.down() else []
        if lagging:
            problems.append(f"lag over {max_lag}: {', '.join(lagging)}")
        raise CliError("; ".join(problems), EXIT_FAILURE)
