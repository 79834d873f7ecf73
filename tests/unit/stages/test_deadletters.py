from __future__ import annotations

from typing import Any

import pytest

from app.serde import Serde
from app.settings import Settings
from app.stages.common import REPLAY_HEADER, Origin, replay_number
from app.stages.deadletters import (
    AlertRule,
    DeadLetterFilter,
    ReplayItem,
    Skipped,
    StoredDeadLetter,
    newest_per_event,
    parse_count_key,
    parse_duration,
    parse_time,
    plan_replay,
    summarize_counts,
    summarize_letters,
    template_label,
)
from app.stages.render import RenderStage
from app.tables.deadletters import DeadLetterCounts
from app.templating import TemplateStore
from tests.plugins.factories import T0, stored
from tests.plugins.factories import dead_letter as letter
from tests.plugins.factories import failed_request as request

# --- filters --------------------------------------------------------------------------


def test_filter_matches_each_dimension_and_time() -> None:
    dl = letter(provider="sim-http")
    assert DeadLetterFilter().matches(dl) and DeadLetterFilter().is_empty()
    assert DeadLetterFilter(reasons=frozenset({"render_error", "x"})).matches(dl)
    assert not DeadLetterFilter(reasons=frozenset({"undecodable"})).matches(dl)
    assert DeadLetterFilter(templates=frozenset({"order_confirmation"})).matches(dl)
    assert DeadLetterFilter(templates=frozenset({"order_confirmation@v2"})).matches(dl)
    assert not DeadLetterFilter(templates=frozenset({"order_confirmation@v1"})).matches(dl)
    assert DeadLetterFilter(template_versions=frozenset({"v2"})).matches(dl)
    assert not DeadLetterFilter(sources=frozenset({"crm"})).matches(dl)
    assert DeadLetterFilter(providers=frozenset({"sim-http"})).matches(dl)
    assert not DeadLetterFilter(stages=frozenset({"dispatch"})).matches(dl)
    assert DeadLetterFilter(event_ids=frozenset({"e1"})).matches(dl)
    assert DeadLetterFilter(since_ms=T0, until_ms=T0 + 1).matches(dl)
    assert not DeadLetterFilter(since_ms=T0 + 1).matches(dl)
    assert not DeadLetterFilter(until_ms=T0).matches(dl)
    # a dimension the letter lacks is "-"
    assert DeadLetterFilter(providers=frozenset({"-"})).matches(letter())


def test_template_label() -> None:
    assert template_label(letter()) == "order_confirmation@v2"
    assert template_label(letter(template_version=None)) == "order_confirmation"
    assert template_label(letter(template=None, template_version=None)) == "-"


def test_durations_and_times() -> None:
    assert parse_duration("90") == 90 and parse_duration("5m") == 300
    assert parse_duration("1h") == 3600 and parse_duration("2d") == 172800
    with pytest.raises(ValueError):
        parse_duration("soon")
    assert parse_time("2h", T0) == T0 - 7_200_000
    assert parse_time(str(T0), 0) == T0
    assert parse_time("1700000000", 0) == 1_700_000_000_000
    assert parse_time("2023-11-14T22:13:20Z", 0) == T0
    assert parse_time("2023-11-14T22:13:20", 0) == T0  # naive: UTC
    with pytest.raises(ValueError):
        parse_time("last tuesday", T0)


# --- counts and windows ------------------------------------------------------------------


