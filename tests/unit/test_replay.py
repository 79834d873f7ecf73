"""The replay tool without a broker: a Backend of lists and a fake sink."""

from __future__ import annotations

import io
import json
import struct
from typing import Any

import fastavro
import pytest
from confluent_kafka.schema_registry import Schema

from app.errors import DecodeError
from app.replay import Backend, ReplayError, SyncDecoder, replay
from app.serde import SCHEMAS_DIR, Serde, to_avro
from app.stages.common import REPLAY_HEADER
from app.stages.deadletters import DeadLetterFilter, StoredDeadLetter
from tests.plugins.factories import T0, stored
from tests.plugins.factories import dead_letter as letter
from tests.plugins.factories import failed_request as request
from tests.plugins.fakes import NS_SETTINGS, FakeSink, backend

SETTINGS = NS_SETTINGS


def dead_letters(serde: Serde) -> list[StoredDeadLetter]:
    dispatch_payload = serde.encode("ns.email.dispatch.normal", request(priority="normal"))
    return [
        stored(letter(event_id="r1", dead_at=T0), 0, 0),
        stored(letter(event_id="r1", dead_at=T0 + 10, replayed=1), 0, 5),  # died again
        stored(letter(event_id="r2", dead_at=T0 + 20, template="newsletter"), 1, 0),
        stored(
            letter(
                event_id="d1",
                stage="dispatch",
                payload=dispatch_payload,
                payload_format="avro",
                reason="provider_rejected",
            ),
            2,
            0,
        ),
        stored(letter(event_id="x1", stage="mystery"), 3, 0),
    ]


def test_dry_run_plans_and_produces_nothing(ns_serde: Serde) -> None:
    sink = FakeSink()
    report = replay(backend(ns_serde, dead_letters(ns_serde), sink), DeadLetterFilter(),
                    dry_run=True)  # fmt: skip
    assert report.dry_run and report.produced == 0 and sink.records == [] and sink.flushed == 0
    assert [i.source.ref for i in report.items] == ["2:0", "0:5", "1:0"]  # oldest first
    assert report.superseded == 1
    assert [s.source.ref for s in report.skipped] == ["3:0"]
    assert report.by_topic() == {"raw": 2, "dispatch.normal": 1}


def test_replay_produces_to_namespaced_topics_with_headers(ns_serde: Serde) -> None:
    sink = FakeSink()
    flt = DeadLetterFilter(stages=frozenset({"render", "dispatch"}))
    report = replay(backend(ns_serde, dead_letters(ns_serde), sink), flt)
    assert report.produced == 3 and sink.flushed == 1
    by_key = {key: (topic, value, headers) for topic, key, value, headers in sink.records}
    topic, _, headers = by_key[b"r1"]
    assert topic == "ns.email.raw-events"
    assert headers == {REPLAY_HEADER: b"2", "spillway-replay-of": b"ns.email.dead/0/5"}
    topic, value, headers = by_key[b"d1"]
    assert topic == "ns.email.dispatch.normal" and headers[REPLAY_HEADER] == b"1"
    req = ns_serde.decode_known(value, "dispatch_request")
    assert req.replay and req.attempts == 0


def test_filters_and_limit(ns_serde: Serde) -> None:
    sink = FakeSink()
    b = backend(ns_serde, dead_letters(ns_serde), sink)
    report = replay(b, DeadLetterFilter(templates=frozenset({"newsletter"})))
    assert [k for _, k, _, _ in sink.records] == [b"r2"]
    assert report.produced == 1
    report = replay(b, DeadLetterFilter(since_ms=T0 + 15), dry_run=True)
    assert {i.source.letter.event_id for i in report.items} == {"r2"}
    report = replay(b, DeadLetterFilter(stages=frozenset({"render"})), limit=1, dry_run=True)
    assert [i.source.letter.event_id for i in report.items] == ["r1"]


def test_a_failed_write_is_an_error(ns_serde: Serde) -> None:
    with pytest.raises(ReplayError):
        replay(backend(ns_serde, dead_letters(ns_serde), FakeSink(fail=True)), DeadLetterFilter())


def test_nothing_matching_opens_no_sink(ns_serde: Serde) -> None:
    def no_sink() -> FakeSink:
        raise AssertionError("no sink needed")

    b = Backend(SETTINGS, ns_serde, read=lambda since: [], sink=no_sink)
    assert replay(b, DeadLetterFilter()).produced == 0


def test_sync_decoder_reads_an_older_writer_schema(ns_serde: Serde, registry: Any) -> None:
    # An older dead_letter schema without the "replayed" field, as an old worker wrote it.
    schema = json.loads((SCHEMAS_DIR / "dead_letter.avsc").read_text())
    schema["fields"] = [f for f in schema["fields"] if f["name"] != "replayed"]
    schema_id = registry.register_schema("older-dead-value", Schema(json.dumps(schema), "AVRO"))
    datum = to_avro(letter())
    del datum["replayed"]
    buf = io.BytesIO()
    buf.write(struct.pack(">bI", 0, schema_id))
    fastavro.schemaless_writer(buf, fastavro.parse_schema(schema), datum)
    with pytest.raises(DecodeError):
        ns_serde.decode_known(buf.getvalue(), "dead_letter")
    dl = SyncDecoder(ns_serde)(buf.getvalue(), "dead_letter")
    assert dl.event_id == "e1" and dl.replayed == 0
    with pytest.raises(DecodeError):
        SyncDecoder(ns_serde)(b"not avro", "dead_letter")


def test_sync_decoder_reports_a_corrupt_body_as_a_decode_error(ns_serde: Serde) -> None:
    framed = ns_serde.encode("ns.email.dead", letter())
    with pytest.raises(DecodeError):
        SyncDecoder(ns_serde)(framed[:12], "dead_letter")
