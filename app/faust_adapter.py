"""Every use of a faust-streaming (0.15.3) or mode private, in one place.

Spillway needs a few things Faust has no public API for. Each is a small function
here, and each is pinned by ``tests/unit/test_faust_adapter.py``, which fails
loudly (naming the attribute) when an upgrade changes it. Nothing else in ``app``
may touch a Faust private.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from collections.abc import Set as AbstractSet
from typing import Any, cast


def acked_offsets(consumer: Any, tp: Any) -> tuple[list[int], set[int]]:
    """The consumer's acked-but-uncommitted offsets of ``tp``: the list Faust commits
    from and its index (both mutated in place by a commit)."""
    return consumer._acked[tp], consumer._acked_index[tp]


def forget_acks(consumer: Any) -> None:
    """Drop every acked-but-uncommitted offset (a new assignment starts from the
    committed offsets)."""
    for acked in consumer._acked.values():
        acked.clear()
    for index in consumer._acked_index.values():
        index.clear()


def flow_active(app: Any) -> bool:
    """False while Faust's flow control is suspended (during a rebalance)."""
    flow = getattr(app, "flow_control", None)
    return True if flow is None else bool(flow.is_active())


def committed_offsets(consumer: Any) -> Mapping[Any, int | None]:
    """The committed position per partition, as Faust last saw or set it."""
    return getattr(consumer, "_committed_offset", {})


def forget_read_offset(consumer: Any, tp: Any) -> None:
    """Faust neither drops a record at or below its read offset nor acks a jump as a
    gap once the read offset is None (``app.consumer``)."""
    consumer._read_offset[tp] = None


def lane_queues(app: Any, topic_name: str) -> list[Any]:
    """The queues the conductor delivers a topic's messages into (one per stream)."""
    index = getattr(app.topics, "_topic_name_index", {})
    return [channel.queue for channel in index.get(topic_name, ())]


def stream_queued(stream: Any) -> Callable[[], int]:
    """How many records wait in a stream's channel queue, not yet taken (a stream
    without one: none)."""
    queue = getattr(getattr(stream, "channel", None), "queue", None)
    if queue is None or not hasattr(queue, "qsize"):
        return lambda: 0
    size: Callable[[], int] = queue.qsize
    return size


def generation(app: Any) -> int:
    """The consumer group generation this member was last assigned in."""
    return int(getattr(app, "consumer_generation_id", 0) or 0)


def message_generation(message: Any) -> int | None:
    """The generation a message was fetched in (Faust stamps it at fetch)."""
    return getattr(message, "generation_id", None)


def hold(event: Any) -> None:
    """Keep a taken message unacked after the stream moves on (its refcount): it is
    acked by ``release`` once done, or never (abandoned: its offset is not committed)."""
    event.message.incref()


def release(event: Any) -> None:
    """Ack a held message (the last reference: its offset may be committed)."""
    event.ack()


def worker_of(app: Any) -> Any:
    """The mode/Faust Worker running ``app`` (its beacon's root), or None."""
    try:
        root = app.beacon.root.data
    except AttributeError:
        return None
    return root if hasattr(root, "_on_sigterm") else None


def stop_worker(worker: Any) -> None:
    """What mode does on SIGTERM: schedule the worker's stop."""
    worker._on_sigterm()


#: exit status of a worker forced out (second SIGTERM or the shutdown bound)
EXIT_FORCED = 75


class ShutdownGuard:
    """SIGTERM with a bound (issue 12 point 6).

    mode's Worker ignores every SIGTERM after the first, and its stop can wait for
    ever. This handler replaces it once the worker is up: the first SIGTERM runs the
    drains (the dispatcher: admit nothing, let requests on the wire finish) within the
    bound, then asks the worker to stop as mode would (Faust commits what is acked);
    a second SIGTERM, or the bound passing, ends the process at once, committing
    nothing more (unfinished work was never acked, so it is handled again).
    """

    def __init__(
        self,
        app: Any,
        bound_s: float,
        drains: list[Any] | None = None,
        *,
        exit: Any = None,
    ) -> None:
        import os

        self.app = app
        self.bound_s = bound_s
        self.drains = drains if drains is not None else []
        self.exit = exit or os._exit
        self._hard = exit is None
        self.signals = 0
        self.timer: Any = None

    def install(self, loop: Any) -> None:
        import signal

        loop.add_signal_handler(signal.SIGTERM, self.on_sigterm)

    def on_sigterm(self) -> None:
        import asyncio
        import logging
        import threading

        log = logging.getLogger(__name__)
        self.signals += 1
        if self.signals > 1:
            log.warning("second SIGTERM: stopping now, committing nothing more")
            self.force()
            return
        log.info("SIGTERM: draining, then stopping (forced after %.0f s)", self.bound_s)
        self.timer = threading.Timer(self.bound_s, self.force)
        self.timer.daemon = True
        self.timer.start()
        asyncio.get_running_loop().create_task(self.graceful())

    def force(self) -> None:
        import logging

        logging.getLogger(__name__).warning("forced stop (exit %d)", EXIT_FORCED)
        if self._hard:
            logging.shutdown()
        self.exit(EXIT_FORCED)

    async def graceful(self) -> None:
        import asyncio
        import contextlib

        budget = self.bound_s * 0.5  # the rest is Faust's stop: commit, tables, producer
        for drain in self.drains:
            with contextlib.suppress(Exception, TimeoutError):
                await asyncio.wait_for(drain(budget), budget + 1.0)
        worker = worker_of(self.app)
        if worker is not None:
            stop_worker(worker)
        else:
            await self.app.stop()


