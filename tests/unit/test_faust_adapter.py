"""Pins every Faust private Spillway uses (app/faust_adapter.py): each test fails,
naming the attribute, when a faust-streaming upgrade changes it."""

from __future__ import annotations

import asyncio
import inspect
from typing import Any

import faust
import pytest
from faust.transport import consumer as faust_consumer
from faust.types import TP

from app import faust_adapter
from app.consumer import GaplessConsumer
from app.factory import create_app
from app.settings import Settings

T0 = TP("t", 0)


def test_faust_version_is_the_one_these_pins_were_written_for() -> None:
    assert faust.__version__ == "0.15.3", "re-check every pin below, then update this"


def test_consumer_keeps_acks_read_and_committed_offsets_where_we_read_them() -> None:
    init = inspect.getsource(faust_consumer.Consumer.__init__)
    for name in ("_acked", "_acked_index", "_read_offset", "_committed_offset"):
        assert f"self.{name} =" in init, f"Consumer.{name} moved"
    new_offset = inspect.getsource(faust_consumer.Consumer._new_offset)
    assert "self._acked[tp]" in new_offset and "_acked_index" in new_offset
    # the overridden hooks keep their signatures
    for hook in ("_new_offset", "on_partitions_revoked", "on_partitions_assigned", "getmany"):
        assert hasattr(faust_consumer.Consumer, hook), hook
    assert list(inspect.signature(faust_consumer.Consumer._new_offset).parameters) == [
        "self",
        "tp",
    ]
    # GaplessConsumer._getmany drains the urgent partitions first through it
    assert list(inspect.signature(faust_consumer.Consumer._getmany).parameters) == [
        "self",
        "active_partitions",
        "timeout",
    ]
    assert "self._getmany(" in inspect.getsource(faust_consumer.Consumer._wait_next_records)


def test_revocation_forgets_acks_before_the_app_hears_of_it() -> None:
    """Why GaplessConsumer.before_revoke commits first: Faust pops the revoked
    partitions' acks, then calls the app's handler."""
    src = inspect.getsource(faust_consumer.Consumer.on_partitions_revoked)
    assert src.index("self._acked.pop") < src.index("self._on_partitions_revoked")


def test_wait_empty_is_switched_off_by_stream_wait_empty() -> None:
    src = inspect.getsource(faust_consumer.Consumer.on_stop)
    assert "stream_wait_empty" in src and "wait_empty()" in src
    app = create_app(Settings(stage="dispatch", store="memory://"))  # type: ignore[arg-type]
    assert app.conf.stream_wait_empty is False


def test_adapter_reads_and_writes_the_consumer_state() -> None:
    consumer: Any = GaplessConsumer.__new__(GaplessConsumer)
    consumer.__dict__.update(
        _acked={T0: [3]}, _acked_index={T0: {3}}, _read_offset={T0: 9}, _committed_offset={T0: 2}
    )
    acked, index = faust_adapter.acked_offsets(consumer, T0)
    assert acked == [3] and index == {3}
    assert faust_adapter.committed_offsets(consumer)[T0] == 2
    faust_adapter.forget_read_offset(consumer, T0)
    assert consumer._read_offset[T0] is None


def test_conductor_index_and_generation() -> None:
    app = create_app(Settings(stage="dispatch", store="memory://"))  # type: ignore[arg-type]
    assert hasattr(app.topics, "_topic_name_index"), "Conductor._topic_name_index moved"
    assert faust_adapter.lane_queues(app, "no-such-topic") == []
    assert hasattr(app, "consumer_generation_id")
    assert faust_adapter.generation(app) == 0
    msg = faust.types.Message("t", 0, 1, 0.0, 0, None, b"k", b"v", None, generation_id=7)
    assert faust_adapter.message_generation(msg) == 7


def test_hold_and_release_use_the_message_refcount() -> None:
    msg = faust.types.Message("t", 0, 1, 0.0, 0, None, b"k", b"v", None)
    msg.refcount = 1  # the stream's reference

    class Event:
        message = msg

        def ack(self) -> bool:
            return bool(msg.ack(None))  # type: ignore[arg-type]

    faust_adapter.hold(Event())
    assert msg.refcount == 2
    assert Event().ack() is False  # the stream moved on: still held
    assert not msg.acked
    faust_adapter.release(Event())
    assert msg.acked


def test_worker_stop_hook_exists() -> None:
    from mode.worker import Worker

    assert hasattr(Worker, "_on_sigterm"), "mode Worker._on_sigterm moved"
    src = inspect.getsource(Worker._schedule_shutdown)
    assert "_signal_stop_time" in src  # why a second SIGTERM is ignored by mode


