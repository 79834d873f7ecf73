"""Reading ``email.dead`` and replaying dead letters to the stage that gave up.

The operator CLI (``app/cli/dead.py``) and the tests use this module; what goes
where is decided by :func:`app.stages.deadletters.plan_replay`.

- Reading: a confluent-kafka consumer with a throwaway group (never committed)
  assigned to every partition of ``email.dead`` from the start (or from the first
  offset at ``since``) up to the end offsets seen at start, so a read terminates.
- Replaying: one record per event id (its newest dead letter), produced with
  ``acks=all`` and Java's murmur2 partitioner (as Faust's producer does, so a
  dispatch request lands in the partition that owns its sent-ledger entry), and a
  ``spillway-replay: <n>`` header. Replaying twice is harmless: the sent-ledger
  skips an event id already sent.
"""

from __future__ import annotations

import io
import logging
import time
import uuid
from collections import Counter
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from typing import Any, Protocol

import fastavro

from app.cli import kafka_config
from app.errors import DecodeError
from app.serde import Serde, from_avro, parse
from app.settings import Settings
from app.stages.deadletters import (
    DeadLetterFilter,
    ReplayItem,
    Skipped,
    StoredDeadLetter,
    newest_per_event,
    plan_replay,
)
from app.topology import DEAD, TOPICS, topic_schemas

log = logging.getLogger(__name__)


class ReplayError(Exception):
    """The replay could not be completed (a topic is missing, the broker did not ack)."""


def topic_name(settings: Settings, logical: str) -> str:
    return settings.topic(TOPICS[logical][0])


class SyncDecoder:
    """Decodes framed Avro without an event loop (``Serde.decode`` is async).

    A writer schema that is not one of ours (an older version) is fetched from the
    registry once and resolved against our reader schema.
    """

    def __init__(self, serde: Serde) -> None:
        self.serde = serde
        self._writers: dict[int, Any] = {}

    def __call__(self, data: bytes, name: str) -> Any:
        try:
            return self.serde.decode_known(data, name)
        except DecodeError:
            if len(data) < 5 or data[0] != 0:
                raise
        schema_id = int.from_bytes(data[1:5], "big")
        writer = self._writers.get(schema_id)
        if writer is None:
            try:
                writer = parse(self.serde.registry.get_schema(schema_id).schema_str)
            except Exception as exc:
                raise DecodeError(f"schema id {schema_id} is not known: {exc}") from exc
            self._writers[schema_id] = writer
        try:
            reader = self.serde.readers[name]
            datum = fastavro.schemaless_reader(io.BytesIO(data[5:]), writer, reader)
            return from_avro(name, datum)  # type: ignore[arg-type]
        except Exception as exc:
            raise DecodeError(f"not a {name} (schema id {schema_id}): {exc}") from exc


# --- the outside world, as two small interfaces ------------------------------------


class ReplaySink(Protocol):
    def produce(
        self, topic: str, key: bytes | None, value: bytes, headers: list[tuple[str, bytes]]
    ) -> None: ...

    def flush(self) -> None:
        """Wait for every ack; raise ReplayError if any record was not written."""


@dataclass
class Backend:
    """What the CLI works with: settings, a serde, dead letters, and a sink factory.

    ``read(since_ms)`` yields stored dead letters; tests pass lists and fakes.
    """

    settings: Settings
    serde: Serde
    read: Callable[[int | None], Iterable[StoredDeadLetter]]
    sink: Callable[[], ReplaySink]
    decode: SyncDecoder = field(init=False)

    def __post_init__(self) -> None:
        self.decode = SyncDecoder(self.serde)

    def topic(self, logical: str) -> str:
        return topic_name(self.settings, logical)

    def close(self) -> None:
        """Close the registry client (its HTTP connections)."""
        close = getattr(self.serde.registry, "close", None)
        if close is not None:
            close()

    def letters(self, flt: DeadLetterFilter) -> Iterator[StoredDeadLetter]:
        for s in self.read(flt.since_ms):
            if flt.matches(s.letter):
                yield s

    def plan(self, stored: StoredDeadLetter) -> ReplayItem | Skipped:
        return plan_replay(
            stored,
            dead_topic=self.topic(DEAD),
            decode=self.decode,
            encode=lambda logical, record: self.serde.encode(self.topic(logical), record),
        )


@dataclass
class ReplayReport:
    items: list[ReplayItem] = field(default_factory=list)
    skipped: list[Skipped] = field(default_factory=list)
    superseded: int = 0  # older dead letters of an event id that is replayed once
    produced: int = 0
    dry_run: bool = True

    def by_topic(self) -> Counter[str]:
        return Counter(i.topic for i in self.items)


def replay(
    backend: Backend,
    flt: DeadLetterFilter,
    *,
    dry_run: bool = False,
    limit: int | None = None,
) -> ReplayReport:
    """Replay the dead letters that match ``flt`` (newest per event id)."""
    matching = list(backend.letters(flt))
    chosen = newest_per_event(matching)
    report = ReplayReport(superseded=len(matching) - len(chosen), dry_run=dry_run)
    if limit is not None:
        chosen = chosen[:limit]
    for stored in chosen:
        planned = backend.plan(stored)
        if isinstance(planned, Skipped):
            report.skipped.append(planned)
        else:
            report.items.append(planned)
    if dry_run or not report.items:
        return report
    sink = backend.sink()
    for item in report.items:
        sink.produce(backend.topic(item.topic), item.key, item.value, list(item.headers))
    sink.flush()
    report.produced = len(report.items)
    return report