def revive_buffered(app: Any, tps: Any, has_room: Any) -> list[Any]:
    """Re-enable fetching of partitions Faust stopped fetching because their stream
    buffer was under pressure (``Consumer._buffered_partitions``) once the buffer has
    room again. Faust re-enables them only from the queue's pressure-drop callback,
    which a rebalance's queue clear never fires: such a partition was never fetched
    again (a lane stalled for good after a takeover). Not during a rebalance or a
    recovery, when Faust pauses partitions itself."""
    consumer = app.consumer
    if getattr(app, "rebalancing", False) or getattr(app, "in_recovery", False):
        return []
    buffered: set[Any] = getattr(consumer, "_buffered_partitions", set())
    revived = [tp for tp in tps if tp in buffered and has_room(tp)]
    for tp in revived:
        consumer.on_buffer_drop(tp)
    return revived


def may_pause(app: Any) -> bool:
    """Fetching may be paused and resumed by us now: not during a rebalance or a
    table recovery (Faust pauses and resumes partitions itself then) and not while
    its flow is suspended."""
    if getattr(app, "rebalancing", False) or getattr(app, "in_recovery", False):
        return False
    return flow_active(app)


async def pause_fetch(app: Any, tps: Any) -> None:
    """Stop fetching ``tps`` in the aiokafka client (in its thread). Not Faust's
    ``pause_partitions``: Faust drops the rest of a batch being delivered when its
    partition leaves the active set, and nothing fetches those records again until a
    later record shows the gap; aiokafka keeps its position at the last record it
    handed out, so a paused partition resumes exactly there. A rebalance makes fresh,
    unpaused partition states."""
    await _client_call(app, "pause", tps)


async def resume_fetch(app: Any, tps: Any) -> None:
    """Fetch ``tps`` again (partitions ``pause_fetch`` paused)."""
    await _client_call(app, "resume", tps)


async def _client_call(app: Any, method: str, tps: Any) -> None:
    if not tps:
        return
    thread = app.consumer._thread

    async def call() -> None:
        client = thread._ensure_consumer()
        assigned = client.assignment()
        parts = [p for p in (_aiokafka_tp(tp) for tp in tps) if p in assigned]
        if parts:
            getattr(client, method)(*parts)

    await thread.call_thread(call)


def assigned(consumer: Any) -> AbstractSet[Any]:
    """The consumer's assignment as the aiokafka client holds it, not copied: Faust's
    ``assignment()`` converts every partition to a TP on each call (6% of the dispatch
    worker's CPU when asked twice per message). aiokafka's TopicPartition and Faust's
    TP are both (topic, partition) named tuples, so a TP is found in it."""
    try:
        client = consumer._thread._ensure_consumer()
    except AttributeError:  # not the aiokafka driver's consumer
        return cast(AbstractSet[Any], consumer.assignment())
    return cast(AbstractSet[Any], client.assignment())


def fetch_position(consumer: Any, tp: Any) -> int | None:
    """The aiokafka client's position for ``tp``: the next offset it will hand out
    (records it fetched but has not handed out yet are below it only once handed
    out). None when unknown (not assigned, awaiting a reset)."""
    try:
        client = consumer._thread._ensure_consumer()
        assignment = client._subscription.subscription.assignment
    except Exception:
        return None
    if assignment is None:
        return None
    state = assignment.state_value(_aiokafka_tp(tp))
    if state is None or not state.has_valid_position:
        return None
    return int(state.position)


def fetch_paused(consumer: Any, tp: Any) -> str:
    """Why Faust does not fetch ``tp`` now: "P" paused (``pause_partitions``), "B"
    stopped for a full buffer, "" neither."""
    marks = "P" if tp in getattr(consumer, "_paused_partitions", ()) else ""
    return marks + ("B" if tp in getattr(consumer, "_buffered_partitions", ()) else "")


def _aiokafka_tp(tp: Any) -> Any:
    from aiokafka import TopicPartition

    return TopicPartition(tp.topic, tp.partition)


def topics_missing_from_metadata(consumer: Any) -> set[str]:
    """Topics this consumer subscribed to that its client's cluster metadata does not
    know (no partitions): the group leader's assignor ignores them ("Ignoring missing
    topic") and nothing asks again before the metadata max age (5 min)."""
    try:
        client = consumer._thread._ensure_consumer()
        subscription = client._subscription.subscription
        cluster = client._client.cluster
    except Exception:
        return set()
    if subscription is None:
        return set()
    return {t for t in subscription.topics if not cluster.partitions_for_topic(t)}


async def refresh_metadata(consumer: Any) -> None:
    """Ask the broker for the consumer client's metadata now (in the client's thread).
    A subscribed topic's partition count changing makes aiokafka's coordinator rejoin
    the group, and the new assignment includes the topic."""
    thread = consumer._thread
    client = thread._ensure_consumer()._client
    await thread.call_thread(client.force_metadata_update)