async def test_shutdown_guard_drains_then_stops_and_a_second_sigterm_forces() -> None:
    exits: list[int] = []
    drained: list[float] = []
    stopped: list[bool] = []

    async def drain(budget: float) -> None:
        drained.append(budget)

    class App:
        async def stop(self) -> None:
            stopped.append(True)

    guard = faust_adapter.ShutdownGuard(App(), 30.0, [drain], exit=exits.append)
    guard.on_sigterm()
    for _ in range(100):
        if stopped:
            break
        await asyncio.sleep(0.01)
    assert drained == [15.0] and stopped == [True] and exits == []
    guard.on_sigterm()
    assert exits == [faust_adapter.EXIT_FORCED]
    guard.timer.cancel()


async def test_shutdown_guard_forces_out_at_the_bound() -> None:
    exits: list[int] = []

    async def stuck(budget: float) -> None:
        await asyncio.sleep(3600)

    class App:
        async def stop(self) -> None:
            await asyncio.sleep(3600)

    guard = faust_adapter.ShutdownGuard(App(), 0.05, [stuck], exit=exits.append)
    guard.on_sigterm()
    for _ in range(300):
        if exits:
            break
        await asyncio.sleep(0.01)
    assert exits == [faust_adapter.EXIT_FORCED]
    for task in asyncio.all_tasks():
        if task is not asyncio.current_task():
            task.cancel()


@pytest.mark.parametrize("name", ["_on_sigterm"])
def test_worker_of_finds_nothing_without_a_worker(name: str) -> None:
    app = create_app(Settings(stage="dispatch", store="memory://"))  # type: ignore[arg-type]
    assert faust_adapter.worker_of(app) is None


def test_a_cleared_buffer_never_fires_its_pressure_drop_so_we_revive_the_partition() -> None:
    """Faust stops fetching a partition whose stream buffer is under pressure and
    fetches it again only from the queue's pressure-drop callback; a rebalance clears
    the queue, which never fires it: the partition was never fetched again."""
    from mode.utils.queues import ThrowableQueue

    src = inspect.getsource(ThrowableQueue.clear)
    assert "_pending_pressure_drop_callbacks" not in src  # clear() does not call them
    init = inspect.getsource(faust_consumer.Consumer._reset_state)
    assert "_buffered_partitions" in init
    drop = inspect.getsource(faust_consumer.Consumer.on_buffer_drop)
    assert "_buffered_partitions" in drop and "active_partitions.add(tp)" in drop

    class Consumer:
        def __init__(self) -> None:
            self._buffered_partitions = {T0, TP("t", 1)}
            self.dropped: list[TP] = []

        def on_buffer_drop(self, tp: TP) -> None:
            self.dropped.append(tp)

    class App:
        rebalancing = False
        in_recovery = False
        consumer = Consumer()

    app = App()
    room = {T0: True, TP("t", 1): False, TP("t", 2): True}
    assert faust_adapter.revive_buffered(app, room, room.get) == [T0]
    assert app.consumer.dropped == [T0]
    app.rebalancing = True
    assert faust_adapter.revive_buffered(app, room, room.get) == []


async def test_fetch_position_reads_the_aiokafka_client_state() -> None:
    """Pins aiokafka 0.14's ``_subscription.subscription.assignment.state_value``
    (and Faust's ``Consumer._thread``) used by the dropped-tail watchdog."""
    from types import SimpleNamespace

    from aiokafka import TopicPartition
    from aiokafka.consumer.subscription_state import SubscriptionState
    from faust.types import TP

    from app import faust_adapter

    state = SubscriptionState()
    tp = TopicPartition("t", 0)
    client = SimpleNamespace(_subscription=state)
    consumer = SimpleNamespace(_thread=SimpleNamespace(_ensure_consumer=lambda: client))
    assert faust_adapter.fetch_position(consumer, TP("t", 0)) is None  # nothing assigned
    state.assign_from_user({tp})
    assert faust_adapter.fetch_position(consumer, TP("t", 0)) is None  # awaiting a reset
    state.seek(tp, 7)
    assert faust_adapter.fetch_position(consumer, TP("t", 0)) == 7
    assert faust_adapter.fetch_position(consumer, TP("t", 1)) is None  # not ours
    assert faust_adapter.fetch_position(SimpleNamespace(), TP("t", 0)) is None  # no client


