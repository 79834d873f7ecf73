"""What stages and agents may report, as a small protocol (issue 16 point 4).

Stage code receives a :class:`StageMetrics` (``Runtime.metrics``, built once by the
app factory) instead of importing a global, so the stage logic does not depend on
Prometheus and a test can pass a recording implementation:

- ``app.metrics.PrometheusMetrics``: the process's Prometheus registry, served at
  ``/metrics`` (the edge; the only implementation a worker uses);
- :class:`NullMetrics`: reports nothing (a ``Runtime`` built without metrics);
- ``tests.plugins.metrics.RecordingMetrics``: keeps every call, for assertions.

Every operation is cheap and must never raise into the pipeline: an implementation
logs its own failures. Labels must be bounded (stage, logical topic, priority,
configured provider name, reason code, status class): never an event id or address.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from contextlib import AbstractContextManager, contextmanager
from typing import Any, Protocol, runtime_checkable

from app.stages.common import Emission
from app.stages.deadletters import WindowSummary


@runtime_checkable
class StageMetrics(Protocol):
    # --- every stage ------------------------------------------------------------------
    def emitted(self, emission: Emission, worker_stage: str) -> None:
        """A stage produced ``emission`` and Kafka acknowledged it (``Runtime.emit``):
        events out, time-to-send and sends per provider, dead letters per reason."""

    def produce_failed(self, stage: str, topic: str, error: str) -> None:
        """A produce of ``stage`` to logical ``topic`` failed with error class ``error``."""

    def busy(self, stage: str) -> AbstractContextManager[None]:
        """Around the handling of a message or batch by an agent of ``stage``
        (overlapping uses of one stage count once)."""

    def render_time(self, template: str, seconds: float) -> None:
        """The render stage rendered one email of ``template`` in ``seconds``."""

    # --- dispatch ---------------------------------------------------------------------
    def provider_response(self, provider: str, status_class: str, latency_s: float) -> None:
        """One provider request ended: ``status_class`` 2xx|4xx|429|5xx|timeout|error."""

    def breaker_state(self, provider: str, state: str) -> None:
        """The provider's breaker is now ``closed``, ``open`` or ``half_open``."""

    def rate_limit_remaining(self, provider: str, remaining: int) -> None:
        """``X-RateLimit-Remaining`` as last seen."""

    def bucket_level(self, provider: str, tokens: float) -> None:
        """Requests the rate limiter would let through now."""

    def quota(self, provider: str, per_second: float) -> None:
        """The provider's quota in requests per second (global, not this worker's share)."""

    def retry(self, attempt: int) -> None:
        """A message goes to a retry topic after failing its ``attempt``-th time."""

    def missing_message_id(self, provider: str) -> None:
        """A provider accepted an email (2xx) without a message id."""

    def duplicate_suppressed(self) -> None:
        """The sent-ledger skipped an event that was sent already."""

    # --- dead-letter analyser -----------------------------------------------------------
    def dead_letter_window(
        self, summaries: Mapping[str, WindowSummary], alert: Mapping[str, Any]
    ) -> None:
        """The analyser's figures per sliding window (name -> summary) and alert state
        (``{"firing": bool, "count": {"firing": ...}, "rate": {...}}``)."""


class NullMetrics:
    """Reports nothing."""

    def emitted(self, emission: Emission, worker_stage: str) -> None:
        pass

    def produce_failed(self, stage: str, topic: str, error: str) -> None:
        pass

    @contextmanager
    def busy(self, stage: str) -> Iterator[None]:
        yield

    def render_time(self, template: str, seconds: float) -> None:
        pass

    def provider_response(self, provider: str, status_class: str, latency_s: float) -> None:
        pass

    def breaker_state(self, provider: str, state: str) -> None:
        pass

    def rate_limit_remaining(self, provider: str, remaining: int) -> None:
        pass

    def bucket_level(self, provider: str, tokens: float) -> None:
        pass

    def quota(self, provider: str, per_second: float) -> None:
        pass

    def retry(self, attempt: int) -> None:
        pass

    def missing_message_id(self, provider: str) -> None:
        pass

    def duplicate_suppressed(self) -> None:
        pass

    def dead_letter_window(
        self, summaries: Mapping[str, WindowSummary], alert: Mapping[str, Any]
    ) -> None:
        pass
