"""Produce a batch of stage outputs and wait until Kafka acknowledged every one.

Render and route hand their input back to Faust (which acks it, so its offset may
be committed) only after ``deliver`` returned: every output of the batch was
acknowledged by the broker (the producer runs with acks=all). A failed produce is
counted (``spillway_produce_failures_total``), logged with its topic and reason, and
tried again; when it still fails, ``ProduceFailedError`` stops the worker through
the guard without acking, and the batch is handled again after a restart.

aiokafka retries a produce inside its request timeout itself, so a failure that
reaches us means the broker stayed unreachable (or refused the record): an
infrastructure fault. Record-caused failures (encoding, size) never get here: the
stages seal their outputs first (``app.stages.common.Sealer``).
"""

from __future__ import annotations

import asyncio
import logging
import os
from collections import deque
from collections.abc import Awaitable, Callable, Mapping, Sequence
from typing import Any

from app import faust_adapter
from app.stages.common import Emission
from app.stages.priority import PAUSE_EVERY, PriorityGate

log = logging.getLogger(__name__)


class ProduceFailedError(Exception):
    """Kafka did not acknowledge an output after every try: an infrastructure fault."""


#: The catch-all topics (``email.raw-events``, ``email.rendered``) wait at this
#: priority at the gate (their records hold their own).
CATCH_ALL_PRIORITY = "normal"

#: On a stop (the agent cancelled) while outputs await their acks, how long to let
#: them finish before giving up.
STOP_WAIT_S = 10.0


def _exit_unacknowledged(stage: str) -> None:
    """Stopping with outputs Kafka has not acknowledged: exit at once, so that their
    input is never acked (it is handled again after a restart)."""
    from app.agents.guard import EXIT_CODE

    log.critical(
        "%s: stopping with outputs Kafka has not acknowledged; exiting without "
        "acking their input (it is handled again after a restart)",
        stage,
    )
    logging.shutdown()
    os._exit(EXIT_CODE)


async def _acknowledged(futures: list[Any], stage: str) -> list[Any]:
    """The produce results (or exceptions), in order.

    Cancelled meanwhile (the worker stops): Faust acks the batch as its stream closes,
    so its outputs get up to ``STOP_WAIT_S`` to be acknowledged first; if any is not,
    the worker exits at once (status 70) so that nothing is committed past them.
    """
    gathered = asyncio.ensure_future(asyncio.gather(*futures, return_exceptions=True))
    try:
        return await asyncio.shield(gathered)
    except asyncio.CancelledError:
        try:
            results = await asyncio.wait_for(asyncio.shield(gathered), STOP_WAIT_S)
            acked = not any(isinstance(r, BaseException) for r in results)
        except BaseException:
            acked = False
        if not acked:
            _exit_unacknowledged(stage)
        raise


async def deliver(
    runtime: Any,
    emissions: Sequence[Emission],
    *,
    stage: str,
    attempts: int = 3,
    pause_s: float = 1.0,
) -> None:
    """Produce ``emissions`` and return once all are acknowledged; else raise."""
    pending = list(emissions)
    for attempt in range(1, attempts + 1):
        sent: list[tuple[Emission, Any]] = []
        failed: list[tuple[Emission, BaseException]] = []
        for emission in pending:
            topic = runtime.topology.topics[emission.topic]
            try:
                # routing headers (issue 14), only when the stage set some
                extra = {"headers": dict(emission.headers)} if emission.headers else {}
                future = await topic.send(
                    key=emission.key, value=runtime.encode(emission), **extra
                )
            except Exception as refused:  # refused before it was queued (size, timeout)
                failed.append((emission, refused))
            else:
                sent.append((emission, future))
        results = await _acknowledged([f for _, f in sent], stage)
        for (emission, _), result in zip(sent, results, strict=True):
            if isinstance(result, BaseException):
                if isinstance(result, asyncio.CancelledError):
                    raise result
                failed.append((emission, result))
            else:
                runtime.metrics.emitted(emission, runtime.settings.stage)
        if not failed:
            return
        for emission, error in failed:
            runtime.metrics.produce_failed(stage, emission.topic, type(error).__name__)
            log.warning(
                "%s: produce to %s failed (try %d of %d): %s: %s",
                stage,
                runtime.topology.name(emission.topic),
                attempt,
                attempts,
                type(error).__name__,
                error,
            )
        pending = [emission for emission, _ in failed]
        if attempt < attempts:
            await asyncio.sleep(pause_s * 2 ** (attempt - 1))
    first, cause = failed[0]
    raise ProduceFailedError(
        f"{len(pending)} output(s) not acknowledged by Kafka after {attempts} tries; first: "
        f"{runtime.topology.name(first.topic)}: {type(cause).__name__}: {cause}"
    ) from cause


