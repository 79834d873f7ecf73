"""The gapless consumer's bookkeeping checked exactly (issue 17 pt 5: survivors of the
mutation run of app/consumer.py): what a seek, a commit and a reset do to the next
offset due and the commit base, where a rewind goes when retention deleted part of a
skip, and what counts as fetched-but-dropped."""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator
from types import SimpleNamespace
from typing import Any, NamedTuple

import pytest
from faust.transport.drivers import aiokafka as faust_aiokafka
from faust.types import TP

from app import faust_adapter
from app.consumer import GaplessConsumer, GapTracker, dropped_from, next_commit, skipped_from

T0 = TP("email.dispatch.bulk", 0)
T1 = TP("email.dispatch.bulk", 1)


def test_skipped_from_edges() -> None:
    assert skipped_from(0, 0) is None
    assert skipped_from(0, 1) == 0
    assert skipped_from(10, 11) == 10
    assert skipped_from(None, 0) is None


def test_next_commit_runs_to_the_first_gap() -> None:
    assert next_commit(0, [0]) == 1
    assert next_commit(5, [5, 6, 7, 9]) == 8
    assert next_commit(5, iter([7, 6, 5])) == 8  # any order, any iterable
    assert next_commit(5, [4, 6]) is None


def test_dropped_from_edges() -> None:
    assert dropped_from(None, 5) is None
    assert dropped_from(5, None) is None
    assert dropped_from(5, 5) is None  # the client is where the stream is
    assert dropped_from(5, 4) is None
    assert dropped_from(5, 6) == 5
    assert dropped_from(0, 9) == 0


def test_positioned_sets_both_and_forgets_both_without_an_offset() -> None:
    t = GapTracker()
    t.positioned(T0, 0)
    assert (t.expected, t.base) == ({T0: 0}, {T0: 0})
    t.positioned(T0, 7)
    assert (t.expected, t.base) == ({T0: 7}, {T0: 7})
    t.positioned(T0, -1)
    assert (t.expected, t.base) == ({}, {})
    t.positioned(T0, 3)
    t.positioned(T0, None)
    assert (t.expected, t.base) == ({}, {})
    t.positioned(T1, None)  # nothing known: nothing to forget, no error
    assert (t.expected, t.base) == ({}, {})


def test_seeked_moves_only_the_next_offset_due() -> None:
    t = GapTracker()
    t.positioned(T0, 10)
    t.seeked(T0, 4)
    assert (t.expected, t.base) == ({T0: 4}, {T0: 10})
    t.seeked(T0, 0)
    assert t.expected == {T0: 0}
    t.seeked(T0, -1)
    assert t.expected == {} and t.base == {T0: 10}
    t.seeked(T0, None)
    t.seeked(T1, None)
    assert t.expected == {}


def test_committed_never_moves_the_base_back() -> None:
    t = GapTracker()
    t.committed(T0, 5)
    assert t.base == {T0: 5}
    t.committed(T0, 3)
    assert t.base == {T0: 5}
    t.committed(T0, 9)
    assert t.base == {T0: 9}


def test_reset_of_some_partitions_keeps_the_others() -> None:
    t = GapTracker()
    t.positioned(T0, 1)
    t.positioned(T1, 2)
    t.reset([T0, TP("other", 0)])
    assert (t.expected, t.base) == ({T1: 2}, {T1: 2})
    t.reset([])
    assert (t.expected, t.base) == ({T1: 2}, {T1: 2})
    t.reset()
    assert (t.expected, t.base) == ({}, {})


def test_check_delivers_in_order_and_never_moves_the_next_offset_back() -> None:
    t = GapTracker()
    assert t.check(T0, 5) is None  # nothing known: delivered
    assert t.expected == {T0: 6}
    t.seeked(T0, 6)
    assert t.check(T0, 6) is None and t.expected == {T0: 7}
    assert t.check(T0, 3) is None  # a duplicate: delivered, next offset stays
    assert t.expected == {T0: 7}
    assert t.base == {}  # deliveries never move the commit base