def test_counts_by_dimension_over_a_sliding_window() -> None:
    table: dict[bytes, Any] = {}
    counts = DeadLetterCounts(table, bucket_s=60, retention_s=3600)
    now = T0 + 30_000
    for i in range(3):  # a new template version starts failing now
        counts.add(letter(dead_at=now - i * 1000, event_id=f"n{i}"), partition=i % 2)
    counts.add(letter(dead_at=now - 7 * 60_000, template_version="v1"), partition=0)
    counts.add(
        letter(dead_at=now - 2 * 60_000, reason="provider_rejected", stage="dispatch",
               provider="sim-http", source="crm"),
        partition=1,
    )  # fmt: skip

    five = summarize_counts(counts.items(), now_ms=now, window_s=300, bucket_s=60)
    assert five.total == 4 and five.previous_total == 1
    by = five.as_json()["by"]
    assert by["template"]["order_confirmation@v2"] == {"count": 4, "previous": 0}
    assert by["template"]["order_confirmation@v1"] == {"count": 0, "previous": 1}
    assert by["reason"] == {
        "render_error": {"count": 3, "previous": 1},
        "provider_rejected": {"count": 1, "previous": 0},
    }
    assert by["source"]["crm"]["count"] == 1 and by["provider"]["sim-http"]["count"] == 1
    assert five.rate_per_min > 0
    hour = summarize_counts(counts.items(), now_ms=now, window_s=3600, bucket_s=60)
    assert hour.total == 5
    # the key carries the partition: each key is written from one partition only
    assert {parse_count_key(k)[0] for k in table} == {0, 1}


def test_summary_from_table_equals_summary_from_letters() -> None:
    counts = DeadLetterCounts({}, bucket_s=60, retention_s=3600)
    letters = [letter(dead_at=T0 - i * 45_000, source=f"s{i % 3}") for i in range(12)]
    for i, dl in enumerate(letters):
        counts.add(dl, partition=i % 4)
    now = T0 + 1  # windows of whole buckets include the bucket of `now`
    from_table = summarize_counts(counts.items(), now_ms=now, window_s=3600, bucket_s=60)
    exact = summarize_letters(letters, now_ms=now, window_s=3600)
    assert from_table.as_json()["by"] == exact.as_json()["by"]
    assert from_table.total == exact.total == 12


def test_old_buckets_expire_with_tombstones() -> None:
    table: dict[bytes, Any] = {}
    counts = DeadLetterCounts(table, bucket_s=60, retention_s=600)
    counts.add(letter(dead_at=T0), partition=0)
    counts.add(letter(dead_at=T0), partition=1)
    old_keys = set(table)
    counts.add(letter(dead_at=T0 + 11 * 60_000), partition=0)
    # partition 0's old bucket is gone; partition 1's waits for a dead letter of its own
    remaining = {parse_count_key(k)[:2] for k in table}
    assert all(not (p == 0 and b * 1000 <= T0) for p, b in remaining)
    assert any(p == 1 for p, _ in remaining)
    assert old_keys - set(table)


def test_restored_counts_are_indexed_for_expiry() -> None:
    table: dict[bytes, Any] = {}
    DeadLetterCounts(table, bucket_s=60, retention_s=600).add(letter(dead_at=T0), partition=2)
    restarted = DeadLetterCounts(table, bucket_s=60, retention_s=600)  # e.g. after recovery
    restarted.add(letter(dead_at=T0 + 20 * 60_000), partition=2)
    assert all(parse_count_key(k)[1] * 1000 > T0 for k in table)


def test_alert_rule_fires_on_count_or_rate() -> None:
    rule = AlertRule(count=5, count_window_s=3600, rate_per_min=2.0, rate_window_s=60)
    letters = [letter(dead_at=T0 - i * 600_000) for i in range(5)]  # 5 in the hour, slowly
    hour = summarize_letters(letters, now_ms=T0, window_s=3600)
    minute = summarize_letters(letters, now_ms=T0, window_s=60)
    alert = rule.evaluate(hour, minute)
    assert alert["firing"] and alert["count"]["firing"] and not alert["rate"]["firing"]
    burst = [letter(dead_at=T0 - i * 1000) for i in range(3)]
    alert = rule.evaluate(
        summarize_letters(burst, now_ms=T0, window_s=3600),
        summarize_letters(burst, now_ms=T0, window_s=60),
    )
    assert alert["rate"]["firing"] and not alert["count"]["firing"]
    off = AlertRule(count=0, count_window_s=3600, rate_per_min=0, rate_window_s=60)
    assert not off.evaluate(hour, minute)["firing"]


# --- replays --------------------------------------------------------------------------------


