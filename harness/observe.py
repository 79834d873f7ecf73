"""Follow ``email.sent`` and ``email.dead`` and tally what became of each event."""

from __future__ import annotations

import threading
import time
import uuid
from collections import Counter
from dataclasses import dataclass, field
from typing import Any

from confluent_kafka import Consumer, KafkaException, TopicPartition

from app.models import DeadLetter, SendResult
from app.serde import Serde


@dataclass
class Tally:
    sent: dict[str, SendResult] = field(default_factory=dict)
    dead: dict[str, DeadLetter] = field(default_factory=dict)
    sent_records: int = 0  # records on email.sent, duplicates included
    dead_records: int = 0
    dead_without_id: list[DeadLetter] = field(default_factory=list)
    dead_seen: Counter[str] = field(default_factory=Counter)  # dead records per event id

    @property
    def done(self) -> int:
        # Distinct events: one both sent and dead (a parked duplicate) counts once, so
        # wait_for(n) cannot return before n different events have ended.
        return len(self.sent.keys() | self.dead.keys()) + len(self.dead_without_id)

    def reasons(self) -> Counter[str]:
        return Counter(d.reason for d in [*self.dead.values(), *self.dead_without_id])

    def time_to_send_ms(self, priority: str) -> list[float]:
        return sorted(r.time_to_send_ms for r in self.sent.values() if r.priority == priority)


def percentile(values: list[float], q: float) -> float | None:
    if not values:
        return None
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(q / 100 * (len(ordered) - 1)))]


class Observer:
    """A background consumer (its own group) of the sent and dead topics."""

    def __init__(self, bootstrap: str, serde: Serde, sent_topic: str, dead_topic: str) -> None:
        self.serde = serde
        self.sent_topic, self.dead_topic = sent_topic, dead_topic
        self.tally = Tally()
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._seen: set[tuple[Any, Any, Any]] = set()
        self._consumer = Consumer(
            {
                "bootstrap.servers": bootstrap,
                "group.id": f"spillway-observer-{uuid.uuid4().hex[:8]}",
                "auto.offset.reset": "earliest",
                "enable.auto.commit": False,
                "topic.metadata.refresh.interval.ms": 1000,
            }
        )
        self._consumer.subscribe([sent_topic, dead_topic])
        self._thread = threading.Thread(target=self._run, daemon=True)

    def start(self) -> Observer:
        self._thread.start()
        return self

    def _run(self) -> None:
        while not self._stop.is_set():
            for msg in self._consumer.consume(500, timeout=0.2):
                if msg.error():
                    continue
                # Its group commits nothing, so a rebalance (a topic appearing) re-reads
                # from the start: count each record position once.
                position = (msg.topic(), msg.partition(), msg.offset())
                if position in self._seen:
                    continue
                self._seen.add(position)
                self._add(str(msg.topic()), msg.value())
        self._consumer.close()

    def _add(self, topic: str, value: Any) -> None:
        with self._lock:
            t = self.tally
            if topic == self.sent_topic:
                r: SendResult = self.serde.decode_known(value, "send_result")
                t.sent_records += 1
                t.sent[r.event_id] = r
            else:
                d: DeadLetter = self.serde.decode_known(value, "dead_letter")
                t.dead_records += 1
                if d.event_id:
                    t.dead[d.event_id] = d
                    t.dead_seen[d.event_id] += 1
                else:
                    t.dead_without_id.append(d)

    def snapshot(self) -> Tally:
        with self._lock:
            t = self.tally
            return Tally(
                dict(t.sent),
                dict(t.dead),
                t.sent_records,
                t.dead_records,
                list(t.dead_without_id),
                Counter(t.dead_seen),
            )

    def wait_for(self, n: int, timeout: float, check: Any = None) -> Tally:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if check:
                check()
            snap = self.snapshot()
            if snap.done >= n:
                return snap
            time.sleep(0.2)
        return self.snapshot()

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(10)


def end_offsets(bootstrap: str, topic: str, partitions: int) -> int:
    """Sum of the end offsets of a topic (how many records it holds); 0 if it is missing."""
    c = Consumer({"bootstrap.servers": bootstrap, "group.id": "spillway-offsets"})
    try:
        total = 0
        for p in range(partitions):
            try:
                _, high = c.get_watermark_offsets(TopicPartition(topic, p), timeout=5)
            except KafkaException:
                return 0  # not created yet
            total += max(0, high)
        return total
    finally:
        c.close()
