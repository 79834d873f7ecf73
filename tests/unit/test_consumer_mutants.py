"""The gapless consumer's bookkeeping checked exactly (issue 17 pt 5: survivors of the
mutation run of app/consumer.py): what a seek, a commit and a reset do to the next
offset due and the commit base, where a rewind goes when retention deleted part of a
skip, and what counts as fetched-but-dropped."""

from __future__ import annotations

from faust.types import TP

from app.consumer import GapTracker, dropped_from, next_commit, skipped_from

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
