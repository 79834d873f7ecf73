"""Replay tool: fixing a broken template and replaying its dead letters delivers them,
and replaying again sends nothing new. Also the analyser's view of those dead letters.

(Named test_replay_tool.py, not test_replay.py: test files without __init__.py are
imported by basename, and tests/unit/test_replay.py exists.)
"""

from __future__ import annotations

import json
import shutil
import time
from pathlib import Path
from typing import Any

import httpx
import pytest
from click.testing import CliRunner, Result
from confluent_kafka import ConsumerGroupTopicPartitions, TopicPartition
from confluent_kafka.admin import AdminClient

from app.cli.dead import dead
from harness.observe import end_offsets
from harness.workers import wait_until
from tests.plugins.stack import Env

pytestmark = pytest.mark.integration

N = 12  # password resets that die, then are replayed
GOOD = 8  # newsletters that are sent at once


def committed(env: Env, stage: str, topic: str) -> int:
    """Sum of the committed offsets of ``stage``'s consumer group on ``topic``."""
    admin = AdminClient({"bootstrap.servers": env.settings.kafka.bootstrap})
    tps = [TopicPartition(env.topic(topic), p) for p in range(env.settings.kafka.topic_partitions)]
    request = [ConsumerGroupTopicPartitions(env.settings.app_id(stage), tps)]
    try:
        [future] = admin.list_consumer_group_offsets(request).values()
        return sum(max(0, tp.offset) for tp in future.result().topic_partitions)
    except Exception:
        return 0


def drained(env: Env, stage: str, topic: str) -> bool:
    end = end_offsets(env.settings.kafka.bootstrap, env.topic(topic), 4)
    return end > 0 and committed(env, stage, topic) == end


def event(env: Env, event_id: str, template: str, priority: str) -> bytes:
    return json.dumps(
        {
            "event_id": event_id,
            "template": template,
            "priority": priority,
            "to": f"{event_id}@example.com",
            "data": env.samples[template],
            "source": "replay-test",
        }
    ).encode()


