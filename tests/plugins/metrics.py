"""``RecordingMetrics``: an ``app.observability.StageMetrics`` that keeps every call."""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from typing import Any

from app.stages.common import Emission
from app.stages.deadletters import WindowSummary


class RecordingMetrics:
    """Every report as ``(operation, args)`` in ``calls``; ``busy`` also counts entries
    and keeps how many are open (``open_busy``), so a test sees it was left."""

    def __init__(self) -> None:
        self.calls: list[tuple[str, tuple[Any, ...]]] = []
        self.open_busy: Counter[str] = Counter()

    def of(self, operation: str) -> list[tuple[Any, ...]]:
        """The arguments of every call of ``operation``, in order."""
        return [args for op, args in self.calls if op == operation]

    def _record(self, operation: str, *args: Any) -> None:
        self.calls.append((operation, args))

    def emitted(self, emission: Emission, worker_stage: str) -> None:
        self._record("emitted", emission, worker_stage)

    def produce_failed(self, stage: str, topic: str, error: str) -> None:
        self._record("produce_failed", stage, topic, error)

    @contextmanager
    def busy(self, stage: str) -> Iterator[None]:
        self._record("busy", stage)
        self.open_busy[stage] += 1
        try:
            yield
        finally:
            self.open_busy[stage] -= 1

    def render_time(self, template: str, seconds: float) -> None:
        self._record("render_time", template, seconds)

    def provider_response(self, provider: str, status_class: str, latency_s: float) -> None:
        self._record("provider_response", provider, status_class, latency_s)

    def breaker_state(self, provider: str, state: str) -> None:
        self._record("breaker_state", provider, state)

    def rate_limit_remaining(self, provider: str, remaining: int) -> None:
        self._record("rate_limit_remaining", provider, remaining)

    def bucket_level(self, provider: str, tokens: float) -> None:
        self._record("bucket_level", provider, tokens)

    def quota(self, provider: str, per_second: float) -> None:
        self._record("quota", provider, per_second)

    def retry(self, attempt: int) -> None:
        self._record("retry", attempt)

    def missing_message_id(self, provider: str) -> None:
        self._record("missing_message_id", provider)

    def duplicate_suppressed(self) -> None:
        self._record("duplicate_suppressed")

    def dead_letter_window(
        self, summaries: Mapping[str, WindowSummary], alert: Mapping[str, Any]
    ) -> None:
        self._record("dead_letter_window", dict(summaries), dict(alert))