def test_newest_dead_letter_per_event_wins() -> None:
    first = stored(letter(dead_at=T0), 0, 1)
    again = stored(letter(dead_at=T0 + 5, replayed=1), 0, 9)
    other = stored(letter(event_id="e2"), 1, 3)
    anonymous = [stored(letter(event_id=None), 2, n) for n in range(2)]
    chosen = newest_per_event([first, other, again, *anonymous])
    assert again in chosen and first not in chosen and other in chosen
    assert len(chosen) == 4


def plan(s: StoredDeadLetter, serde: Serde) -> ReplayItem | Skipped:
    return plan_replay(
        s,
        dead_topic="email.dead",
        decode=serde.decode_known,
        encode=lambda logical, record: serde.encode(f"email.{logical}", record),
    )


def test_render_dead_letter_replays_raw_payload_with_header(serde: Serde) -> None:
    item = plan(stored(letter(replayed=1), 3, 14), serde)
    assert isinstance(item, ReplayItem)
    assert item.topic == "raw" and item.key == b"e1" and item.value == b'{"event_id": "e1"}'
    assert dict(item.headers) == {
        REPLAY_HEADER: b"2",
        "spillway-replay-of": b"email.dead/3/14",
    }
    assert item.replay_number == 2


def test_route_dead_letter_replays_to_rendered(serde: Serde) -> None:
    item = plan(stored(letter(stage="route", original_topic="email.rendered")), serde)
    assert isinstance(item, ReplayItem) and item.topic == "rendered"


def test_dispatch_dead_letter_replays_to_its_lane_with_attempts_reset(serde: Serde) -> None:
    payload = serde.encode("email.dispatch.retry-3", request())
    dl = letter(stage="dispatch", event_id="d1", payload=payload, payload_format="avro",
                reason="provider_unavailable", original_topic="email.dispatch.retry-3")  # fmt: skip
    item = plan(stored(dl), serde)
    assert isinstance(item, ReplayItem)
    assert item.topic == "dispatch.critical" and item.key == b"d1"
    req = serde.decode_known(item.value, "dispatch_request")
    assert req.attempts == 0 and req.replay is True and req.not_before is None
    assert len(req.history) == 1 and req.history[0].reason == "provider_unavailable"
    assert req.subject == "s" and req.to == "a@example.com"


def test_unreplayable_dead_letters_are_skipped_with_a_reason(serde: Serde) -> None:
    broken = plan(stored(letter(stage="dispatch", payload=b"\x00\x00\x00\x00\x63junk")), serde)
    assert isinstance(broken, Skipped) and "does not decode" in broken.why
    unknown = plan(stored(letter(stage="intake")), serde)
    assert isinstance(unknown, Skipped) and "no replay target" in unknown.why


# --- the render stage marks replays -----------------------------------------------------------

STORE = TemplateStore(Settings().templates_dir)


def test_replay_number_from_headers() -> None:
    assert replay_number(Origin("t", 0, 0)) == 0
    assert replay_number(Origin("t", 0, 0, headers=((REPLAY_HEADER, b"3"),))) == 3
    assert replay_number(Origin("t", 0, 0, headers=((REPLAY_HEADER, b"x"),))) == 1


async def test_render_marks_replays_and_counts_them_when_they_die_again(serde: Serde) -> None:
    import json

    stage = RenderStage(serde, STORE, "Shop <no-reply@shop.example>")
    replayed = Origin("email.raw-events", 0, 5, T0, b"e1", ((REPLAY_HEADER, b"2"),))
    event = {"event_id": "e1", "template": "password_reset", "to": "a@example.com",
             "data": STORE.sample_data("password_reset")}  # fmt: skip
    out = await stage.handle(json.dumps(event).encode(), replayed)
    assert out.topic == "rendered.normal" and out.value.replay is True
    plain = await stage.handle(json.dumps(event).encode(), Origin("email.raw-events", 0, 6))
    assert plain.value.replay is False
    dead = await stage.handle(json.dumps({**event, "data": {}}).encode(), replayed)
    assert dead.topic == "dead" and dead.value.replayed == 2
    # no version asked for: the dead letter names the version that failed (the latest)
    assert dead.value.template_version == STORE.latest("password_reset")
