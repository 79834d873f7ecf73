"""A Spillway Faust app in Faust's test context (memory broker and store), outputs captured."""

from __future__ import annotations

from typing import Any

import pytest

from app.agents import delivery
from app.factory import create_app
from app.observability import StageMetrics
from app.settings import Settings
from app.stages.common import Emission


def make_app(
    stage: str,
    registry: Any,
    monkeypatch: pytest.MonkeyPatch | None = None,
    metrics: StageMetrics | None = None,
) -> tuple[Any, list[Emission]]:
    """The app of ``stage`` and the list its outputs land in (encoded, not produced);
    with ``monkeypatch``, render and route deliver there too; ``metrics`` is what the
    stages report to (default: the process's Prometheus registry)."""
    app = create_app(
        Settings(stage=stage, store="memory://"),  # type: ignore[arg-type]
        registry=registry,
        metrics=metrics,
    )
    runtime = app.spillway  # type: ignore[attr-defined]
    runtime.serde.register()
    runtime._started = True  # schemas registered; the test context needs no topics
    captured: list[Emission] = []

    async def emit(emission: Emission) -> None:
        runtime.encode(emission)  # must encode for its topic
        captured.append(emission)

    runtime.emit = emit
    if monkeypatch is not None:  # render and route produce through delivery.deliver

        async def deliver(rt: Any, emissions: list[Emission], *, stage: str) -> None:
            for emission in emissions:
                await emit(emission)

        monkeypatch.setattr(delivery, "deliver", deliver)
    return app, captured
