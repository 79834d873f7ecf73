"""The pipeline's topics, created before any worker starts (as in production)."""

from __future__ import annotations

from confluent_kafka import KafkaError, KafkaException
from confluent_kafka.admin import AdminClient, NewTopic

from app.settings import Settings
from app.topology import TOPICS, policy_of
from harness.workers import wait_until


def create_pipeline_topics(
    bootstrap: str, settings: Settings, *, exist_ok: bool = False, timeout: float = 30.0
) -> bool:
    """Every topic of the topology in ``settings``' namespace, with the topology's
    partitions and configs, so that the workers' startup checks find them as they
    expect and no worker subscribes to a topic that is not in its metadata yet (on a
    loaded machine one logged "Ignoring missing topic" and never read it). With
    ``exist_ok`` a topic made meanwhile (by a worker) is no error. Returns whether the
    broker lists them all within ``timeout``."""
    admin = AdminClient({"bootstrap.servers": bootstrap})
    topics = [
        NewTopic(
            settings.topic(name),
            num_partitions=settings.kafka.topic_partitions,
            replication_factor=settings.kafka.topic_replication,
            config=policy_of(logical, settings).config(),
        )
        for logical, (name, _) in TOPICS.items()
    ]
    for future in admin.create_topics(topics).values():
        try:
            future.result(timeout)
        except KafkaException as exc:
            if not (exist_ok and exc.args[0].code() == KafkaError.TOPIC_ALREADY_EXISTS):
                raise
    names = {t.topic for t in topics}
    return wait_until(lambda: names <= set(admin.list_topics(timeout=5).topics), timeout)