async def test_assigned_is_the_aiokafka_clients_assignment_and_holds_faust_tps() -> None:
    """Pins aiokafka's ``AIOKafkaConsumer.assignment()`` (its subscription's frozenset,
    not a copy) behind Faust's ``Consumer._thread._ensure_consumer``; a Faust TP is
    found in a set of aiokafka TopicPartitions."""
    from types import SimpleNamespace

    from aiokafka import AIOKafkaConsumer, TopicPartition
    from faust.types import TP

    from app import faust_adapter

    client = AIOKafkaConsumer()
    consumer = SimpleNamespace(_thread=SimpleNamespace(_ensure_consumer=lambda: client))
    assert faust_adapter.assigned(consumer) == set()
    client.assign([TopicPartition("t", 0), TopicPartition("t", 2)])
    got = faust_adapter.assigned(consumer)
    assert TP("t", 0) in got and TP("t", 2) in got and TP("t", 1) not in got
    assert faust_adapter.assigned(consumer) is got  # not rebuilt per call
    await client.stop()
    fallback = SimpleNamespace(assignment=lambda: {TP("u", 1)})  # another driver
    assert faust_adapter.assigned(fallback) == {TP("u", 1)}


async def test_pause_and_resume_fetch_pause_the_aiokafka_client_in_its_thread() -> None:
    """aiokafka's pause keeps the client's position at the last record handed out
    (Faust's pause_partitions drops the rest of a batch being delivered)."""
    from types import SimpleNamespace

    from aiokafka import TopicPartition
    from aiokafka.consumer.subscription_state import SubscriptionState
    from faust.types import TP

    from app import faust_adapter

    state = SubscriptionState()
    mine, other = TopicPartition("t", 0), TopicPartition("t", 1)
    state.assign_from_user({mine})
    calls: list[str] = []

    class Client:
        def assignment(self) -> set[Any]:
            return state.assigned_partitions()

        def pause(self, *tps: Any) -> None:
            for tp in tps:
                state.pause(tp)

        def resume(self, *tps: Any) -> None:
            for tp in tps:
                state.resume(tp)

    async def call_thread(fun: Any, *args: Any) -> Any:
        calls.append(fun.__name__)
        return await fun(*args)

    thread = SimpleNamespace(_ensure_consumer=Client, call_thread=call_thread)
    app = SimpleNamespace(consumer=SimpleNamespace(_thread=thread))
    await faust_adapter.pause_fetch(app, {TP("t", 0), TP("t", 1)})  # t1 is not ours
    assert state.paused_partitions() == {mine} and other not in state.assigned_partitions()
    await faust_adapter.resume_fetch(app, {TP("t", 0)})
    assert state.paused_partitions() == set()
    await faust_adapter.pause_fetch(app, set())  # nothing to do: no call
    assert calls == ["call", "call"]
    assert faust_adapter.may_pause(SimpleNamespace(rebalancing=False, in_recovery=False))
    assert not faust_adapter.may_pause(SimpleNamespace(rebalancing=True))
    assert not faust_adapter.may_pause(SimpleNamespace(rebalancing=False, in_recovery=True))


async def test_topics_missing_from_metadata_are_found_and_refreshed() -> None:
    """Pins aiokafka 0.14's subscription topics, cluster metadata and
    ``force_metadata_update`` run in Faust's consumer thread (``call_thread``)."""
    from types import SimpleNamespace

    from aiokafka.cluster import ClusterMetadata
    from aiokafka.consumer.subscription_state import SubscriptionState

    from app import faust_adapter

    state = SubscriptionState()
    cluster = ClusterMetadata()
    refreshed: list[str] = []

    async def force_metadata_update() -> bool:
        refreshed.append("now")
        return True

    client = SimpleNamespace(
        _subscription=state,
        _client=SimpleNamespace(cluster=cluster, force_metadata_update=force_metadata_update),
    )

    async def call_thread(fun: Any, *args: Any) -> Any:
        return await fun(*args)

    consumer = SimpleNamespace(
        _thread=SimpleNamespace(_ensure_consumer=lambda: client, call_thread=call_thread)
    )
    assert faust_adapter.topics_missing_from_metadata(consumer) == set()  # none subscribed
    state.subscribe(topics={"ns.email.rendered"})
    assert faust_adapter.topics_missing_from_metadata(consumer) == {"ns.email.rendered"}
    await faust_adapter.refresh_metadata(consumer)
    assert refreshed == ["now"]
    assert faust_adapter.topics_missing_from_metadata(SimpleNamespace()) == set()


async def test_stream_queued_reads_a_real_streams_channel_queue() -> None:
    """PriorityGate's ``queued``: a faust Stream's ``channel.queue`` is what the
    conductor fills and the stream drains."""
    app = faust.App("pin-stream-queued", autodiscover=False)
    stream = app.topic("pin-topic").stream()
    queued = faust_adapter.stream_queued(stream)
    assert queued() == 0
    stream.channel.queue.put_nowait("event")
    assert queued() == 1
    assert faust_adapter.stream_queued(object())() == 0  # no channel: nothing queued
