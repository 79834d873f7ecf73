"""``spillway dead``: CliRunner with a Backend of lists and a fake sink (no broker)."""

from __future__ import annotations

import json
from typing import Any

from click.testing import CliRunner

from app.cli import EXIT_INVALID
from app.cli.dead import dead
from app.cli.main import cli
from app.replay import Backend
from app.serde import Serde
from app.stages.common import REPLAY_HEADER, now_ms
from app.stages.deadletters import StoredDeadLetter
from tests.plugins.factories import dead_letter as letter
from tests.plugins.factories import failed_request as request
from tests.plugins.factories import stored
from tests.plugins.fakes import FakeSink, backend

NOW = now_ms()


def letters(serde: Serde) -> list[StoredDeadLetter]:
    dispatch_payload = serde.encode("ns.email.dispatch.bulk", request(priority="bulk"))
    return [
        stored(letter(event_id="r1", dead_at=NOW - 90_000), 0, 0),
        stored(letter(event_id="r2", dead_at=NOW - 60_000, source="crm"), 1, 0),
        stored(letter(event_id="r3", dead_at=NOW - 3 * 3600_000, template_version="v1"), 2, 0),
        stored(letter(event_id="d1", stage="dispatch", reason="provider_rejected",
                      payload=dispatch_payload, payload_format="avro", provider="sim-http",
                      original_topic="ns.email.dispatch.bulk", dead_at=NOW - 30_000,
                      history=request().history),
               3, 4),
    ]  # fmt: skip


def run(b: Backend, *args: str) -> Any:
    return CliRunner().invoke(dead, list(args), obj=b, catch_exceptions=False)


def test_list_filters_by_reason_template_and_time(ns_serde: Serde) -> None:
    b = backend(ns_serde, letters(ns_serde), FakeSink())
    out = run(b, "list")
    assert out.exit_code == 0, out.output
    assert "4 dead letter(s)" in out.output and "order_confirmation@v2" in out.output
    out = run(b, "list", "--reason", "render_error", "--since", "2h")
    assert "2 dead letter(s)" in out.output and "r3" not in out.output
    out = run(b, "list", "--template", "order_confirmation@v1", "--json")
    assert [d["event_id"] for d in json.loads(out.output)] == ["r3"]
    out = run(b, "list", "--source", "crm", "--limit", "1")
    assert "r2" in out.output and "1 dead letter(s)" in out.output
    out = run(b, "list", "--since", "yesterday-ish")
    assert out.exit_code == 2 and "not a time" in out.output


def test_inspect_by_ref_or_event_id_decodes_the_payload(ns_serde: Serde) -> None:
    b = backend(ns_serde, letters(ns_serde), FakeSink())
    out = run(b, "inspect", "3:4")
    assert out.exit_code == 0, out.output
    assert "provider_rejected" in out.output and "attempts:" in out.output
    assert '"priority": "bulk"' in out.output  # the DispatchRequest, decoded
    out = run(b, "inspect", "r1", "--json")
    [doc] = json.loads(out.output)
    assert doc["ref"] == "0:0" and doc["payload"] == {"event_id": "e1"}
    assert doc["payload_base64"]
    out = CliRunner().invoke(dead, ["inspect", "nope"], obj=b)
    assert out.exit_code == EXIT_INVALID


def test_summary_compares_with_the_window_before(ns_serde: Serde) -> None:
    b = backend(ns_serde, letters(ns_serde), FakeSink())
    out = run(b, "summary", "--window", "2h", "--json")
    doc = json.loads(out.output)
    assert doc["total"] == 3 and doc["previous_total"] == 1
    assert doc["by"]["template"]["order_confirmation@v2"] == {"count": 3, "previous": 0}
    assert doc["by"]["template"]["order_confirmation@v1"] == {"count": 0, "previous": 1}
    out = run(b, "summary", "--window", "2h", "--by", "reason")
    assert out.exit_code == 0 and "render_error" in out.output and "new" in out.output
    assert "SOURCE" not in out.output
    assert run(b, "summary", "--by", "colour").exit_code == 2


def test_replay_needs_a_filter_and_dry_run_sends_nothing(ns_serde: Serde) -> None:
    sink = FakeSink()
    b = backend(ns_serde, letters(ns_serde), sink)
    out = CliRunner().invoke(dead, ["replay"], obj=b)
    assert out.exit_code == 2 and "--all" in out.output
    out = run(b, "replay", "--reason", "render_error", "--dry-run")
    assert out.exit_code == 0, out.output
    assert "would replay 3 dead letter(s): ns.email.raw-events 3" in out.output
    assert sink.records == []


def test_replay_sends_each_stage_to_its_topic(ns_serde: Serde) -> None:
    sink = FakeSink()
    b = backend(ns_serde, letters(ns_serde), sink)
    out = run(b, "replay", "--all", "--json")
    doc = json.loads(out.output)
    assert doc["produced"] == 4
    assert doc["by_topic"] == {"ns.email.raw-events": 3, "ns.email.dispatch.bulk": 1}
    assert {r[0] for r in sink.records} == {"ns.email.raw-events", "ns.email.dispatch.bulk"}
    assert all(r[3][REPLAY_HEADER] == b"1" for r in sink.records)
    out = run(b, "replay", "--event-id", "d1")
    assert "replayed 1 dead letter(s): ns.email.dispatch.bulk 1" in out.output


def test_dead_is_registered_in_the_spillway_group() -> None:
    top = CliRunner().invoke(cli, ["--help"])
    assert top.exit_code == 0 and "dead" in top.output.split("Commands:")[1]
    out = CliRunner().invoke(cli, ["dead", "--help"])
    assert out.exit_code == 0
    listed = out.output.split("Commands:")[1]
    assert {"list", "summary", "inspect", "replay"} <= set(listed.split())