def test_check_rewinds_to_the_log_start_when_retention_took_the_head() -> None:
    t = GapTracker()
    t.positioned(T0, 10)
    assert t.check(T0, 20, log_start=15) == 15  # 10..14 gone, 15..19 exist
    assert t.base == {T0: 15}
    assert t.expected == {T0: 10}  # not delivered: the seek sets it
    t.positioned(T0, 10)
    assert t.check(T0, 20, log_start=10) == 10  # the log start is the skip: all exist
    assert t.base == {T0: 10}
    t.positioned(T0, 10)
    assert t.check(T0, 20, log_start=20) is None  # everything skipped is gone
    assert t.base == {T0: 20} and t.expected == {T0: 21}
    t.positioned(T0, 10)
    assert t.check(T0, 20, log_start=25) is None  # (a stale log start past the record)
    assert t.base == {T0: 25}


def test_retention_never_moves_the_base_back() -> None:
    t = GapTracker()
    t.seeked(T0, 10)
    t.committed(T0, 30)
    assert t.check(T0, 40, log_start=20) == 20
    assert t.base == {T0: 30}


def test_seen_is_below_the_next_offset_due() -> None:
    t = GapTracker()
    assert not t.seen(T0, 0)  # nothing known
    t.seeked(T0, 5)
    assert t.seen(T0, 4) and t.seen(T0, 0)
    assert not t.seen(T0, 5) and not t.seen(T0, 6)
    assert not t.seen(T1, 0)


def test_skip_detected_only_above_the_next_offset_due() -> None:
    t = GapTracker()
    assert not t.skip_detected(T0, 9)
    t.seeked(T0, 5)
    assert not t.skip_detected(T0, 5) and not t.skip_detected(T0, 2)
    assert t.skip_detected(T0, 6)


# -- the consumer above Faust and aiokafka (their calls replaced at the seams) ---------------


class Topics:
    """Stream topics are acked; changelogs (``-changelog``) are not."""

    def __init__(self, acks: bool = True) -> None:
        self.acks = acks

    def acks_enabled_for(self, topic: str) -> bool:
        return self.acks and not topic.endswith("-changelog")


def consumer(acks: bool = True, **app: Any) -> tuple[GaplessConsumer, list[tuple[TP, int]]]:
    c = GaplessConsumer.__new__(GaplessConsumer)
    seeks: list[tuple[TP, int]] = []
    c.__dict__.update(
        app=SimpleNamespace(topics=Topics(acks), consumer_generation_id=0, **app),
        _read_offset={},
        _acked={T0: [], T1: []},
        _acked_index={T0: set(), T1: set()},
        _committed_offset={},
    )

    async def seek(tp: TP, offset: int) -> None:
        seeks.append((tp, offset))
        c.tracker().seeked(tp, offset)

    c.__dict__["seek"] = seek
    c.__dict__["assignment"] = lambda: {T0, T1}
    return c, seeks


