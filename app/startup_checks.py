"""Startup checks: do the topics that already exist match the topology?

Faust creates a missing topic with the configured partition count and policy, but
never touches one that exists. A topic with fewer partitions than configured caps
the workers that can share it and breaks the co-partitioning of a stage's tables;
a changelog with ``cleanup.policy=delete`` loses table state (the sent-ledger: a
replay would send twice) once its retention passes. Either stops the worker with
one message that lists every mismatch and how to fix it.

A retention other than the topology's is only logged: operators may tune it.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from app.settings import Settings
from app.topology import TopicPolicy, Topology

log = logging.getLogger(__name__)

EXIT_TOPOLOGY = 78  # EX_CONFIG (sysexits.h): the configuration does not match the cluster


class TopologyMismatch(RuntimeError):
    """Existing topics do not match the topology; the message lists every problem."""


@dataclass(frozen=True)
class ExistingTopic:
    partitions: int
    cleanup: str | None  # cleanup.policy as Kafka reports it ("delete", "compact,delete")
    retention_ms: int | None


def problems(
    expected: Mapping[str, tuple[int, TopicPolicy]], existing: Mapping[str, ExistingTopic]
) -> tuple[list[str], list[str]]:
    """(errors, warnings) for the topics of ``expected`` that exist."""
    errors: list[str] = []
    warnings: list[str] = []
    for name, (partitions, policy) in sorted(expected.items()):
        found = existing.get(name)
        if found is None:
            continue  # Faust creates it as configured
        if found.partitions < partitions:
            errors.append(
                f"{name} has {found.partitions} partitions, the topology needs {partitions} "
                f"(SPILLWAY_TOPIC_PARTITIONS): add partitions with kafka-topics --alter "
                f"--partitions {partitions} (keyed order changes for moved keys) or set "
                f"SPILLWAY_TOPIC_PARTITIONS={found.partitions}"
            )
        flags = {f.strip() for f in (found.cleanup or "delete").split(",") if f.strip()}
        if policy.cleanup == "compact" and "compact" not in flags:
            errors.append(
                f"{name} is a table changelog with cleanup.policy={found.cleanup or 'delete'}; "
                "it must be compact (or its state is lost after retention.ms): "
                "kafka-configs --alter --add-config cleanup.policy=compact"
            )
        elif policy.cleanup == "delete" and "delete" not in flags:
            errors.append(
                f"{name} has cleanup.policy={found.cleanup}; the topology keeps it by time "
                f"(delete, retention.ms={policy.retention_ms})"
            )
        elif (
            policy.retention_ms is not None
            and found.retention_ms is not None
            and found.retention_ms != policy.retention_ms
        ):
            warnings.append(
                f"{name} has retention.ms={found.retention_ms}, the topology says "
                f"{policy.retention_ms}"
            )
    return errors, warnings


def describe(admin: Any, names: list[str], timeout_s: float = 15.0) -> dict[str, ExistingTopic]:
    """Partition count and cleanup/retention of each topic of ``names`` that exists
    (``admin``: a confluent-kafka AdminClient)."""
    from confluent_kafka.admin import ConfigResource, ResourceType

    meta = admin.list_topics(timeout=timeout_s).topics
    present = [n for n in names if n in meta and meta[n].error is None]
    if not present:
        return {}
    futures = admin.describe_configs(
        [ConfigResource(ResourceType.TOPIC, n) for n in present], request_timeout=timeout_s
    )
    out: dict[str, ExistingTopic] = {}
    for resource, future in futures.items():
        configs = future.result(timeout=timeout_s)
        cleanup = configs.get("cleanup.policy")
        retention = configs.get("retention.ms")
        out[resource.name] = ExistingTopic(
            partitions=len(meta[resource.name].partitions),
            cleanup=cleanup.value if cleanup is not None else None,
            retention_ms=int(retention.value) if retention and retention.value else None,
        )
    return out


def check_topics(settings: Settings, topology: Topology, admin: Any = None) -> list[str]:
    """Raise :class:`TopologyMismatch` naming every problem; return the warnings."""
    if admin is None:
        from confluent_kafka.admin import AdminClient

        admin = AdminClient({**settings.kafka.client_config(), "client.id": "spillway-check"})
    expected = topology.expected_topics()
    try:
        existing = describe(admin, sorted(expected))
    except Exception as exc:  # Kafka not reachable yet: Faust waits for it; no verdict
        log.warning("topology: cannot check existing topics (%s); not checked", exc)
        return [f"not checked: {exc}"]
    errors, warnings = problems(expected, existing)
    for w in warnings:
        log.warning("topology: %s", w)
    if errors:
        raise TopologyMismatch(
            f"worker {settings.app_id()} stopped: {len(errors)} existing topic(s) do not match "
            "the topology (app/topology.py):\n  - " + "\n  - ".join(errors)
        )
    return warnings


def install(app: Any, settings: Settings, topology: Topology) -> None:
    """Run :func:`check_topics` when the worker starts, before any consumer or agent:
    a mismatch stops the worker (the exception's message is the one clear message)."""
    import asyncio

    first_start = app.on_first_start

    async def on_first_start() -> None:
        await first_start()
        if settings.startup_checks:
            try:
                await asyncio.to_thread(check_topics, settings, topology)
            except TopologyMismatch as exc:
                # One message, no traceback: the problem is the cluster, not the code.
                log.critical("%s", exc)
                raise SystemExit(EXIT_TOPOLOGY) from None

    app.on_first_start = on_first_start
