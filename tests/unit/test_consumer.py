"""GaplessConsumer: a jump over offsets that still exist is rewound, never acked; the
committed offset never passes a message that is not done."""

from __future__ import annotations

from collections.abc import AsyncIterator
from types import SimpleNamespace
from typing import Any

import pytest
from faust.transport.drivers import aiokafka as faust_aiokafka
from faust.types import TP
from hypothesis import given, settings
from hypothesis import strategies as st

from app.consumer import (
    GaplessConsumer,
    GaplessTransport,
    GapTracker,
    LostWatch,
    dropped_from,
    next_commit,
    prefer,
    skipped_from,
    urgent_partitions,
    urgent_topics,
)
from app.factory import create_app
from app.settings import Settings

T0 = TP("email.dispatch.bulk", 0)


def test_skipped_from_finds_the_first_skipped_offset() -> None:
    assert skipped_from(None, 7) is None  # nothing known yet
    assert skipped_from(42, 42) is None  # the one expected
    assert skipped_from(42, 30) is None  # seen before: a duplicate, delivered again
    assert skipped_from(42, 57) == 42  # 42..56 fetched but never delivered


def test_the_app_uses_the_gapless_consumer() -> None:
    app = create_app(Settings(stage="dispatch", store="memory://"))  # type: ignore[arg-type]
    assert isinstance(app.transport, GaplessTransport)
    assert app.transport.Consumer is GaplessConsumer
    assert app.conf.stream_wait_empty is False  # revocation is bounded by the dispatcher


def test_next_commit_is_the_run_from_the_committed_position() -> None:
    assert next_commit(None, [1, 2]) is None  # base unknown: commit nothing
    assert next_commit(10, []) is None
    assert next_commit(10, [11, 12]) is None  # 10 not done (Faust would commit 13)
    assert next_commit(10, [10, 11, 13]) == 12
    assert next_commit(0, [0, 1, 2]) == 3  # committed 0 is not "unknown"


def test_tracker_rewinds_over_offsets_that_still_exist_every_time() -> None:
    t = GapTracker()
    t.seeked(T0, 100)
    assert t.check(T0, 130, log_start=0) == 100  # rewind
    t.seeked(T0, 100)
    # the stale fetch from before the seek arrives again: rewind again, never "gone"
    assert t.check(T0, 130, log_start=0) == 100
    assert t.check(T0, 100, log_start=None) is None
    assert t.expected[T0] == 101


def test_tracker_passes_over_only_what_retention_deleted() -> None:
    t = GapTracker()
    t.seeked(T0, 100)
    assert t.check(T0, 130, log_start=120) == 120  # 100..119 gone, 120..129 exist
    t.seeked(T0, 120)
    assert t.check(T0, 130, log_start=130) is None  # all of 120..129 gone now
    assert t.base[T0] >= 130 - 10  # the commit base moved past what is gone


def test_tracker_state_is_forgotten_on_reassignment() -> None:
    """The observed bug: rewind state kept across a rebalance made a later skip from
    the same offset count as 'gone' (99 emails never sent)."""
    t = GapTracker()
    t.positioned(T0, 100)
    assert t.check(T0, 150, log_start=0) == 100
    t.reset()
    assert t.expected == {} and t.base == {}
    assert t.check(T0, 57) is None  # a record of the old generation before the seek
    t.positioned(T0, 0)  # nothing committed: the log start is the commit base
    assert t.base[T0] == 0 and t.expected[T0] == 0
    assert next_commit(t.base[T0], [57]) is None


async def test_ack_of_a_message_from_an_earlier_generation_is_not_counted() -> None:
    """Faust acks a message it skips for its old generation; counted, it would let
    the commit pass the new copy of that offset before it is done."""
    from faust.types import Message

    consumer, _ = make_consumer()
    consumer.app.consumer_generation_id = 5
    old = Message(T0.topic, 0, 10, 0.0, 0, None, b"k", b"v", None, tp=T0, generation_id=4)
    assert consumer.ack(old) is False and old.acked
    assert consumer._acked[T0] == []


class FakeTopics:
    def acks_enabled_for(self, topic: str) -> bool:
        return True


