"""What a worker needs besides Faust: schema registration, templates, providers.

Started once, lazily, by the first agent or view that needs it, so importing the
app never touches the network.
"""

from __future__ import annotations

import asyncio
import logging
import time
from typing import Any

from app.observability import NullMetrics, StageMetrics
from app.providers.base import Provider
from app.serde import Serde
from app.settings import ProviderPolicy, Settings
from app.stages.common import Emission
from app.stages.deadletters import redact_dead_letter
from app.topology import DEAD, Topology

log = logging.getLogger(__name__)


def registry_client(settings: Settings) -> Any:
    from confluent_kafka.schema_registry import SchemaRegistryClient

    # new_client: a "mock://" URL gives confluent-kafka's in-memory registry (unit tests).
    # url, timeout and credentials (issue 15: one registry config for workers and CLIs)
    return SchemaRegistryClient.new_client(settings.registry.client_config())


def build_provider(policy: ProviderPolicy) -> Provider:
    if policy.kind == "smtp":
        from app.providers.smtp import SmtpProvider

        return SmtpProvider(
            name=policy.name,
            host=policy.smtp_host,
            port=policy.smtp_port,
            username=policy.smtp_username,
            password=policy.smtp_password.get_secret_value() if policy.smtp_password else None,
            start_tls=policy.smtp_starttls,
            timeout_s=policy.timeout_s,
            pool_size=min(policy.max_in_flight, 16),
        )
    from app.providers.http import HttpProvider

    return HttpProvider(
        name=policy.name,
        base_url=policy.url,
        api_key=policy.api_key.get_secret_value(),
        timeout_s=policy.timeout_s,
        max_connections=policy.max_in_flight,
    )


class Runtime:
    def __init__(
        self,
        settings: Settings,
        topology: Topology,
        *,
        registry: Any = None,
        metrics: StageMetrics | None = None,
        start_timeout_s: float = 120.0,
    ) -> None:
        self.settings = settings
        self.topology = topology
        #: what stages and agents report to (the factory passes the Prometheus one)
        self.metrics: StageMetrics = metrics if metrics is not None else NullMetrics()
        self.serde = Serde(
            registry or registry_client(settings),
            topology.topic_schemas(),
            outage_max_s=settings.registry.outage_max_s,  # issue 13
        )
        self.start_timeout_s = start_timeout_s
        self._started = False
        self._lock = asyncio.Lock()

    async def start(self) -> None:
        """Register schemas (waiting for the registry) and declare output topics."""
        if self._started:
            return
        async with self._lock:
            if self._started:
                return
            deadline = time.monotonic() + self.start_timeout_s
            while True:
                try:
                    await asyncio.to_thread(self.serde.register)
                    break
                except Exception as exc:
                    if time.monotonic() > deadline:
                        raise RuntimeError(
                            f"schema registry at {self.settings.registry.url} "
                            f"did not accept our schemas: {exc}"
                        ) from exc
                    log.warning("schema registry not ready (%s); retrying", exc)
                    await asyncio.sleep(1.0)
            for logical in self.topology.used_by(self.settings.stage):
                await self.topology.topics[logical].maybe_declare()
            self._started = True

    def encode(self, emission: Emission) -> bytes:
        if emission.encoded is not None:  # sealed by the stage (app.stages.common.Sealer)
            return emission.encoded
        return self.encode_record(emission.topic, emission.value)

    def encode_record(self, logical: str, record: Any) -> bytes:
        """``record`` encoded for the topic with logical name ``logical``."""
        if logical == DEAD and self.settings.policy.redact_pii:  # issue 15
            record = redact_dead_letter(record)
        return self.serde.encode(self.topology.name(logical), record)

    async def emit(self, emission: Emission) -> Any:
        """Produce (buffered; the ack is awaited before the source offset commits)."""
        topic = self.topology.topics[emission.topic]
        result = await topic.send(key=emission.key, value=self.encode(emission))
        self.metrics.emitted(emission, self.settings.stage)  # events out, time-to-send, dead
        return result
