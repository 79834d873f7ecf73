"""Bounded analyser labels and PII redaction (issue 15 point 6)."""

from __future__ import annotations

import logging
import re
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from app.models import Attempt
from app.settings import PROJECT_ROOT, ProviderPolicy, Settings
from app.stages.deadletters import (
    DIMENSIONS,
    KNOWN_REASONS,
    KNOWN_STAGES,
    NONE,
    OTHER,
    REDACTED_MARK,
    LabelBounds,
    RedactingRecordFactory,
    Skipped,
    StoredDeadLetter,
    parse_count_key,
    plan_replay,
    redact_dead_letter,
    redact_text,
)
from app.tables.deadletters import DeadLetterCounts
from tests.plugins.factories import T0
from tests.plugins.factories import dead_letter as letter

TEMPLATES = {"order_confirmation": frozenset({"v1", "v2"}), "password_reset": frozenset({"v1"})}


def bounds(**kw: Any) -> LabelBounds:
    return LabelBounds(
        sources=frozenset({"shop", "cli"}),
        providers=frozenset({"sim-http"}),
        templates=kw.pop("templates", TEMPLATES),
        **kw,
    )


# --- bounded labels -----------------------------------------------------------------------


def test_known_values_are_kept_and_others_are_other() -> None:
    b = bounds()
    assert b.values(letter(provider="sim-http")) == {
        "reason": "render_error", "template": "order_confirmation@v2", "source": "shop",
        "provider": "sim-http", "stage": "render",
    }  # fmt: skip
    odd = letter(reason="x" * 500, template="evil\x00", source="attacker-42", provider="p",
                 stage="<script>")  # fmt: skip
    assert set(b.values(odd).values()) == {OTHER}
    assert b.values(letter(template_version="v99"))["template"] == "order_confirmation@other"
    assert b.values(letter(template_version=None))["template"] == "order_confirmation"
    none = letter(template=None, source=None, provider=None, reason="", stage="")
    assert set(b.values(none).values()) == {NONE}


text_or_none = st.one_of(st.none(), st.text(max_size=60))


@settings(max_examples=300, deadline=None)
@given(reason=text_or_none, template=text_or_none, version=text_or_none, source=text_or_none,
       provider=text_or_none, stage=text_or_none)  # fmt: skip
def test_any_dead_letter_maps_into_the_bounded_set(
    reason: str | None, template: str | None, version: str | None, source: str | None,
    provider: str | None, stage: str | None,
) -> None:  # fmt: skip
    b = bounds()
    dl = letter(reason=reason or "", template=template, template_version=version,
                source=source, provider=provider, stage=stage or "")  # fmt: skip
    values = b.values(dl)
    templates = {NONE, OTHER} | {n for n in TEMPLATES} | {
        f"{n}@{v}" for n, vs in TEMPLATES.items() for v in (*vs, OTHER)
    }
    assert values["reason"] in KNOWN_REASONS | {NONE, OTHER}
    assert values["stage"] in KNOWN_STAGES | {NONE, OTHER}
    assert values["source"] in {"shop", "cli", NONE, OTHER}
    assert values["provider"] in {"sim-http", NONE, OTHER}
    assert values["template"] in templates


def test_table_keys_stay_bounded_under_a_flood_of_distinct_values() -> None:
    table: dict[bytes, Any] = {}
    counts = DeadLetterCounts(table, bucket_s=60, retention_s=3600, bounds=bounds())
    for i in range(5000):
        counts.add(letter(source=f"s{i}", template=f"t{i}", reason=f"r{i}", provider=f"p{i}",
                          stage=f"x{i}", dead_at=T0), partition=0)  # fmt: skip
    assert len(table) == len(DIMENSIONS)  # one "other" per dimension
    assert {parse_count_key(k)[3] for k in table} == {OTHER}
    assert sum(v for k, v in table.items() if parse_count_key(k)[2] == "stage") == 5000
    unbounded = DeadLetterCounts({}, bucket_s=60, retention_s=3600)
    for i in range(100):
        unbounded.add(letter(source=f"s{i}", dead_at=T0), partition=0)
    assert len(unbounded.table) > 100  # what happened before: one key per value


def test_bounds_from_settings_use_the_configuration(tmp_path: Path) -> None:
    s = Settings(
        providers=[ProviderPolicy(name="primary"), ProviderPolicy(name="backup")],
        templates_dir=PROJECT_ROOT / "templates",
    )
    b = LabelBounds.from_settings(s)
    assert b.providers == {"primary", "backup"}
    assert "cli" in b.sources
    with_keys = Settings(intake_api_keys={"shop-backend": "k" * 32})  # type: ignore[dict-item]
    assert LabelBounds.from_settings(with_keys).sources == {"cli", "shop-backend"}
    assert b.templates.get("password_reset")
    broken = LabelBounds.from_settings(Settings(templates_dir=tmp_path / "missing"))
    assert broken.values(letter())["template"] == OTHER