async def test_a_missing_topic_refreshes_metadata_at_most_every_interval(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    c, _ = consumer()
    missing = {"email.raw-events.bulk"}
    refreshes: list[str] = []

    async def refresh(_: Any) -> None:
        refreshes.append("x")

    monkeypatch.setattr(faust_adapter, "topics_missing_from_metadata", lambda _: set(missing))
    monkeypatch.setattr(faust_adapter, "refresh_metadata", refresh)
    assert await c.find_missing_topics(every_s=5.0, now=0.0) == missing
    assert len(refreshes) == 1  # the first time at once
    assert await c.find_missing_topics(every_s=5.0, now=4.9) == missing
    assert len(refreshes) == 1
    assert await c.find_missing_topics(every_s=5.0, now=5.0) == missing
    assert len(refreshes) == 2
    missing.clear()
    assert await c.find_missing_topics(every_s=5.0, now=100.0) == set()
    assert len(refreshes) == 2


async def test_a_failed_metadata_refresh_is_asked_again_later(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    c, _ = consumer()
    calls: list[float] = []

    async def refresh(_: Any) -> None:
        calls.append(1)
        raise ConnectionError("broker away")

    monkeypatch.setattr(faust_adapter, "topics_missing_from_metadata", lambda _: {"t"})
    monkeypatch.setattr(faust_adapter, "refresh_metadata", refresh)
    assert await c.find_missing_topics(every_s=2.0, now=10.0) == {"t"}
    assert await c.find_missing_topics(every_s=2.0, now=11.0) == {"t"}
    assert await c.find_missing_topics(every_s=2.0, now=12.0) == {"t"}
    assert len(calls) == 2


async def test_unstick_seeks_back_a_drop_unchanged_for_the_idle_time(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    c, seeks = consumer(rebalancing=False, in_recovery=False)
    positions = {T0: 12, T1: 3}
    monkeypatch.setattr(faust_adapter, "fetch_position", lambda _, tp: positions.get(tp))
    c.tracker().seeked(T0, 10)  # 10 and 11 handed out, never reached the stream
    c.tracker().seeked(T1, 3)  # up to date
    assert await c.unstick(idle_s=2.0, now=100.0) == []  # first seen
    assert await c.unstick(idle_s=2.0, now=101.9) == []
    assert seeks == []
    assert await c.unstick(idle_s=2.0, now=102.0) == [T0]
    assert seeks == [(T0, 10)]
    assert await c.unstick(idle_s=2.0, now=200.0) == []  # sought: the watch starts over


async def test_unstick_restarts_the_watch_when_the_figures_move(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    c, seeks = consumer()
    positions = {T0: 12}
    monkeypatch.setattr(faust_adapter, "fetch_position", lambda _, tp: positions.get(tp))
    c.tracker().seeked(T0, 10)
    await c.unstick(idle_s=2.0, now=100.0)
    positions[T0] = 13  # the client moved on: not stuck
    assert await c.unstick(idle_s=2.0, now=102.0) == []
    assert await c.unstick(idle_s=2.0, now=103.9) == []
    c.tracker().seeked(T0, 11)  # the stream moved on
    assert await c.unstick(idle_s=2.0, now=104.0) == []
    assert await c.unstick(idle_s=2.0, now=106.0) == [T0]
    assert seeks == [(T0, 11)]


async def test_unstick_forgets_partitions_caught_up_or_no_longer_assigned(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    c, seeks = consumer()
    positions: dict[TP, int | None] = {T0: 12, T1: 7}
    monkeypatch.setattr(faust_adapter, "fetch_position", lambda _, tp: positions.get(tp))
    c.tracker().seeked(T0, 10)
    c.tracker().seeked(T1, 5)
    await c.unstick(idle_s=2.0, now=100.0)
    assert set(c._behind) == {T0, T1}
    positions[T0] = None  # unknown (awaiting a reset)
    c.__dict__["assignment"] = lambda: {T0}  # T1 revoked
    assert await c.unstick(idle_s=2.0, now=101.0) == []
    assert c._behind == {}
    positions[T0] = 12
    await c.unstick(idle_s=2.0, now=102.0)
    c.tracker().seeked(T0, 12)  # caught up
    assert await c.unstick(idle_s=2.0, now=110.0) == [] and c._behind == {}
    assert seeks == []


async def test_unstick_does_nothing_while_faust_pauses_or_without_acks(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(faust_adapter, "fetch_position", lambda _, tp: 12)
    c, seeks = consumer(rebalancing=True)
    c.tracker().seeked(T0, 10)
    assert await c.unstick(idle_s=0.0, now=1.0) == []
    assert await c.unstick(idle_s=0.0, now=9.0) == []
    changelog, seeks2 = consumer(acks=False)
    changelog.tracker().seeked(T0, 10)
    await changelog.unstick(idle_s=0.0, now=1.0)
    assert await changelog.unstick(idle_s=0.0, now=9.0) == []
    broken, seeks3 = consumer()

    def no_assignment() -> set[TP]:
        raise RuntimeError("not subscribed")

    broken.__dict__["assignment"] = no_assignment
    broken.tracker().seeked(T0, 10)
    assert await broken.unstick(idle_s=0.0, now=1.0) == []
    assert seeks == seeks2 == seeks3 == []


async def test_seek_to_committed_positions_fresh_partitions_at_the_log_start(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    T2 = TP("email.dispatch.bulk", 2)
    asked: list[tuple[TP, ...]] = []

    async def committed(self: Any) -> dict[TP, int | None]:
        return {T0: 5, T1: None, T2: -1}

    async def earliest(*tps: TP) -> dict[TP, int]:
        asked.append(tps)
        return {T1: 3, T2: 0}

    monkeypatch.setattr(faust_aiokafka.Consumer, "seek_to_committed", committed)
    c, _ = consumer()
    c.__dict__["earliest_offsets"] = earliest
    assert await c.seek_to_committed() == {T0: 5, T1: None, T2: -1}
    assert sorted(asked[0]) == sorted((T1, T2))
    assert c.tracker().expected == {T0: 5, T1: 3, T2: 0}
    assert c.tracker().base == {T0: 5, T1: 3, T2: 0}

    async def all_committed(self: Any) -> dict[TP, int | None]:
        return {T0: 0}

    monkeypatch.setattr(faust_aiokafka.Consumer, "seek_to_committed", all_committed)
    c2, _ = consumer()
    c2.__dict__["earliest_offsets"] = earliest
    await c2.seek_to_committed()
    assert len(asked) == 1  # nothing fresh: the log start is not asked
    assert c2.tracker().base == {T0: 0}


async def test_revocation_drains_commits_then_forgets(monkeypatch: pytest.MonkeyPatch) -> None:
    order: list[Any] = []

    async def super_revoked(self: Any, revoked: set[TP]) -> None:
        order.append(("faust", set(revoked), dict(self.tracker().expected)))

    monkeypatch.setattr(faust_aiokafka.Consumer, "on_partitions_revoked", super_revoked)
    c, _ = consumer()

    async def drain(tps: set[TP]) -> None:
        order.append(("drain", tps))

    async def commit(tps: set[TP]) -> bool:
        order.append(("commit", tps))
        return True

    c.app.spillway_before_revoke = drain
    c.__dict__["commit"] = commit
    c.tracker().positioned(T0, 4)
    c.tracker().positioned(T1, 9)
    await c.on_partitions_revoked({T0})
    assert order == [("drain", {T0}), ("commit", {T0}), ("faust", {T0}, {T1: 9})]
    order.clear()
    await c.on_partitions_revoked(set())  # nothing revoked: no drain, no commit
    assert order == [("faust", set(), {T1: 9})]


async def test_a_failed_drain_never_fails_the_rebalance(monkeypatch: pytest.MonkeyPatch) -> None:
    order: list[str] = []

    async def super_revoked(self: Any, revoked: set[TP]) -> None:
        order.append("faust")

    monkeypatch.setattr(faust_aiokafka.Consumer, "on_partitions_revoked", super_revoked)
    c, _ = consumer()

    async def drain(tps: set[TP]) -> None:
        raise RuntimeError("drain failed")

    async def commit(tps: set[TP]) -> bool:
        order.append("commit")
        return True

    c.app.spillway_before_revoke = drain
    c.__dict__["commit"] = commit
    c.tracker().positioned(T0, 4)
    await c.on_partitions_revoked({T0})
    assert order == ["faust"] and c.tracker().expected == {}
    c2, _ = consumer()  # no hook: nothing to drain, no commit
    c2.__dict__["commit"] = commit
    await c2.on_partitions_revoked({T0})
    assert order == ["faust", "faust"]


async def test_assignment_forgets_state_and_acks_before_faust(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    order: list[Any] = []

    async def super_assigned(self: Any, assigned: set[TP], generation_id: int = 0) -> None:
        order.append(("faust", set(assigned), generation_id))

    monkeypatch.setattr(faust_aiokafka.Consumer, "on_partitions_assigned", super_assigned)
    c, _ = consumer()
    c.tracker().positioned(T0, 4)
    c._acked[T0].append(4)
    c._acked_index[T0].add(4)
    c.app.spillway_on_assigned = lambda tps: order.append(("hook", tps, list(c._acked[T0])))
    await c.on_partitions_assigned({T0, T1}, 7)
    assert order == [("hook", {T0, T1}, []), ("faust", {T0, T1}, 7)]
    assert c.tracker().expected == {} and c._acked_index[T0] == set()


def test_commits_start_at_the_later_of_faust_and_the_tracker() -> None:
    c, _ = consumer()
    c._committed_offset[T0] = 5
    c.tracker().committed(T0, 8)  # retention moved the base past 5..7
    c._acked[T0][:] = [9, 8, 6]
    c._acked_index[T0].update({9, 8, 6})
    assert c._new_offset(T0) == 10
    assert c._acked[T0] == [] and c._acked_index[T0] == set()
    assert c.tracker().base[T0] == 10
    c._acked[T0][:] = [12, 11]
    c._acked_index[T0].update({12, 11})
    assert c._new_offset(T0) is None  # 10 not done
    assert c._acked[T0] == [12, 11] and c._acked_index[T0] == {11, 12}
    c._acked[T0].append(10)
    c._acked_index[T0].add(10)
    assert c._new_offset(T0) == 13


def test_commit_waits_for_a_known_base() -> None:
    c, _ = consumer()
    c._acked[T0][:] = [0, 1]
    assert c._new_offset(T0) is None  # neither Faust nor the tracker knows the base
    c.tracker().positioned(T0, 0)
    assert c._new_offset(T0) == 2


def test_changelog_commits_are_faust_s_own(monkeypatch: pytest.MonkeyPatch) -> None:
    asked: list[TP] = []
    monkeypatch.setattr(
        faust_aiokafka.Consumer, "_new_offset", lambda self, tp: asked.append(tp) or 99
    )
    c, _ = consumer()
    log = TP("app-sent-ledger-changelog", 0)
    c._acked[log], c._acked_index[log] = [0], {0}
    assert c._new_offset(log) == 99 and asked == [log]
    c._acked[T0][:] = [0]
    c.tracker().positioned(T0, 0)
    assert c._new_offset(T0) == 1 and asked == [log]  # a stream topic: ours


def test_only_a_stale_stream_ack_is_refused(monkeypatch: pytest.MonkeyPatch) -> None:
    acked: list[int] = []
    monkeypatch.setattr(
        faust_aiokafka.Consumer, "ack", lambda self, m: acked.append(m.offset) or True
    )
    c, _ = consumer()
    c.app.consumer_generation_id = 5
    current = SimpleNamespace(topic=T0.topic, offset=1, generation_id=5, acked=False)
    unknown = SimpleNamespace(topic=T0.topic, offset=2, acked=False)
    stale = SimpleNamespace(topic=T0.topic, offset=3, generation_id=4, acked=False)
    assert c.ack(current) is True and c.ack(unknown) is True
    assert c.ack(stale) is False and stale.acked is True
    assert acked == [1, 2]
    changelog, _ = consumer(acks=False)
    changelog.app.consumer_generation_id = 5
    old = SimpleNamespace(topic="changelog", offset=4, generation_id=4, acked=False)
    assert changelog.ack(old) is True and acked == [1, 2, 4]


async def test_seek_moves_the_next_offset_due(monkeypatch: pytest.MonkeyPatch) -> None:
    sought: list[tuple[TP, int]] = []

    async def super_seek(self: Any, tp: TP, offset: int) -> None:
        sought.append((tp, offset))

    monkeypatch.setattr(faust_aiokafka.Consumer, "seek", super_seek)
    c = GaplessConsumer.__new__(GaplessConsumer)
    c.tracker().positioned(T0, 9)
    await c.seek(T0, 4)
    assert sought == [(T0, 4)]
    assert c.tracker().expected == {T0: 4} and c.tracker().base == {T0: 9}


async def test_getmany_drops_what_was_delivered_and_rewinds_each_skip_once(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    batch = [(T0, 3), (T0, 4), (T0, 5), (T0, 8), (T0, 9), (T1, 0), (T1, 1)]
    starts: list[TP] = []

    async def fetch(self: Any, timeout: float) -> AsyncIterator[tuple[TP, Any]]:  # noqa: ASYNC109
        for tp, offset in batch:
            yield tp, SimpleNamespace(topic=tp.topic, offset=offset)

    async def earliest(*tps: TP) -> dict[TP, int]:
        starts.extend(tps)
        return dict.fromkeys(tps, 0)

    monkeypatch.setattr(faust_aiokafka.Consumer, "getmany", fetch)
    c, seeks = consumer()
    c.__dict__["earliest_offsets"] = earliest
    c._read_offset.update({T0: 7, T1: 7})
    c.tracker().seeked(T0, 4)  # 3 was delivered already
    c.tracker().seeked(T1, 0)
    got = [(tp, m.offset) async for tp, m in c.getmany(1.0)]
    # 3 dropped as seen; 4, 5 delivered; 8 skips 6..7: rewind, and 9 of that
    # partition is not delivered in this batch; T1 goes on
    assert got == [(T0, 4), (T0, 5), (T1, 0), (T1, 1)]
    assert seeks == [(T0, 6)] and starts == [T0]
    assert c._read_offset == {T0: None, T1: None}


# -- defaults, the seams' arguments, and what the operator reads --------------------------


async def test_metadata_refresh_defaults_and_log(
    monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    c, _ = consumer()
    seen: list[Any] = []

    async def refresh(arg: Any) -> None:
        seen.append(("refresh", arg))

    def missing(arg: Any) -> set[str]:
        seen.append(("missing", arg))
        return {"b", "a"}

    monkeypatch.setattr(faust_adapter, "topics_missing_from_metadata", missing)
    monkeypatch.setattr(faust_adapter, "refresh_metadata", refresh)
    caplog.set_level(logging.INFO, logger="app.consumer")
    await c.find_missing_topics(now=100.0)
    await c.find_missing_topics(now=104.9)
    await c.find_missing_topics(now=105.0)  # the default interval is 5 s
    assert seen == [("missing", c), ("refresh", c), ("missing", c), ("missing", c),
                    ("refresh", c)]  # fmt: skip
    assert [r.getMessage() for r in caplog.records] == [
        "subscribed topics ['a', 'b'] not in metadata yet: refreshing"
    ] * 2


async def test_a_failed_refresh_is_logged(
    monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    c, _ = consumer()

    async def refresh(_: Any) -> None:
        raise ConnectionError("broker away")

    monkeypatch.setattr(faust_adapter, "topics_missing_from_metadata", lambda _: {"t"})
    monkeypatch.setattr(faust_adapter, "refresh_metadata", refresh)
    caplog.set_level(logging.WARNING, logger="app.consumer")
    await c.find_missing_topics(now=0.0)
    # (the exception's text may be redacted by the log filters: its class is enough)
    [line] = [r.getMessage() for r in caplog.records if r.name == "app.consumer"]
    assert line.startswith("metadata refresh failed: ConnectionError(")


async def test_unstick_waits_two_seconds_by_default(monkeypatch: pytest.MonkeyPatch) -> None:
    c, seeks = consumer()
    monkeypatch.setattr(faust_adapter, "fetch_position", lambda _, tp: 12 if tp == T0 else None)
    c.tracker().seeked(T0, 10)
    await c.unstick(now=100.0)
    assert await c.unstick(now=101.99) == []
    assert await c.unstick(now=102.0) == [T0] and seeks == [(T0, 10)]


async def test_a_failed_drain_is_logged(
    monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    async def super_revoked(self: Any, revoked: set[TP]) -> None:
        pass

    monkeypatch.setattr(faust_aiokafka.Consumer, "on_partitions_revoked", super_revoked)
    c, _ = consumer()

    async def drain(tps: set[TP]) -> None:
        raise RuntimeError("drain failed")

    c.app.spillway_before_revoke = drain
    caplog.set_level(logging.WARNING, logger="app.consumer")
    await c.on_partitions_revoked({T0})
    [line] = [r.getMessage() for r in caplog.records if r.name == "app.consumer"]
    assert line.startswith("commit before revocation failed: RuntimeError(")


async def test_assignment_without_a_hook_and_the_default_generation(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    calls: list[int] = []

    async def super_assigned(self: Any, assigned: set[TP], generation_id: int = -1) -> None:
        calls.append(generation_id)

    monkeypatch.setattr(faust_aiokafka.Consumer, "on_partitions_assigned", super_assigned)
    c, _ = consumer()  # its app has no spillway_on_assigned
    await c.on_partitions_assigned({T0})
    assert calls == [0]


async def test_getmany_rewinds_to_the_log_start_and_says_so(
    monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    waits: list[float] = []

    async def fetch(self: Any, timeout: float) -> AsyncIterator[tuple[TP, Any]]:  # noqa: ASYNC109
        waits.append(timeout)
        for offset in (10, 11):
            yield T0, SimpleNamespace(topic=T0.topic, offset=offset)

    async def earliest(*tps: TP) -> dict[TP, int]:
        return dict.fromkeys(tps, 7)  # retention deleted 5 and 6

    monkeypatch.setattr(faust_aiokafka.Consumer, "getmany", fetch)
    c, seeks = consumer()
    c.__dict__["earliest_offsets"] = earliest
    c.tracker().seeked(T0, 5)
    caplog.set_level(logging.WARNING, logger="app.consumer")
    got = [m.offset async for _, m in c.getmany(2.5)]
    assert got == [] and seeks == [(T0, 7)] and waits == [2.5]
    assert c.tracker().base == {T0: 7}
    assert [r.getMessage() for r in caplog.records] == [
        f"{T0}: offsets 7..9 skipped on the way to the stream; rewinding"
    ]


class HTP(NamedTuple):
    """A partition whose place in a set is fixed (its hash), so a test can put one
    partition before another where the consumer iterates over a set."""

    topic: str
    partition: int

    def __hash__(self) -> int:
        return self.partition


async def test_unstick_looks_at_every_partition(
    monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    changelog = HTP("app-sent-ledger-changelog", 1)  # iterated first, then waiting, then due
    waiting, due = HTP("email.dispatch.bulk", 2), HTP("email.dispatch.bulk", 3)
    positions = {changelog: 50, waiting: 20, due: 12}
    asked: list[Any] = []

    def position(arg: Any, tp: Any) -> int:
        asked.append(arg)
        return positions[tp]

    monkeypatch.setattr(faust_adapter, "fetch_position", position)
    c, seeks = consumer()
    c.__dict__["assignment"] = lambda: {changelog, waiting, due}
    c.tracker().seeked(due, 10)
    await c.unstick(idle_s=2.0, now=100.0)  # due: first seen
    c.tracker().seeked(waiting, 15)
    await c.unstick(idle_s=2.0, now=101.0)  # waiting: first seen
    caplog.set_level(logging.WARNING, logger="app.consumer")
    # waiting (iterated before due): 1 s of its 2; due: idle for 2 s
    assert await c.unstick(idle_s=2.0, now=102.0) == [due]
    assert seeks == [(due, 10)] and set(asked) == {c}
    assert [r.getMessage() for r in caplog.records] == [
        f"{due}: offsets 10..11 were fetched but never reached the stream; fetching them again"
    ]
    assert await c.unstick(idle_s=2.0, now=103.0) == [waiting]


def test_install_points_the_transport_at_the_consumer_broker() -> None:
    from app.factory import create_app
    from app.settings import Settings

    app = create_app(Settings(stage="dispatch", store="memory://"))  # type: ignore[arg-type]
    assert app.transport.url == app.conf.broker_consumer
    assert app.transport.app is app


def test_a_lost_message_is_named_once_it_stayed_lost_for_the_wait() -> None:
    from app.consumer import LostWatch

    w = LostWatch(after_s=3.0)
    # base 5 not done, not in hand, and the stage took past it (taken 8)
    assert w.check(T0, 5, 8, in_hand=(), acked=(), now=100.0) is None  # first seen
    assert w.check(T1, 2, 4, in_hand=(), acked=(), now=100.0) is None
    assert w.check(T0, 5, 8, in_hand=(), acked=(), now=102.9) is None
    assert w.check(T0, 5, 8, in_hand=(), acked=(), now=103.0) == 5  # the wait is over
    assert T0 not in w.since and T1 in w.since  # named once; the other still watched
    assert w.check(T1, 2, 4, in_hand={2}, acked=(), now=110.0) is None  # in hand: fine
    assert T1 not in w.since


def test_a_skip_starting_exactly_at_the_log_start_is_a_plain_rewind() -> None:
    # nothing skipped is gone (the first skipped offset is the earliest that exists),
    # so the commit base stays where it is: 5..9 were delivered and may not be done
    t = GapTracker()
    t.positioned(T0, 5)
    for offset in range(5, 10):
        assert t.check(T0, offset) is None
    assert t.check(T0, 12, log_start=10) == 10
    assert t.base == {T0: 5}