async def prioritised(
    runtime: Any,
    stream: Any,
    gate: PriorityGate,
    lane: str,
    stage: str,
    handle: Callable[[Any], Awaitable[Emission]],
) -> None:
    """The loop of a render or route agent: each batch of ``stream`` is handled in
    ``lane``'s turn at the stages' shared ``gate`` (pausing every ``PAUSE_EVERY`` events
    so that a higher lane's waiting batch goes first), one ``handle(event)`` each. Its
    emissions are delivered in the background while the next batch is handled (at most
    ``stage_batches_in_flight`` batches await their acks), and each batch's input is
    acked only once all its emissions were acknowledged. An infrastructure fault stops
    the worker through the guard without acking."""
    from app.agents.guard import crash_on_error

    policy = runtime.settings.policy
    limit = policy.stage_batches_in_flight
    gate.queued.setdefault(lane, faust_adapter.stream_queued(stream))
    pending: deque[asyncio.Task[None]] = deque()
    try:
        async for events in stream.take_events(
            policy.stage_batch_size, policy.stage_batch_within_s
        ):
            for event in events:
                faust_adapter.hold(event)  # acked by _deliver_batch, after its outputs
            with crash_on_error(stage):
                out = []
                async with gate.turn(lane):
                    with runtime.metrics.busy(stage):
                        for i, event in enumerate(events):
                            if i and i % PAUSE_EVERY == 0:
                                await gate.pause(lane, policy.stage_batch_within_s)
                            out.append(await handle(event))
            pending.append(asyncio.ensure_future(_deliver_batch(runtime, out, events, stage)))
            while pending and (len(pending) >= limit or pending[0].done()):
                await asyncio.shield(pending[0])  # popped once done: a stop still sees it
                pending.popleft()
    finally:
        await _settle(pending, stage)


async def _deliver_batch(runtime: Any, out: list[Emission], events: list[Any], stage: str) -> None:
    """Deliver one batch's emissions, then ack its input; a fault stops the worker."""
    from app.agents.guard import crash_on_error

    with crash_on_error(stage):
        await deliver(runtime, out, stage=stage)
    for event in events:
        faust_adapter.release(event)


async def _settle(pending: deque[asyncio.Task[None]], stage: str) -> None:
    """The agent stops (cancelled) with batches awaiting acks: give them up to
    ``STOP_WAIT_S``; if any is still unacknowledged, exit at once without acking it."""
    if not pending:
        return
    _done, late = await asyncio.wait(list(pending), timeout=STOP_WAIT_S)
    if late:
        _exit_unacknowledged(stage)


def per_priority_agents(
    app: Any,
    runtime: Any,
    name: str,
    lanes: Mapping[str, str],
    catch_all: str,
    agent_for: Callable[[str], Any],
) -> list[Any]:
    """One agent ``<name>-<priority>`` per priority topic of ``lanes`` (priority ->
    logical topic), and ``<name>`` on the ``catch_all`` topic, which waits at normal
    priority (its records hold their own): the agents of render and route."""
    agents = [
        app.agent(runtime.topology.topics[topic], name=f"{name}-{lane}", concurrency=1)(
            agent_for(lane)
        )
        for lane, topic in lanes.items()
    ]
    agents.append(
        app.agent(runtime.topology.topics[catch_all], name=name, concurrency=1)(
            agent_for(CATCH_ALL_PRIORITY)
        )
    )
    return agents
