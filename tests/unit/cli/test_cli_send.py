"""``spillway send`` with a fake producer: events from flags and files, checks, exit codes."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from click.testing import CliRunner

from app.cli import EXIT_INVALID, EXIT_UNAVAILABLE
from app.cli.main import cli


def run(*args: str, input: str | None = None) -> tuple[int, str]:
    result = CliRunner().invoke(cli, ["send", *args], input=input)
    return result.exit_code, result.output


def sent(producer: Any) -> list[tuple[str, bytes | None, bytes]]:
    [p] = producer.instances
    return list(p.sent)


def test_event_from_flags_uses_sample_data(producer: Any) -> None:
    code, out = run(
        "-t",
        "password_reset",
        "--to",
        "ann@example.com",
        "-p",
        "critical",
        "--event-id",
        "e-1",
        "--locale",
        "de",
    )
    assert code == 0, out
    [(topic, key, value)] = sent(producer)
    event = json.loads(value)
    assert (topic, key) == ("email.raw-events", b"e-1")
    assert event["priority"] == "critical" and event["source"] == "cli"
    assert event["locale"] == "de" and "reset_url" in event["data"]
    assert out == "e-1 -> email.raw-events partition 0 offset 0\n"
    conf = producer.instances[0].conf
    assert conf["acks"] == "all" and conf["bootstrap.servers"] == "127.0.0.1:9092"


def test_namespace_count_and_json_output(producer: Any, monkeypatch: Any) -> None:
    monkeypatch.setenv("SPILLWAY_TOPIC_NAMESPACE", "staging.")
    code, out = run(
        "-t", "newsletter", "--to", "x@example.com", "--event-id", "n", "-n", "3", "--json"
    )
    assert code == 0, out
    lines = [json.loads(line) for line in out.splitlines()]
    assert [r["event_id"] for r in lines] == ["n-1", "n-2", "n-3"]
    assert {r["topic"] for r in lines} == {"staging.email.raw-events"}
    assert [k for _, k, _ in sent(producer)] == [b"n-1", b"n-2", b"n-3"]


def test_events_from_a_file(producer: Any, tmp_path: Path) -> None:
    events = [
        {
            "event_id": f"f{i}",
            "template": "password_reset",
            "to": f"u{i}@example.com",
            "data": {
                "user": {"name": "U"},
                "reset_url": "https://x.example/r",
                "expires_minutes": 30,
                "shop": {"name": "S", "url": "https://s.example"},
            },
        }
        for i in range(3)
    ]
    path = tmp_path / "events.jsonl"
    path.write_text("\n".join(json.dumps(e) for e in events))
    code, out = run("-f", str(path))
    assert code == 0, out
    assert "sent 3 of 3 events (json)" in out
    assert [json.loads(v)["event_id"] for _, _, v in sent(producer)] == ["f0", "f1", "f2"]


def test_avro_uses_confluent_framing(producer: Any) -> None:
    code, out = run("-t", "password_reset", "--to", "ann@example.com", "--format", "avro")
    assert code == 0, out
    [(_, _, value)] = sent(producer)
    assert value[:1] == b"\x00" and len(value) > 5


def test_invalid_events_exit_3_unless_no_check(producer: Any) -> None:
    code, out = run("-t", "password_reset", "--to", "not-an-address")
    assert code == EXIT_INVALID and "invalid_field" in out
    code, out = run("-t", "nope", "--to", "a@example.com")
    assert code == EXIT_INVALID and "unknown template" in out
    code, out = run("-t", "password_reset", "--to", "a@example.com", "-d", '{"user": {}}')
    assert code == EXIT_INVALID and "missing variable" in out
    code, out = run("-t", "password_reset", "--to", "a@example.com", "-d", "[1]")
    assert code == EXIT_INVALID and "JSON object" in out
    code, out = run("-f", "-", input='{"event_id": "x"}')
    assert code == EXIT_INVALID and "schema_violation" in out
    assert producer.instances == []  # nothing was produced
    code, out = run("-f", "-", "--no-check", input='{"event_id": "x"}')
    assert code == 0 and len(sent(producer)) == 1


def test_usage_and_broker_failures(producer: Any) -> None:
    code, out = run("--to", "a@example.com")
    assert code == 2 and "give --template and --to" in out
    producer.fail = "KafkaError{_MSG_TIMED_OUT}"
    code, out = run("-t", "password_reset", "--to", "a@example.com")
    assert code == EXIT_UNAVAILABLE and "not acknowledged" in out