def test_a_new_template_is_picked_up_after_the_refresh_interval() -> None:
    now = [0.0]
    catalogue: dict[str, frozenset[str]] = {}
    b = bounds(templates=lambda: dict(catalogue), refresh_s=30, clock=lambda: now[0])
    catalogue["order_confirmation"] = frozenset({"v2"})
    assert b.values(letter())["template"] == OTHER  # not reloaded yet
    now[0] = 31
    assert b.values(letter())["template"] == "order_confirmation@v2"


def test_every_reason_code_in_the_code_is_known() -> None:
    """A reason added anywhere in app/ must be added to KNOWN_REASONS (else it would
    be counted as "other")."""
    found: set[str] = set()
    pattern = re.compile(r"""reason\s*[=:]\s*(?:str\s*=\s*)?["']([a-z_]+)["']""")
    for path in (PROJECT_ROOT / "app").rglob("*.py"):
        found |= set(pattern.findall(path.read_text()))
    assert found, "the scan found nothing: the pattern is wrong"
    assert found <= KNOWN_REASONS, sorted(found - KNOWN_REASONS)


# --- redaction ----------------------------------------------------------------------------


def test_redact_text_masks_addresses_and_quoted_values() -> None:
    text = "to ann.lee+x@mail.example.org, data 'Ann Lee' \"4 Elm St\" id `42`"
    assert redact_text(text) == "to <email>, data '…' '…' id '…'"
    assert redact_text("") == ""
    assert redact_text("no secrets here") == "no secrets here"


@settings(max_examples=300, deadline=None)
@given(st.text(), st.emails())
def test_no_address_survives_redaction(noise: str, address: str) -> None:
    out = redact_text(f"{noise} {address} {noise}")
    assert address not in out
    assert redact_text(out) == out  # idempotent


def test_redacted_dead_letter_keeps_metadata_only() -> None:
    dl = letter(
        message="recipient bob@example.com rejected: 'Bob Jones'",
        payload=b'{"to": "bob@example.com", "data": {"name": "Bob"}}',
        history=[Attempt(at=T0, stage="dispatch", error_class="E", reason="provider_rejected",
                         message="550 bob@example.com unknown", retriable=False)],
    )  # fmt: skip
    red = redact_dead_letter(dl)
    assert red.payload == b"" and red.payload_format == "unknown"
    assert red.message == f"{REDACTED_MARK} recipient <email> rejected: '…'"
    assert red.history[0].message == "550 <email> unknown"
    for field in ("event_id", "reason", "stage", "template", "template_version", "source",
                  "original_topic", "original_partition", "original_offset", "dead_at"):
        assert getattr(red, field) == getattr(dl, field), field  # fmt: skip
    assert redact_dead_letter(red).message == red.message  # idempotent
    assert b"bob" not in repr(red.asdict()).encode()


def test_redacted_dead_letter_still_encodes() -> None:
    from confluent_kafka.schema_registry import SchemaRegistryClient

    from app.serde import Serde

    registry = SchemaRegistryClient.new_client({"url": "mock://pii"})
    serde = Serde(registry, {"email.dead": "dead_letter"})
    serde.register()
    data = serde.encode("email.dead", redact_dead_letter(letter(message="x\ud800 a@b.c")))
    assert data[:1] == b"\x00"


def test_replay_skips_a_redacted_dead_letter() -> None:
    red = redact_dead_letter(letter())
    plan = plan_replay(StoredDeadLetter(0, 1, b"e1", red), dead_topic="email.dead",
                       decode=lambda b, s: None, encode=lambda t, r: b"")  # fmt: skip
    assert isinstance(plan, Skipped) and "redacted" in plan.why


def test_the_runtime_redacts_dead_letters_when_configured() -> None:
    from app.factory import create_app

    factory = logging.getLogRecordFactory()  # redact_pii installs log redaction for good
    try:
        for redact in (False, True):
            app = create_app(Settings(stage="render", schema_registry_url=f"mock://r{redact}",
                                      redact_pii=redact))  # fmt: skip
            runtime = app.spillway  # type: ignore[attr-defined]
            runtime.serde.register()
            dl = letter(message="to ann@example.com", payload=b'{"to": "bob@example.com"}')
            data = runtime.encode_record("dead", dl)
            assert (b"ann@example.com" in data) is (not redact)
            assert (b"bob@example.com" in data) is (not redact)
            assert (REDACTED_MARK.encode() in data) is redact
        assert isinstance(logging.getLogRecordFactory(), RedactingRecordFactory)
    finally:  # other tests read log lines as written (their topics, their addresses)
        logging.setLogRecordFactory(factory)


def test_log_redaction(caplog: pytest.LogCaptureFixture) -> None:
    factory = logging.getLogRecordFactory()
    logging.setLogRecordFactory(RedactingRecordFactory(factory))
    try:
        with caplog.at_level(logging.INFO):
            logging.getLogger("spillway.test").info("sent to %s with %r", "ann@example.com",
                                                    {"name": "Ann"})  # fmt: skip
            logging.getLogger("spillway.test").info("bad %d for %s", "x", "bo@example.com")
    finally:
        logging.setLogRecordFactory(factory)
    assert "ann@example.com" not in caplog.text and "Ann" not in caplog.text
    assert "sent to <email> with {'…': '…'}" in caplog.text
    assert "bad %d for %s [arguments dropped" in caplog.text
    assert "bo@example.com" not in caplog.text