def make_consumer(log_start: int = 0) -> tuple[GaplessConsumer, list[tuple[TP, int]]]:
    """A GaplessConsumer without a broker: Faust's state, seeks recorded."""
    consumer = GaplessConsumer.__new__(GaplessConsumer)
    seeks: list[tuple[TP, int]] = []
    consumer.__dict__.update(
        app=SimpleNamespace(topics=FakeTopics(), consumer_generation_id=0),
        _read_offset={},
        _acked={T0: []},
        _acked_index={T0: set()},
        _committed_offset={T0: None},
    )

    async def seek(tp: TP, offset: int) -> None:
        seeks.append((tp, offset))
        consumer.tracker().seeked(tp, offset)

    async def earliest_offsets(*tps: TP) -> dict[TP, int]:
        return dict.fromkeys(tps, log_start)

    consumer.__dict__["seek"] = seek
    consumer.__dict__["earliest_offsets"] = earliest_offsets
    return consumer, seeks


async def test_getmany_rewinds_a_skip_instead_of_delivering_it(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Disabling the rewind in GaplessConsumer.getmany fails this test."""
    batches = [[5, 6, 7], [3, 4, 5, 6, 7]]  # 3 and 4 fetched before the seek, lost

    async def fake_getmany(self: Any, timeout: float) -> AsyncIterator[tuple[TP, Any]]:  # noqa: ASYNC109
        for offset in batches.pop(0):
            yield T0, SimpleNamespace(topic=T0.topic, offset=offset)

    monkeypatch.setattr(faust_aiokafka.Consumer, "getmany", fake_getmany)
    consumer, seeks = make_consumer()
    consumer.tracker().seeked(T0, 3)
    first = [m.offset async for _, m in consumer.getmany(1.0)]
    assert first == [] and seeks == [(T0, 3)]
    second = [m.offset async for _, m in consumer.getmany(1.0)]
    assert second == [3, 4, 5, 6, 7]
    assert consumer._read_offset[T0] is None  # Faust neither drops nor gap-acks


def test_new_offset_never_passes_an_unacked_message() -> None:
    consumer, _ = make_consumer()
    consumer._committed_offset[T0] = 10
    consumer._acked[T0] = [11, 12, 13]
    consumer._acked_index[T0] = {11, 12, 13}
    assert consumer._new_offset(T0) is None  # 10 is not done
    consumer._acked[T0].append(10)
    consumer._acked_index[T0].add(10)
    assert consumer._new_offset(T0) == 14
    assert consumer._acked[T0] == [] and consumer._acked_index[T0] == set()


# -- the property: random fetch interleavings, rebalances, rewinds, done/not done ------


@st.composite
def scenarios(draw: Any) -> list[tuple[str, int]]:
    steps = st.one_of(
        st.tuples(st.just("fetch"), st.integers(1, 6)),  # deliver the next n records
        st.tuples(st.just("stale"), st.integers(1, 8)),  # a fetch from ahead of the seek
        st.tuples(st.just("done"), st.integers(0, 40)),  # finish the i-th delivered
        st.tuples(st.just("commit"), st.just(0)),
        st.tuples(st.just("rebalance"), st.integers(0, 5)),
        st.tuples(st.just("retention"), st.integers(0, 5)),  # log start moves up
    )
    return draw(st.lists(steps, max_size=60))


@settings(max_examples=300, deadline=None)
@given(scenarios(), st.integers(0, 3))
def test_committed_offset_never_passes_a_message_not_done(
    steps: list[tuple[str, int]], log_start: int
) -> None:
    log_end = 60
    tracker = GapTracker()
    committed: int | None = None
    position = log_start  # the fetcher's position
    done: set[int] = set()
    delivered: list[int] = []
    acked: list[int] = []

    def seek(offset: int) -> None:
        nonlocal position
        position = offset
        tracker.seeked(T0, offset)

    def rebalance(stale: int = 0) -> None:
        nonlocal position
        tracker.reset()
        acked.clear()  # Faust forgets the acks of revoked partitions
        delivered.clear()
        if stale:  # fetched in the old generation, arriving before the seek: never acked
            tracker.check(T0, position + stale, None)
        position = committed if committed is not None else log_start
        tracker.positioned(T0, position)

    def arrive(offset: int) -> None:
        nonlocal position
        if offset < log_start or offset >= log_end:
            return
        start = log_start if tracker.skip_detected(T0, offset) else None
        rewind = tracker.check(T0, offset, start)
        if rewind is not None:
            seek(rewind)
            return
        delivered.append(offset)
        position = offset + 1

    rebalance()
    for kind, n in steps:
        if kind == "fetch":
            for _ in range(n):
                arrive(max(position, log_start))
        elif kind == "stale":
            arrive(position + n)
        elif kind == "done" and delivered:
            offset = delivered[n % len(delivered)]
            done.add(offset)
            if committed is None or offset >= committed:
                acked.append(offset)
        elif kind == "commit":
            base_known = [b for b in (committed, tracker.base.get(T0)) if b is not None]
            new = next_commit(max(base_known) if base_known else None, acked)
            if new is not None:
                committed = new
                tracker.committed(T0, new)
                acked[:] = [o for o in acked if o >= new]
        elif kind == "rebalance":
            rebalance(n)
        elif kind == "retention":
            log_start = min(log_end, log_start + n)
        if committed is not None:
            # every offset below the commit that still exists was done
            missing = [o for o in range(log_start, committed) if o not in done]
            assert not missing, (committed, missing)


async def test_a_record_of_an_earlier_generation_is_fetched_again(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """The stream skips a record fetched before the last rebalance; counted as
    delivered, its offset would never come again and the partition's commit would
    stall for good (3 bulk partitions never sent in a chaos scale run)."""
    batches = [[(0, 4), (1, 5)], [(0, 5), (1, 5)]]  # (offset, generation)

    async def fake_getmany(self: Any, timeout: float) -> AsyncIterator[tuple[TP, Any]]:  # noqa: ASYNC109
        for offset, gen in batches.pop(0):
            yield T0, SimpleNamespace(topic=T0.topic, offset=offset, generation_id=gen)

    monkeypatch.setattr(faust_aiokafka.Consumer, "getmany", fake_getmany)
    consumer, seeks = make_consumer()
    consumer.app.consumer_generation_id = 5
    consumer.tracker().positioned(T0, 0)
    first = [m.offset async for _, m in consumer.getmany(1.0)]
    assert first == [] and seeks == [(T0, 0)]
    second = [m.offset async for _, m in consumer.getmany(1.0)]
    assert second == [0, 1]


def test_a_new_assignment_forgets_acks_left_from_the_rebalance_window() -> None:
    from app import faust_adapter

    consumer, _ = make_consumer()
    consumer._acked[T0].append(7)
    consumer._acked_index[T0].add(7)
    faust_adapter.forget_acks(consumer)
    assert consumer._acked[T0] == [] and consumer._acked_index[T0] == set()


def test_dropped_from_is_the_next_offset_due_when_the_client_is_past_it() -> None:
    assert dropped_from(5, 9) == 5
    assert dropped_from(5, 5) is None and dropped_from(5, 3) is None
    assert dropped_from(None, 9) is None and dropped_from(5, None) is None


def unstick_rig(
    monkeypatch: pytest.MonkeyPatch, positions: dict[TP, int | None]
) -> tuple[GaplessConsumer, list[tuple[TP, int]]]:
    from app import faust_adapter

    consumer, seeks = make_consumer()
    consumer.__dict__["assignment"] = lambda: set(positions)
    monkeypatch.setattr(faust_adapter, "may_pause", lambda app: True)
    monkeypatch.setattr(faust_adapter, "fetch_position", lambda c, tp: positions[tp])
    return consumer, seeks


async def test_records_dropped_at_the_end_of_a_partition_are_fetched_again(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Faust dropped offsets 5..8 (the partition was paused while its batch was being
    delivered) and no later record comes to show the gap: after ``idle_s`` with the
    client's position past the next offset due, the partition is sought back."""
    positions: dict[TP, int | None] = {T0: 9}
    consumer, seeks = unstick_rig(monkeypatch, positions)
    consumer.tracker().positioned(T0, 5)
    assert await consumer.unstick(2.0, now=100.0) == []  # first seen
    assert await consumer.unstick(2.0, now=101.0) == []  # not idle long enough
    assert await consumer.unstick(2.0, now=102.5) == [T0]
    assert seeks == [(T0, 5)]


async def test_a_partition_that_moves_or_is_caught_up_is_left_alone(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    positions: dict[TP, int | None] = {T0: 9}
    consumer, seeks = unstick_rig(monkeypatch, positions)
    consumer.tracker().positioned(T0, 5)
    await consumer.unstick(2.0, now=100.0)
    consumer.tracker().check(T0, 5)  # a record was delivered: progress, clock restarts
    assert await consumer.unstick(2.0, now=103.0) == []
    assert await consumer.unstick(2.0, now=104.0) == []
    positions[T0] = 6  # caught up
    assert await consumer.unstick(2.0, now=110.0) == []
    positions[T0] = None  # awaiting a reset: unknown
    assert await consumer.unstick(2.0, now=120.0) == []
    assert seeks == []


async def test_nothing_is_sought_in_a_rebalance(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    from app import faust_adapter

    positions: dict[TP, int | None] = {T0: 9}
    consumer, seeks = unstick_rig(monkeypatch, positions)
    consumer.tracker().positioned(T0, 5)
    monkeypatch.setattr(faust_adapter, "may_pause", lambda app: False)
    for t in (200.0, 205.0):
        assert await consumer.unstick(2.0, now=t) == []
    assert seeks == []


async def test_getmany_then_unstick_delivers_a_dropped_tail_once(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """End to end through getmany: the first batch's records 5..8 never reach the
    stream (Faust dropped them), the client stands at 9; unstick seeks back and the
    next fetch delivers exactly 5..8."""
    positions: dict[TP, int | None] = {T0: 9}
    batches: list[list[int]] = [[], [5, 6, 7, 8]]

    async def fake_getmany(self: Any, timeout: float) -> AsyncIterator[tuple[TP, Any]]:  # noqa: ASYNC109
        for offset in batches.pop(0):
            yield T0, SimpleNamespace(topic=T0.topic, offset=offset)

    monkeypatch.setattr(faust_aiokafka.Consumer, "getmany", fake_getmany)
    consumer, seeks = unstick_rig(monkeypatch, positions)
    consumer.tracker().positioned(T0, 5)
    assert [m.offset async for _, m in consumer.getmany(1.0)] == []
    await consumer.unstick(2.0, now=0.0)
    assert await consumer.unstick(2.0, now=3.0) == [T0]
    positions[T0] = 5
    assert [m.offset async for _, m in consumer.getmany(1.0)] == [5, 6, 7, 8]
    assert seeks == [(T0, 5)] and consumer.tracker().expected[T0] == 9


def test_the_app_looks_for_dropped_tails_on_a_timer() -> None:
    app = create_app(Settings(stage="dispatch"))
    names = [getattr(getattr(t, "fun", t), "__name__", "") for t in app._app_tasks]
    assert "unstick" in names, names


async def test_a_topic_missing_from_metadata_is_asked_for_at_most_every_few_seconds(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    from app import faust_adapter

    consumer, _ = make_consumer()
    missing = {"ns.email.rendered"}
    asked: list[str] = []

    async def refresh(c: Any) -> None:
        asked.append("refresh")

    monkeypatch.setattr(faust_adapter, "topics_missing_from_metadata", lambda c: set(missing))
    monkeypatch.setattr(faust_adapter, "refresh_metadata", refresh)
    assert await consumer.find_missing_topics(5.0, now=100.0) == missing
    assert await consumer.find_missing_topics(5.0, now=102.0) == missing
    assert asked == ["refresh"]
    await consumer.find_missing_topics(5.0, now=105.5)
    assert asked == ["refresh", "refresh"]
    missing.clear()  # the topic is known now: nothing more to ask
    assert await consumer.find_missing_topics(5.0, now=200.0) == set()
    assert asked == ["refresh", "refresh"]


async def test_a_failed_metadata_refresh_is_tried_again_later(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    from app import faust_adapter

    consumer, _ = make_consumer()
    calls: list[float] = []

    async def refresh(c: Any) -> None:
        calls.append(1.0)
        raise ConnectionError("broker away")

    monkeypatch.setattr(faust_adapter, "topics_missing_from_metadata", lambda c: {"t"})
    monkeypatch.setattr(faust_adapter, "refresh_metadata", refresh)
    await consumer.find_missing_topics(1.0, now=0.0)
    await consumer.find_missing_topics(1.0, now=2.0)
    assert len(calls) == 2


async def test_a_seek_back_while_the_batch_is_still_delivered_delivers_nothing_twice(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """unstick may seek back while the rest of a batch still waits for a full stream
    buffer: those records come through, and their second copies are dropped."""
    batches = [[5, 6, 7, 8], [5, 6, 7, 8, 9]]

    async def fake_getmany(self: Any, timeout: float) -> AsyncIterator[tuple[TP, Any]]:  # noqa: ASYNC109
        for offset in batches.pop(0):
            yield T0, SimpleNamespace(topic=T0.topic, offset=offset)

    monkeypatch.setattr(faust_aiokafka.Consumer, "getmany", fake_getmany)
    consumer, _ = make_consumer()
    consumer.tracker().positioned(T0, 5)
    delivered = []
    first = consumer.getmany(1.0)
    delivered.append((await first.__anext__())[1].offset)  # 5 delivered, 6..8 waiting
    await consumer.seek(T0, 6)  # the watchdog's seek back to the next offset due
    delivered += [m.offset async for _, m in first]
    delivered += [m.offset async for _, m in consumer.getmany(1.0)]
    assert delivered == [5, 6, 7, 8, 9]


def test_a_message_taken_past_and_never_in_hand_is_named_after_a_while() -> None:
    """Offset 104 never reached the stage while 105.. did (the scale run's last
    missing email: the commit stood at 104 for good)."""
    watch = LostWatch(after_s=3.0)
    args = (T0, 104, 163, {}, set())
    assert watch.check(*args, now=100.0) is None  # first seen
    assert watch.check(*args, now=102.0) is None  # it may just be on its way
    assert watch.check(*args, now=103.5) == 104
    assert watch.check(*args, now=103.6) is None  # named once, then watched again


@pytest.mark.parametrize(
    ("base", "taken", "in_hand", "acked"),
    [
        (104, 104, {}, set()),  # nothing taken past it: held back, not lost
        (104, 90, {}, set()),  # taken in an earlier generation (cleared), or behind
        (104, 163, {104: "task"}, set()),  # being handled (a slow request, a breaker)
        (104, 163, {}, {104}),  # done, not committed yet
        (None, 163, {}, set()),  # no commit position known
    ],
)
def test_work_in_hand_done_or_not_yet_taken_is_never_lost(
    base: int | None, taken: int, in_hand: dict[int, str], acked: set[int]
) -> None:
    watch = LostWatch(after_s=1.0)
    for t in (0.0, 5.0, 50.0):
        assert watch.check(T0, base, taken, in_hand, acked, now=t) is None


def test_progress_restarts_the_wait_and_forget_drops_old_partitions() -> None:
    watch = LostWatch(after_s=3.0)
    assert watch.check(T0, 104, 163, {}, set(), now=0.0) is None
    assert watch.check(T0, 110, 163, {}, set(), now=2.9) is None  # the commit moved
    assert watch.check(T0, 110, 163, {}, set(), now=5.0) is None
    assert watch.check(T0, 110, 163, {}, set(), now=6.0) == 110
    watch.check(T0, 120, 163, {}, set(), now=7.0)
    watch.forget(keep=[])
    assert watch.since == {}


def test_commit_base_is_the_later_of_the_committed_offset_and_the_tracker() -> None:
    consumer, _ = make_consumer()
    assert consumer.commit_base(T0) is None
    consumer.tracker().positioned(T0, 40)
    assert consumer.commit_base(T0) == 40
    consumer._committed_offset[T0] = 55
    assert consumer.commit_base(T0) == 55


async def test_redeliver_seeks_back_and_the_offset_comes_again(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    batches = [[104, 105, 106]]

    async def fake_getmany(self: Any, timeout: float) -> AsyncIterator[tuple[TP, Any]]:  # noqa: ASYNC109
        for offset in batches.pop(0):
            yield T0, SimpleNamespace(topic=T0.topic, offset=offset)

    monkeypatch.setattr(faust_aiokafka.Consumer, "getmany", fake_getmany)
    consumer, seeks = make_consumer()
    consumer.tracker().positioned(T0, 104)
    consumer.tracker().check(T0, 104)
    consumer.tracker().check(T0, 105)
    consumer.tracker().check(T0, 106)  # all delivered once; 104 got lost downstream
    await consumer.redeliver(T0, 104)
    assert seeks == [(T0, 104)]
    assert [m.offset async for _, m in consumer.getmany(1.0)] == [104, 105, 106]


# -- critical partitions first (issue 14) ------------------------------------------


def _tps(topic: str, n: int = 4) -> set[TP]:
    return {TP(topic, p) for p in range(n)}


def test_urgent_partitions_are_those_of_the_urgent_topics_among_others() -> None:
    crit, bulk = _tps("email.raw-events.critical"), _tps("email.raw-events.bulk")
    urgent = {"email.raw-events.critical"}
    assert urgent_partitions(crit | bulk, urgent) == crit
    assert urgent_partitions(bulk, urgent) is None  # none urgent: one plain fetch
    assert urgent_partitions(crit, urgent) is None  # only urgent ones: the same
    assert urgent_partitions(set(), urgent) is None
    assert urgent_partitions(None, urgent) is None  # a client-only app: Faust's None


@given(
    st.sets(st.tuples(st.sampled_from("abcd"), st.integers(0, 3))),
    st.sets(st.sampled_from("abcd")),
)
def test_urgent_partitions_never_add_a_partition(
    active: set[tuple[str, int]], urgent: set[str]
) -> None:
    tps = {TP(t, p) for t, p in active}
    first = urgent_partitions(tps, urgent)
    if first is not None:
        assert first and first < tps and all(tp.topic in urgent for tp in first)
        assert all(tp in first for tp in tps if tp.topic in urgent)


class _Fetches:
    """Faust's ``Consumer._getmany`` stand-in: what each call asked, and the records
    buffered per partition (handed out and forgotten, like the client's)."""

    def __init__(self, buffered: dict[TP, list[str]]) -> None:
        self.buffered = buffered
        self.calls: list[tuple[set[TP] | None, float]] = []

    def install(self, monkeypatch: pytest.MonkeyPatch) -> None:
        async def _getmany(_self: Any, active: set[TP] | None, wait: float) -> Any:
            return self.fetch(active, wait)

        monkeypatch.setattr(faust_aiokafka.Consumer, "_getmany", _getmany)

    def fetch(self, active: set[TP] | None, wait: float) -> Any:
        self.calls.append((None if active is None else set(active), wait))
        wanted = self.buffered if active is None else active
        return {tp: self.buffered.pop(tp) for tp in list(wanted) if tp in self.buffered}


async def test_buffered_critical_records_are_handed_out_before_the_burst(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    crit, bulk = TP("email.raw-events.critical", 0), TP("email.raw-events.bulk", 0)
    fetches = _Fetches({bulk: ["b1", "b2"], crit: ["c1"]})
    fetches.install(monkeypatch)
    consumer = GaplessConsumer.__new__(GaplessConsumer)
    consumer.app = SimpleNamespace()
    prefer(consumer.app, ["email.raw-events.critical"])
    assert urgent_topics(consumer.app) == {"email.raw-events.critical"}
    first = await consumer._getmany({crit, bulk}, 1.0)
    assert first == {crit: ["c1"]}  # only the critical partition's, at once
    assert fetches.calls == [({crit}, 0.0)]
    second = await consumer._getmany({crit, bulk}, 1.0)
    assert second == {bulk: ["b1", "b2"]}  # none critical left: everything, as asked
    assert fetches.calls[1:] == [({crit}, 0.0), ({crit, bulk}, 1.0)]


async def test_without_urgent_topics_a_fetch_is_one_plain_call(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    bulk = TP("email.raw-events.bulk", 0)
    fetches = _Fetches({bulk: ["b1"]})
    fetches.install(monkeypatch)
    consumer = GaplessConsumer.__new__(GaplessConsumer)
    consumer.app = SimpleNamespace()  # never told: nothing is urgent
    assert await consumer._getmany({bulk}, 2.0) == {bulk: ["b1"]}
    assert fetches.calls == [({bulk}, 2.0)]


def test_every_stage_reads_its_critical_topics_first() -> None:
    app = create_app(Settings(stage="render", topic_namespace="ns."), registry=object())
    assert urgent_topics(app) == {
        "ns.email.raw-events.critical",
        "ns.email.rendered.critical",
        "ns.email.dispatch.critical",
    }
