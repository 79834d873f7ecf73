"""The provider a reliability test sends to, with or without idempotency keys, and
the duplicate checks made from the simulator's request log.

``idempotent``: the simulator deduplicates by idempotency key (like Resend), so a
second request for a key delivers nothing but is still logged. ``no_idempotency``:
like SMTP, SES or SendGrid v3, every accepted request is a delivered email.

On the shared simulator the mode is chosen per account (a ``noidem-*`` bearer key),
so nothing global changes; a test that needs its own config (fail rules), or a
shared simulator started before the request log existed, gets a simulator of its own.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass
from typing import Any

from aiokafka.partitioner import DefaultPartitioner
from confluent_kafka import Consumer, TopicPartition

from simulator.client import (
    NO_IDEMPOTENCY_KEY,
    SyncSimulatorClient,
    deliveries_per_key,
    requests_after_acceptance,
    requests_per_key,
)
from tests.plugins.stack import Env

MODES = ("idempotent", "no_idempotency")
SHARED_URL = "http://127.0.0.1:8030"


@dataclass
class Provider:
    mode: str
    url: str
    api_key: str
    client: SyncSimulatorClient
    prefix: str  # every key of this test starts with it

    @property
    def key_ttl_s(self) -> int:
        """What the policy declares: the simulator honours keys (24 h) only when idempotent."""
        return 86_400 if self.mode == "idempotent" else 0

    def worker_env(self) -> dict[str, str]:
        """Overrides that point a worker's single provider here."""
        return {
            "SPILLWAY_PROVIDER_HTTP_URL": self.url,
            "SPILLWAY_PROVIDER_API_KEY": self.api_key,
            "SPILLWAY_PROVIDER_IDEMPOTENCY_KEY_TTL_S": str(self.key_ttl_s),
        }

    def policy(self, name: str = "sim", **over: Any) -> dict[str, Any]:
        """A ``SPILLWAY_PROVIDERS`` entry for this provider."""
        base = {"name": name, "url": self.url, "api_key": self.api_key}
        return {**base, "idempotency_ttl_s": self.key_ttl_s, **over}

    def records(self) -> list[dict[str, Any]]:
        """This test's requests, in arrival order."""
        return self.client.requests(prefix=self.prefix)

    def check_sent_once(self, expected: set[str] | None = None) -> DuplicateReport:
        """Every delivered key once and no request after a key's acceptance."""
        report = DuplicateReport.of(self.records())
        if expected is not None:
            missing = expected - set(report.deliveries)
            assert not missing, f"{len(missing)} keys never delivered, e.g. {sorted(missing)[:3]}"
        return report


@dataclass
class DuplicateReport:
    requests: Counter[str]
    deliveries: Counter[str]
    after: dict[str, list[dict[str, Any]]]

    @classmethod
    def of(cls, records: list[dict[str, Any]]) -> DuplicateReport:
        after = requests_after_acceptance(records)
        return cls(requests_per_key(records), deliveries_per_key(records), after)

    @property
    def twice_delivered(self) -> dict[str, int]:
        return {k: n for k, n in self.deliveries.items() if n > 1}

    @property
    def after_count(self) -> int:
        return sum(len(v) for v in self.after.values())

    def describe(self) -> str:
        return (
            f"{sum(self.requests.values())} requests for {len(self.requests)} keys, "
            f"{sum(self.deliveries.values())} deliveries, {len(self.twice_delivered)} keys "
            f"delivered more than once, {self.after_count} requests after acceptance "
            f"(e.g. {[(k, [r['outcome'] for r in v]) for k, v in list(self.after.items())[:3]]})"
        )

    def assert_clean(self) -> None:
        assert not self.twice_delivered and not self.after, self.describe()


def provider(env: Env, own_sim: Any, mode: str, **config: Any) -> Provider:
    """A provider in ``mode`` for this test (see the module docstring)."""
    assert mode in MODES, mode
    shared = env.sim
    if not config and shared.supports_request_log():
        key = f"{NO_IDEMPOTENCY_KEY}-{env.ns}" if mode == "no_idempotency" else "sim-key"
        return Provider(mode, SHARED_URL, key, shared, env.ns)
    sim = own_sim(idempotency=mode == "idempotent", **config)
    return Provider(mode, sim.url, "sim-key", sim.client, env.ns)


def lane_partition(key: str, partitions: int) -> int:
    """The partition a worker's producer (aiokafka's default partitioner, murmur2) puts
    a message with this key on."""
    parts = list(range(partitions))
    return int(DefaultPartitioner()(key.encode(), parts, parts))


def consumed(env: Env, group: str, topics: list[str], partitions: int) -> bool:
    """Whether ``group`` has committed the end of every partition of ``topics``."""
    consumer = Consumer({"bootstrap.servers": env.settings.kafka.bootstrap, "group.id": group})
    try:
        tps = [TopicPartition(t, p) for t in topics for p in range(partitions)]
        committed = consumer.committed(tps, timeout=10)
        for tp in committed:
            _, high = consumer.get_watermark_offsets(TopicPartition(tp.topic, tp.partition), 10)
            position = tp.offset if tp.offset >= 0 else 0
            if position < high:
                return False
        return True
    finally:
        consumer.close()