def test_fixing_a_template_and_replaying_its_dead_letters(env: Env, tmp_path: Path) -> None:
    started = time.monotonic()
    templates = tmp_path / "templates"
    shutil.copytree(env.settings.templates_dir, templates)
    subject = templates / "password_reset" / "v1" / "subject.txt.j2"
    fixed = subject.read_text()
    subject.write_text(fixed.rstrip("\n") + " {{ ticket.number }}\n")  # undefined: render_error
    tdir = {"SPILLWAY_TEMPLATES_DIR": str(templates)}
    render = env.workers.add("render", **tdir)
    env.workers.add("route")
    env.workers.add("dispatch")
    analyser = env.workers.add("analyser", SPILLWAY_ANALYSER_METRICS_EVERY_S="1")
    observer = env.observe()

    resets = [f"{env.ns}-reset-{i}" for i in range(N)]
    news = [f"{env.ns}-news-{i}" for i in range(GOOD)]
    for event_id in resets:
        env.produce(event_id.encode(), event(env, event_id, "password_reset", "critical"))
    for event_id in news:
        env.produce(event_id.encode(), event(env, event_id, "newsletter", "bulk"))
    env.producer.flush(10)

    tally = observer.wait_for(N + GOOD, timeout=90, check=env.workers.check_alive)
    assert set(tally.sent) == set(news) and set(tally.dead) == set(resets)
    for dl in tally.dead.values():
        assert dl.reason == "render_error" and "ticket" in dl.message
        assert (dl.template, dl.template_version, dl.replayed) == ("password_reset", "v1", 0)

    # The analyser sees "password_reset@v1 started failing".
    def analysed() -> Any:
        try:
            url = f"{analyser.web_url}/dead-letters/summary?window=15m&by=reason,template"
            return httpx.get(url, timeout=5).json()
        except (httpx.HTTPError, ValueError):
            return None

    assert wait_until(lambda: (analysed() or {}).get("total") == N, timeout=60, interval=0.5), (
        f"analyser: {analysed()}"
    )
    doc = analysed()
    assert doc["by"]["template"] == {"password_reset@v1": {"count": N, "previous": 0}}
    assert doc["by"]["reason"] == {"render_error": {"count": N, "previous": 0}}
    gauge = f'spillway_dead_letters_window_count{{window="5m"}} {float(N)}'
    assert wait_until(
        lambda: gauge in httpx.get(f"{analyser.web_url}/metrics", timeout=5).text, timeout=10
    ), "the analyser's gauges are not on /metrics"

    def cli(*args: str) -> Result:
        result = CliRunner().invoke(dead, list(args), env=env.overrides, catch_exceptions=False)
        assert result.exit_code == 0, result.output
        return result

    filters = ("--reason", "render_error", "--template", "password_reset", "--since", "1h")
    raw = env.topic("email.raw-events")
    out = cli("replay", *filters, "--dry-run")
    assert f"would replay {N} dead letter(s): {raw} {N}" in out.output
    assert end_offsets(env.settings.kafka.bootstrap, raw, 4) == N + GOOD  # nothing produced
    assert f"{N} dead letter(s)" in cli("list", "--template", "password_reset@v1").output

    # Fix the template; restart the render worker (templates load at start) once it
    # has committed everything, so that only the replay can deliver the resets.
    assert wait_until(lambda: drained(env, "render", "email.raw-events"), timeout=30)
    subject.write_text(fixed)
    render.stop()
    env.workers.add("render", **tdir)
    analyser.stop()  # its counts must come back from the table's changelog
    analyser = env.workers.add("analyser")

    out = cli("replay", *filters)
    assert f"replayed {N} dead letter(s): {raw} {N}" in out.output
    # A delivered reset is both dead (v1) and sent now, so Tally.done stays at N + GOOD:
    # wait for the resets themselves (waiting for a count of 2 N + GOOD always timed out).
    def resets_sent() -> bool:
        env.workers.check_alive()
        return set(resets) <= set(observer.snapshot().sent)

    wait_until(resets_sent, timeout=90)
    tally = observer.snapshot()
    assert set(resets) <= set(tally.sent), f"not delivered: {set(resets) - set(tally.sent)}"
    assert all(tally.sent[e].replay for e in resets)
    assert not any(tally.sent[e].replay for e in news)
    ledger = env.ledger()
    assert len(ledger) == N + GOOD and all(entry["requests"] == 1 for entry in ledger)

    # Again: the dead letters are still there, but every reset was sent already.
    out = cli("replay", *filters)
    assert f"replayed {N} dead letter(s)" in out.output
    lane = "email.dispatch.critical"
    assert wait_until(
        lambda: (
            end_offsets(env.settings.kafka.bootstrap, env.topic(lane), 4) == 2 * N
            and drained(env, "dispatch", lane)
        ),
        timeout=60,
    ), "the second replay did not reach the dispatch stage"
    # dispatch committed the lane's end, so a (wrong) send of a replayed reset was made
    # and its record flushed before: read email.sent and email.dead to their ends
    boot = env.settings.kafka.bootstrap
    ends = [end_offsets(boot, env.topic(t), 4) for t in ("email.sent", "email.dead")]

    def caught_up() -> bool:
        snap = observer.snapshot()
        return snap.sent_records >= ends[0] and snap.dead_records >= ends[1]

    assert wait_until(caught_up, timeout=30), "the observer did not read email.sent/dead"
    ledger = env.ledger()
    assert len(ledger) == N + GOOD and all(entry["requests"] == 1 for entry in ledger)
    tally = observer.snapshot()
    doubled = {
        i: (d.stage, d.reason, d.replayed, d.original_offset)
        for i, d in tally.dead.items()
        if tally.dead_seen[i] > 1
    }
    assert tally.sent_records == N + GOOD and tally.dead_records == N, doubled
    assert wait_until(lambda: analysed() is not None, timeout=30)
    doc = analysed()
    assert doc["total"] == N, f"the restarted analyser lost or doubled counts: {doc}"
    print(f"\nreplay tool test: {time.monotonic() - started:.1f} s")