# --- Kafka ---------------------------------------------------------------------------


def read_dead_letters(
    settings: Settings,
    decode: SyncDecoder,
    since_ms: int | None = None,
    *,
    stall_timeout_s: float = 30.0,
) -> Iterator[StoredDeadLetter]:
    """Every dead letter in ``email.dead`` up to the end offsets seen at start."""
    from confluent_kafka import Consumer, TopicPartition

    topic = topic_name(settings, DEAD)
    consumer = Consumer(
        kafka_config(  # bootstrap plus the workers' SASL/TLS settings
            settings,
            **{
                "group.id": f"spillway-dead-cli-{uuid.uuid4().hex[:8]}",  # assign() only
                "enable.auto.commit": False,
                "auto.offset.reset": "earliest",
            },
        )
    )
    try:
        meta = consumer.list_topics(topic, timeout=10).topics.get(topic)
        if meta is None or meta.error is not None or not meta.partitions:
            return  # no dead letter yet
        tps = [TopicPartition(topic, p) for p in sorted(meta.partitions)]
        ends = {tp.partition: consumer.get_watermark_offsets(tp, timeout=10) for tp in tps}
        starts = {p: low for p, (low, _) in ends.items()}
        if since_ms is not None:  # skip to the first record at or after `since`
            for tp in consumer.offsets_for_times(
                [TopicPartition(topic, p, since_ms) for p in starts], timeout=10
            ):
                starts[tp.partition] = tp.offset if tp.offset >= 0 else ends[tp.partition][1]
        todo = {p: high for p, (_, high) in ends.items() if starts[p] < high}
        if not todo:
            return
        consumer.assign([TopicPartition(topic, p, starts[p]) for p in todo])
        last_progress = time.monotonic()
        while todo:
            messages = consumer.consume(500, timeout=0.5)
            for msg in messages:
                if msg.error():
                    continue
                p, offset, value = msg.partition(), msg.offset(), msg.value()
                if p not in todo or offset is None or offset >= todo[p]:
                    continue
                last_progress = time.monotonic()
                if offset + 1 >= todo[p]:
                    del todo[p]
                try:
                    letter = decode(value or b"", "dead_letter")
                except Exception as exc:  # not ours: say so, keep reading
                    log.warning("%s %s:%s is not a dead letter: %s", topic, p, offset, exc)
                    continue
                _, ts = msg.timestamp()
                yield StoredDeadLetter(p, offset, msg.key(), letter, ts if ts > 0 else None)
            if not messages:  # past the end already (e.g. transaction markers)?
                for tp in consumer.position([TopicPartition(topic, p) for p in todo]):
                    if tp.offset >= todo.get(tp.partition, 0):
                        todo.pop(tp.partition, None)
            if todo and time.monotonic() - last_progress > stall_timeout_s:
                raise ReplayError(f"reading {topic} stalled at partitions {sorted(todo)}")
    finally:
        consumer.close()


class KafkaSink:
    """Produces replays; ``flush`` raises if any record was not acked."""

    def __init__(self, settings: Settings) -> None:
        from confluent_kafka import Producer
        from confluent_kafka.admin import AdminClient

        self.settings = settings
        self._admin = AdminClient(kafka_config(settings))  # SASL/TLS as the workers
        self._producer = Producer(
            kafka_config(
                settings,
                **{
                    "acks": "all",
                    "enable.idempotence": True,
                    "partitioner": "murmur2_random",  # Java's (and aiokafka's) key partitioner
                    "linger.ms": 5,
                },
            )
        )
        self._known: set[str] = set()
        self._errors: list[str] = []

    def _check_topic(self, topic: str) -> None:
        # Never let the broker auto-create a topic with the wrong partition count.
        if topic in self._known:
            return
        meta = self._admin.list_topics(topic=topic, timeout=10).topics.get(topic)
        if meta is None or meta.error is not None:
            raise ReplayError(f"topic {topic} does not exist; start the pipeline's workers first")
        self._known.add(topic)

    def produce(
        self, topic: str, key: bytes | None, value: bytes, headers: list[tuple[str, bytes]]
    ) -> None:
        self._check_topic(topic)
        kafka_headers: list[tuple[str, str | bytes | None]] = list(headers)

        def delivered(err: Any, msg: Any) -> None:
            if err is not None:
                self._errors.append(f"{topic} key={key!r}: {err}")

        while True:
            try:
                self._producer.produce(
                    topic, key=key, value=value, headers=kafka_headers, on_delivery=delivered
                )
                break
            except BufferError:
                self._producer.poll(0.1)
        self._producer.poll(0)

    def flush(self) -> None:
        left = self._producer.flush(30)
        if left or self._errors:
            problems = self._errors[:5] + ([f"{left} records not acked"] if left else [])
            raise ReplayError("replay not fully written: " + "; ".join(problems))


def kafka_backend(settings: Settings | None = None) -> Backend:
    """The real backend: the registry and broker named by ``settings``."""
    from app.runtime import registry_client

    settings = settings or Settings()
    serde = Serde(
        registry_client(settings),
        topic_schemas(settings),
    )
    serde.register()  # idempotent; gives the ids that encode() writes
    backend = Backend(
        settings,
        serde,
        read=lambda since_ms: read_dead_letters(settings, backend.decode, since_ms),
        sink=lambda: KafkaSink(settings),
    )
    return backend
