"""The app factory: one Faust app per stage, built from one Settings object.

``faust -A app worker`` runs the stage named by ``SPILLWAY_STAGE`` (``all`` runs
every stage in one process, for development). Each stage has its own app id, hence
its own consumer group, so lag shows per stage and each stage scales on its own.
"""

from __future__ import annotations

import asyncio
import logging
import os
from collections.abc import Callable
from typing import Any

import faust

from app import consumer as gapless
from app import faust_adapter, intake, startup_checks
from app import metrics as prometheus
from app.agents import deadletters, dispatch, render, route
from app.observability import StageMetrics
from app.runtime import Runtime
from app.settings import Settings
from app.stages.deadletters import install_log_redaction
from app.topology import LANES, RAW_LANES, RENDERED_LANES, declare, stages_of

log = logging.getLogger(__name__)

#: The priority topics of each stage, whose critical partitions are read first.
URGENT_LANES = (RAW_LANES, RENDERED_LANES, LANES)

WEB_PORTS = {
    "all": 6066,
    "render": 6067,
    "route": 6068,
    "dispatch": 6069,
    "analyser": 6070,
    "intake": 8080,
}


_niced: list[int] = []  # the niceness this process already added (once per process)


def lower_cpu_priority(by: int, nice: Callable[[int], int] = os.nice) -> int:
    """Raise this process's niceness by ``by`` once (later calls add nothing); returns
    what was added. A refusal is logged, never fatal: priority is an optimisation."""
    if by <= 0 or _niced:
        return 0
    try:
        now = nice(by)
    except OSError as exc:
        log.warning("worker_nice %d not applied: %s", by, exc)
        return 0
    _niced.append(by)
    _autogroup_nice(now)
    log.info("worker niceness raised by %d (SPILLWAY_WORKER_NICE)", by)
    return by


def _autogroup_nice(value: int, path: str = "/proc/self/autogroup") -> None:
    """With Linux's autogroup scheduling (one CPU group per session) a process's
    niceness only counts inside its session: a worker that leads its own session (as
    the demo and the benchmark start them) lowers its session's group as well."""
    try:
        if os.getsid(0) != os.getpid() or not os.path.exists(path):
            return
        with open(path, "w") as group:
            group.write(str(value))
    except OSError as exc:
        log.info("autogroup niceness not set: %s", exc)


def create_app(
    settings: Settings | None = None, *, registry: Any = None, metrics: StageMetrics | None = None
) -> faust.App:
    """Build the app for ``settings.stage``; ``registry`` overrides the registry client,
    ``metrics`` what the stages report to (default: the process's Prometheus registry,
    served at ``/metrics``)."""
    settings = settings or Settings()
    logging.getLogger("httpx").setLevel(logging.WARNING)  # one INFO line per request
    if settings.policy.redact_pii:
        install_log_redaction()  # mask addresses and quoted values in every log line
    settings.data_dir.mkdir(parents=True, exist_ok=True)  # Faust makes only the last level
    lower_cpu_priority(settings.worker_nice)
    app = faust.App(
        settings.app_id(),
        broker=f"kafka://{settings.kafka.bootstrap}",
        broker_credentials=settings.kafka.credentials(),  # SASL / TLS, see settings
        store=settings.kafka.store,
        autodiscover=False,
        processing_guarantee="at_least_once",
        topic_partitions=settings.kafka.topic_partitions,
        topic_replication_factor=settings.kafka.topic_replication,
        consumer_auto_offset_reset="earliest",
        producer_acks=-1,
        producer_linger_ms=(
            settings.intake.linger_ms
            if settings.stage == "intake"
            else settings.kafka.producer_linger_ms
        ),
        producer_max_batch_size=settings.kafka.producer_batch_bytes,
        producer_compression_type=(
            None
            if settings.kafka.producer_compression == "none"
            else settings.kafka.producer_compression
        ),
        broker_commit_interval=settings.kafka.commit_interval_s,
        broker_session_timeout=settings.kafka.session_timeout_s,
        broker_max_poll_records=settings.kafka.max_poll_records,
        broker_heartbeat_interval=min(3.0, settings.kafka.session_timeout_s / 3),
        key_serializer="raw",
        value_serializer="raw",
        # web_host only names the server in URLs; web_bind is the address it listens on
        # (Faust's default is 0.0.0.0: every interface). Private unless configured.
        web_host=f"[{settings.web_host}]" if ":" in settings.web_host else settings.web_host,
        web_bind=settings.web_host,
        web_port=settings.web_port or WEB_PORTS[settings.stage],
        web_enabled=True,
        datadir=str(settings.data_dir / "{conf.id}"),
        # Faust's wait_empty has no bound and waits for every message taken from a
        # stream, including those parked at a lane gate: revocation and shutdown are
        # bounded by app.dispatcher and faust_adapter.ShutdownGuard instead (issue 12).
        stream_wait_empty=False,
    )
    gapless.install(app)  # never commit past an undelivered message (app/consumer.py)
    guard = faust_adapter.ShutdownGuard(app, settings.policy.shutdown_bound_s)
    app.spillway_shutdown = guard  # type: ignore[attr-defined]

    @app.task
    async def install_shutdown_guard() -> None:
        """After the worker installed mode's handlers (which ignore a second SIGTERM)."""
        if faust_adapter.worker_of(app) is not None:
            guard.install(asyncio.get_running_loop())
    topology = declare(app, settings)
    # critical records are handed to the stages before a burst's (issue 14)
    gapless.prefer(app, (topology.name(lanes["critical"]) for lanes in URGENT_LANES))
    startup_checks.install(app, settings, topology)  # existing topics match the topology
    runtime = Runtime(
        settings, topology, registry=registry,
        metrics=prometheus.DEFAULT if metrics is None else metrics,
    )
    app.spillway = runtime  # type: ignore[attr-defined]
    prometheus.attach(app, runtime)  # /metrics, /status, lag sampling (app/metrics.py)
    for stage in stages_of(settings.stage):
        if stage == "intake":
            intake.attach(app, runtime)
        elif stage == "render":
            render.attach(app, runtime)
        elif stage == "route":
            route.attach(app, runtime)
        elif stage == "dispatch":
            dispatch.attach(app, runtime)
        elif stage == "analyser":
            deadletters.attach(app, runtime)

    @app.page("/health")
    async def health(web: Any, request: Any) -> Any:
        return web.json({"ok": True, "stage": settings.stage, "app_id": app.conf.id})

    return app
