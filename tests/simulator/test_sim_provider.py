"""The HTTP provider simulator, driven through real HTTP on a fake clock."""

from __future__ import annotations

import asyncio
import copy
import tracemalloc
from typing import Any

import pytest
from aiohttp import ClientResponse
from aiohttp.test_utils import TestClient, TestServer

from simulator.provider import (
    STATE_KEY,
    Mail,
    ProviderConfig,
    ProviderState,
    create_app,
    validate_mail,
)
from tests.plugins.sim import T0, Sim

AUTH = {"Authorization": "Bearer sim-key"}
SEND = "/v3/mail/send"


def mail(
    event_id: str | None = "ev-1", to: str = "ada@example.com", **extra: Any
) -> dict[str, Any]:
    body: dict[str, Any] = {
        "personalizations": [{"to": [{"email": to, "name": "Ada"}]}],
        "from": {"email": "no-reply@shop.example", "name": "Shop"},
        "subject": "Your order",
        "content": [
            {"type": "text/plain", "value": "Thanks"},
            {"type": "text/html", "value": "<p>Thanks</p>"},
        ],
        "custom_args": {"priority": "high", "source": "orders", "created_at_ms": "1700000000000"},
        "headers": {"X-Spillway-Event-Id": event_id or "none"},
    }
    if event_id is not None:
        body["custom_args"]["event_id"] = event_id
    body.update(extra)
    return body


async def send(sim: Sim, body: Any = None, headers: dict[str, str] | None = None) -> ClientResponse:
    hdrs = AUTH if headers is None else headers
    if body is None:
        body = mail()
    return await sim.client.post(SEND, json=body, headers=hdrs)


async def control(sim: Sim, method: str, path: str, body: Any = None) -> tuple[int, Any]:
    resp = await sim.client.request(method, path, json=body)
    return resp.status, await resp.json()


# --- acceptance -------------------------------------------------------------------------


async def test_accepts_and_records(sim: Sim) -> None:
    resp = await send(sim)
    assert resp.status == 202
    assert await resp.read() == b""
    message_id = resp.headers["X-Message-Id"]
    assert len(message_id) >= 16
    assert "X-RateLimit-Limit" not in resp.headers  # no quota set
    assert "Idempotent-Replayed" not in resp.headers

    _, ledger = await control(sim, "GET", "/_sim/ledger")
    assert ledger["total"] == 1 and ledger["count"] == 1
    (entry,) = ledger["entries"]
    assert entry == {
        "key": "ev-1",
        "message_id": message_id,
        "to": "ada@example.com",
        "from": "no-reply@shop.example",
        "subject": "Your order",
        "custom_args": {
            "priority": "high",
            "source": "orders",
            "created_at_ms": "1700000000000",
            "event_id": "ev-1",
        },
        "received_at": T0,
        "accepted_at": T0,
        "requests": 1,
        "replay": False,
    }
    _, stats = await control(sim, "GET", "/_sim/stats")
    assert stats["requests"] == 1 and stats["accepted"] == 1
    assert stats["by_status"] == {"202": 1}


async def test_personalization_subject_and_custom_args_override(sim: Sim) -> None:
    body = mail(subject=None)
    body["personalizations"][0].update(subject="Per-recipient", custom_args={"source": "p0"})
    assert (await send(sim, body)).status == 202
    entry = sim.state.ledger[0]
    assert entry.subject == "Per-recipient"
    assert entry.custom_args["source"] == "p0"


# --- validation ---------------------------------------------------------------------------


async def test_missing_recipient_email_is_400_in_sendgrid_shape(sim: Sim) -> None:
    body = mail()
    body["personalizations"][0]["to"] = [{"name": "nobody"}]
    resp = await send(sim, body)
    assert resp.status == 400
    assert await resp.json() == {
        "errors": [
            {
                "message": "Does not contain a valid address.",
                "field": "personalizations.0.to.0.email",
                "help": None,
            }
        ]
    }
    assert sim.state.ledger == []


async def test_every_validation_error_is_listed(sim: Sim) -> None:
    body = {
        "personalizations": [{"to": [{"email": "not-an-address"}]}],
        "from": {},
        "content": [{"type": "text/plain", "value": ""}],
        "custom_args": {"created_at_ms": 1700000000000},
    }
    resp = await send(sim, body)
    assert resp.status == 400
    fields = {e["field"] for e in (await resp.json())["errors"]}
    assert fields == {
        "personalizations.0.to.0.email",
        "from.email",
        "subject",
        "content.0.value",
        "custom_args.created_at_ms",
    }


@pytest.mark.parametrize(
    ("mutate", "field"),
    [
        (lambda b: b.pop("personalizations"), "personalizations"),
        (lambda b: b["personalizations"][0].pop("to"), "personalizations.0.to"),
        (lambda b: b.pop("from"), "from.email"),
        (lambda b: b.pop("subject"), "subject"),
        (lambda b: b.update(content=[]), "content"),
        (lambda b: b.update(content=[{"value": "x"}]), "content.0.type"),
        (lambda b: b.update(headers={"X-A": 1}), "headers.X-A"),
    ],
)
async def test_single_validation_errors(sim: Sim, mutate: Any, field: str) -> None:
    body = mail()
    mutate(body)
    resp = await send(sim, body)
    assert resp.status == 400
    assert [e["field"] for e in (await resp.json())["errors"]] == [field]


@pytest.mark.parametrize("raw", [b"{not json", b"[1, 2]", b'"text"', b""])
async def test_non_json_or_non_object_is_400(sim: Sim, raw: bytes) -> None:
    resp = await sim.client.post(
        SEND, data=raw, headers={**AUTH, "Content-Type": "application/json"}
    )
    assert resp.status == 400
    (error,) = (await resp.json())["errors"]
    assert error["field"] is None and error["help"] is None


async def test_body_over_limit_is_413(sim: Sim) -> None:
    sim.state.set_config(sim.state.config.updated({"max_body_bytes": 1000}))
    body = mail(content=[{"type": "text/plain", "value": "x" * 2000}])
    resp = await send(sim, body)
    assert resp.status == 413
    assert (await resp.json())["errors"][0]["message"] == "request body too large"


def test_validate_mail_returns_parsed_mail() -> None:
    parsed, errors = validate_mail(mail())
    assert errors == []
    assert isinstance(parsed, Mail)
    assert parsed.recipients == [("personalizations.0.to.0.email", "ada@example.com")]


# --- auth -------------------------------------------------------------------------------------

UNAUTHORIZED = {"errors": [{"message": "authorization required", "field": None, "help": None}]}


@pytest.mark.parametrize(
    "headers",
    [{}, {"Authorization": ""}, {"Authorization": "Bearer "}, {"Authorization": "Basic x"}],
)
async def test_missing_or_empty_key_is_401(sim: Sim, headers: dict[str, str]) -> None:
    resp = await send(sim, headers=headers)
    assert resp.status == 401
    assert await resp.json() == UNAUTHORIZED
    assert sim.state.ledger == []


async def test_unlisted_key_is_403_when_keys_are_configured(sim: Sim) -> None:
    await control(sim, "PATCH", "/_sim/config", {"api_keys": ["good"]})
    assert (await send(sim, headers={"Authorization": "Bearer bad"})).status == 403
    assert (await send(sim, headers={"Authorization": "Bearer good"})).status == 202


# --- permanent rejection -------------------------------------------------------------------


@pytest.mark.parametrize(
    "address",
    ["reject@example.com", "Reject-Me@example.com", "a@invalid.example", "a@mx.invalid.example"],
)
async def test_default_reject_rules(sim: Sim, address: str) -> None:
    resp = await send(sim, mail(to=address))
    assert resp.status == 400
    (error,) = (await resp.json())["errors"]
    assert error["field"] == "personalizations.0.to.0.email"
    assert "rejected" in error["message"] and address in error["message"]
    assert sim.state.ledger == []


async def test_reject_regex_and_cleared_rules(sim: Sim) -> None:
    status, _ = await control(
        sim,
        "PATCH",
        "/_sim/config",
        {"reject_regex": r"^bounce\+", "reject_local_prefixes": [], "reject_domains": []},
    )
    assert status == 200
    assert (await send(sim, mail("a", to="bounce+1@example.com"))).status == 400
    assert (await send(sim, mail("b", to="reject@example.com"))).status == 202
    assert (await send(sim, mail("c", to="x@invalid.example"))).status == 202


# --- idempotency ------------------------------------------------------------------------------


async def test_replay_returns_same_id_and_counts_duplicate(sim: Sim) -> None:
    first = await send(sim)
    sim.clock.advance(0.1)
    second = await send(sim)
    assert second.status == 202
    assert second.headers["X-Message-Id"] == first.headers["X-Message-Id"]
    assert second.headers["Idempotent-Replayed"] == "true"

    _, stats = await control(sim, "GET", "/_sim/stats")
    assert stats["accepted"] == 1
    assert stats["duplicate_requests"] == 1
    assert stats["by_status"] == {"202": 2}
    _, dups = await control(sim, "GET", "/_sim/ledger/duplicates")
    assert dups["count"] == 1 and dups["duplicate_requests"] == 1
    assert dups["entries"][0]["requests"] == 2
    assert dups["entries"][0]["received_at"] == T0  # the first request's


async def test_idempotency_header_wins_over_event_id(sim: Sim) -> None:
    a = await send(sim, mail("ev-1"), {**AUTH, "Idempotency-Key": "k1"})
    b = await send(sim, mail("ev-2"), {**AUTH, "Idempotency-Key": "k1"})
    c = await send(sim, mail("ev-1"))  # key ev-1 was never used as a key
    assert a.headers["X-Message-Id"] == b.headers["X-Message-Id"] != c.headers["X-Message-Id"]
    assert [e.key for e in sim.state.ledger] == ["k1", "ev-1"]


async def test_no_key_means_no_dedupe(sim: Sim) -> None:
    a = await send(sim, mail(None))
    b = await send(sim, mail(None))
    assert a.headers["X-Message-Id"] != b.headers["X-Message-Id"]
    assert "Idempotent-Replayed" not in b.headers
    assert len(sim.state.ledger) == 2 and sim.state.ledger[0].key is None


async def test_retry_after_failure_is_first_acceptance(sim: Sim) -> None:
    await control(sim, "PATCH", "/_sim/config", {"error_rates": {"500": 1.0}})
    assert (await send(sim)).status == 500
    await control(sim, "PATCH", "/_sim/config", {"error_rates": {}})
    resp = await send(sim)
    assert resp.status == 202 and "Idempotent-Replayed" not in resp.headers
    _, stats = await control(sim, "GET", "/_sim/stats")
    assert stats["duplicate_requests"] == 0 and stats["accepted"] == 1


async def test_concurrent_duplicates_during_latency_make_one_entry() -> None:
    app = create_app(ProviderConfig(latency_ms=50))
    async with TestClient(TestServer(app)) as client:
        resps = await asyncio.gather(
            *(client.post(SEND, json=mail("same"), headers=AUTH) for _ in range(5))
        )
        assert {r.status for r in resps} == {202}
        assert len({r.headers["X-Message-Id"] for r in resps}) == 1
        assert sum("Idempotent-Replayed" in r.headers for r in resps) == 4
        state = app[STATE_KEY]
        assert len(state.ledger) == 1 and state.ledger[0].requests == 5


# --- rate limit -------------------------------------------------------------------------------


async def test_quota_429_with_retry_after_and_ratelimit_headers(sim: Sim) -> None:
    await control(sim, "PATCH", "/_sim/config", {"quota": 3})
    window_end = int(T0) + 1
    remaining = []
    for i in range(3):
        resp = await send(sim, mail(f"ev-{i}"))
        assert resp.status == 202
        assert resp.headers["X-RateLimit-Limit"] == "3"
        assert resp.headers["X-RateLimit-Reset"] == str(window_end)
        remaining.append(resp.headers["X-RateLimit-Remaining"])
    assert remaining == ["2", "1", "0"]

    sim.clock.advance(0.5)
    resp = await send(sim, mail("ev-3"))
    assert resp.status == 429
    assert resp.headers["Retry-After"] == "1"
    assert resp.headers["X-RateLimit-Remaining"] == "0"
    assert resp.headers["X-RateLimit-Reset"] == str(window_end)
    assert await resp.json() == {
        "errors": [{"message": "too many requests", "field": None, "help": None}]
    }
    assert [e.key for e in sim.state.ledger] == ["ev-0", "ev-1", "ev-2"]

    sim.clock.advance(0.2)  # T0 + 0.7 = ...000.95: still the same window
    assert (await send(sim, mail("ev-3"))).status == 429
    sim.clock.advance(0.1)  # ...001.05: the next window
    resp = await send(sim, mail("ev-3"))
    assert resp.status == 202
    assert resp.headers["X-RateLimit-Remaining"] == "2"
    assert resp.headers["X-RateLimit-Reset"] == str(window_end + 1)


async def test_retry_after_is_ceil_of_time_to_window_end(sim: Sim) -> None:
    await control(sim, "PATCH", "/_sim/config", {"quota": 1, "window_s": 10})
    # T0 = 1_700_000_000.25 is in window [1_700_000_000, 1_700_000_010)
    assert (await send(sim, mail("a"))).status == 202
    sim.clock.advance(2.0)
    resp = await send(sim, mail("b"))
    assert resp.status == 429
    assert resp.headers["Retry-After"] == "8"  # ceil(7.75)
    assert resp.headers["X-RateLimit-Reset"] == "1700000010"


async def test_replays_and_errors_count_against_quota(sim: Sim) -> None:
    await control(sim, "PATCH", "/_sim/config", {"quota": 3})
    assert (await send(sim)).status == 202
    assert (await send(sim)).status == 202  # replay
    assert (await send(sim, mail(to="bad"))).status == 400
    assert (await send(sim)).status == 429
    # auth failures carry the headers but use no quota
    resp = await send(sim, headers={})
    assert resp.status == 401 and resp.headers["X-RateLimit-Remaining"] == "0"


async def test_daily_quota_remaining_is_the_smaller(sim: Sim) -> None:
    await control(sim, "PATCH", "/_sim/config", {"quota": 10, "daily_quota": 2})
    first = await send(sim, mail("a"))
    assert first.headers["X-RateLimit-Limit"] == "10"
    assert first.headers["X-RateLimit-Remaining"] == "1"
    assert (await send(sim, mail("b"))).status == 202
    sim.clock.advance(5)  # a new short window does not help
    resp = await send(sim, mail("c"))
    assert resp.status == 429
    day_end = (int(T0) // 86400 + 1) * 86400
    assert resp.headers["X-RateLimit-Reset"] == str(day_end)
    assert int(resp.headers["Retry-After"]) == int(day_end - sim.clock.now + 0.999)


async def test_per_second_series(sim: Sim) -> None:
    await control(sim, "PATCH", "/_sim/config", {"quota": 2})
    for i in range(3):
        await send(sim, mail(f"a{i}"))
    sim.clock.advance(1)
    await send(sim, mail("b"))
    await send(sim, mail("b"))
    _, stats = await control(sim, "GET", "/_sim/stats")
    assert stats["per_second"] == [
        {"second": int(T0), "requests": 3, "accepted": 2, "by_status": {"202": 2, "429": 1}},
        {"second": int(T0) + 1, "requests": 2, "accepted": 1, "by_status": {"202": 2}},
    ]
    assert stats["requests"] == 5 and stats["accepted"] == 3
    assert stats["duplicate_requests"] == 1
    _, last = await control(sim, "GET", "/_sim/stats?seconds=1")
    assert [s["second"] for s in last["per_second"]] == [int(T0) + 1]
    _, bare = await control(sim, "GET", "/_sim/stats?series=0")
    assert "per_second" not in bare


# --- injection -------------------------------------------------------------------------------


async def test_error_rate_one_always_fails(sim: Sim) -> None:
    await control(sim, "PATCH", "/_sim/config", {"error_rates": {"500": 1.0}, "seed": 7})
    for i in range(5):
        resp = await send(sim, mail(f"e{i}"))
        assert resp.status == 500
        assert await resp.json() == {
            "errors": [{"message": "internal server error", "field": None, "help": None}]
        }
    assert sim.state.ledger == []


async def test_seeded_error_injection_is_reproducible() -> None:
    async def statuses() -> list[int]:
        app = create_app(ProviderConfig(seed=42, error_rates={500: 0.3, 503: 0.1}))
        async with TestClient(TestServer(app)) as client:
            out = []
            for i in range(200):
                resp = await client.post(SEND, json=mail(f"e{i}"), headers=AUTH)
                out.append(resp.status)
            return out

    first, second = await statuses(), await statuses()
    assert first == second
    assert 40 <= first.count(500) <= 80 and 8 <= first.count(503) <= 35
    assert first.count(202) + first.count(500) + first.count(503) == 200


async def test_error_rates_validation(sim: Sim) -> None:
    status, body = await control(
        sim, "PATCH", "/_sim/config", {"error_rates": {"500": 0.7, "503": 0.5}}
    )
    assert status == 400 and "more than 1" in body["error"]
    status, body = await control(sim, "PATCH", "/_sim/config", {"error_rates": {"200": 0.1}})
    assert status == 400 and "error_rates" in body["error"]


async def test_latency_does_not_block_the_loop() -> None:
    app = create_app(ProviderConfig(latency_ms=400, latency_jitter_ms=20, seed=1))
    async with TestClient(TestServer(app)) as client:
        resps = await asyncio.gather(
            *(client.post(SEND, json=mail(f"l{i}"), headers=AUTH) for i in range(20))
        )
    assert {r.status for r in resps} == {202}
    state = app[STATE_KEY]
    # Order, not duration: all 20 arrived before the first was answered, so they waited
    # together (a blocking sleep would answer each before the next is read).
    records = state.requests
    assert len(records) == 20
    assert max(r.received_at for r in records) < min(r.decided_at for r in records)
    for entry in state.ledger:  # each waited at least its latency (a lower bound only)
        assert entry.accepted_at - entry.received_at >= 0.399


def test_lognormal_latency_draws() -> None:
    state = ProviderState(ProviderConfig(latency_ms=10, latency_dist="lognormal", seed=3))
    draws = sorted(state.draw_latency() for _ in range(1000))
    median = draws[500]
    assert 0.008 < median < 0.012
    assert draws[-1] > 0.015 and draws[0] < 0.007


# --- outages ----------------------------------------------------------------------------------


async def test_outage_starts_now_and_ends(sim: Sim) -> None:
    status, outage = await control(
        sim, "POST", "/_sim/outage", {"duration_s": 10, "status": 503, "rate": 1.0}
    )
    assert status == 200
    assert outage == {"start": T0, "end": T0 + 10, "status": 503, "rate": 1.0}
    resp = await send(sim, mail("a"))
    assert resp.status == 503
    assert (await resp.json())["errors"][0]["message"] == "service unavailable"
    sim.clock.advance(9.9)
    assert (await send(sim, mail("b"))).status == 503
    sim.clock.advance(0.1)
    assert (await send(sim, mail("c"))).status == 202
    _, config = await control(sim, "GET", "/_sim/config")
    assert config["outages"] == [outage]


async def test_configured_outage_window_and_partial_rate(sim: Sim) -> None:
    window = {"start": T0 + 5, "end": T0 + 6, "status": 500, "rate": 1.0}
    await control(sim, "PATCH", "/_sim/config", {"outages": [window]})
    assert (await send(sim, mail("a"))).status == 202
    sim.clock.advance(5)
    assert (await send(sim, mail("b"))).status == 500
    sim.clock.advance(1)
    assert (await send(sim, mail("c"))).status == 202

    await control(sim, "PATCH", "/_sim/config", {"seed": 5})
    await control(sim, "POST", "/_sim/outage", {"duration_s": 60, "status": 502, "rate": 0.5})
    statuses = [(await send(sim, mail(f"p{i}"))).status for i in range(100)]
    assert 25 <= statuses.count(502) <= 75
    assert set(statuses) == {202, 502}
    assert await control(sim, "DELETE", "/_sim/outage") == (
        200,
        {"ok": True, "cleared": 1},
    )  # the ended window was pruned
    assert (await send(sim, mail("after"))).status == 202


@pytest.mark.parametrize(
    "body",
    [
        {},
        {"duration_s": 0},
        {"duration_s": 5, "status": 200},
        {"duration_s": 5, "rate": 2},
        {"duration_s": 1, "x": 1},
    ],
)
async def test_outage_body_validation(sim: Sim, body: dict[str, Any]) -> None:
    status, reply = await control(sim, "POST", "/_sim/outage", body)
    assert status == 400 and reply["error"]


# --- control API --------------------------------------------------------------------------------


async def test_health(sim: Sim) -> None:
    assert await control(sim, "GET", "/health") == (200, {"ok": True})


async def test_reset_clears_ledger_stats_outages_but_keeps_config(sim: Sim) -> None:
    await control(sim, "PATCH", "/_sim/config", {"quota": 2})
    await send(sim, mail("a"))
    await send(sim, mail("a"))
    await control(sim, "POST", "/_sim/outage", {"duration_s": 100})
    assert await control(sim, "POST", "/_sim/reset") == (200, {"ok": True})

    _, stats = await control(sim, "GET", "/_sim/stats")
    assert stats["requests"] == stats["accepted"] == stats["duplicate_requests"] == 0
    assert stats["per_second"] == [] and stats["by_status"] == {}
    _, config = await control(sim, "GET", "/_sim/config")
    assert config["quota"] == 2 and config["outages"] == []
    resp = await send(sim, mail("a"))  # quota counters reset too; key "a" is new again
    assert resp.status == 202 and "Idempotent-Replayed" not in resp.headers
    assert resp.headers["X-RateLimit-Remaining"] == "1"


async def test_patch_unknown_keys_is_400_naming_them(sim: Sim) -> None:
    status, body = await control(sim, "PATCH", "/_sim/config", {"quota": 5, "qouta": 1, "zzz": 2})
    assert status == 400
    assert body == {"error": "unknown config keys: qouta, zzz"}
    _, config = await control(sim, "GET", "/_sim/config")
    assert config["quota"] is None  # nothing applied


@pytest.mark.parametrize(
    "change",
    [
        {"quota": -1},
        {"quota": "5"},
        {"window_s": 0},
        {"latency_ms": -5},
        {"latency_dist": "gamma"},
        {"reject_regex": "("},
        {"api_keys": "key"},
        {"outages": [{"start": 10, "end": 5}]},
    ],
)
async def test_patch_invalid_values_is_400(sim: Sim, change: dict[str, Any]) -> None:
    before = copy.deepcopy(sim.state.config.to_json())
    status, body = await control(sim, "PATCH", "/_sim/config", change)
    assert status == 400
    assert next(iter(change)) in body["error"]
    assert sim.state.config.to_json() == before


async def test_patch_returns_whole_config(sim: Sim) -> None:
    status, config = await control(
        sim, "PATCH", "/_sim/config", {"quota": 100, "error_rates": {"503": 0.05}}
    )
    assert status == 200
    assert config["quota"] == 100 and config["error_rates"] == {"503": 0.05}
    assert config["window_s"] == 1.0 and config["reject_domains"] == ["invalid.example"]


async def test_patch_body_must_be_object(sim: Sim) -> None:
    resp = await sim.client.patch("/_sim/config", data=b"[1]")
    assert resp.status == 400 and "JSON object" in (await resp.json())["error"]


async def test_unknown_route_and_method_are_json(sim: Sim) -> None:
    status, body = await control(sim, "GET", "/_sim/nope")
    assert status == 404 and "error" in body
    resp = await sim.client.get(SEND)
    assert resp.status == 405
    assert (await resp.json())["errors"][0]["message"] == "method not allowed"


async def test_ledger_filters(sim: Sim) -> None:
    for i in range(5):
        await send(sim, mail(f"ev-{i}"))
        sim.clock.advance(1)
    await send(sim, mail("ev-0"))  # replay of the first

    _, page = await control(sim, "GET", "/_sim/ledger?limit=2&offset=1")
    assert [e["key"] for e in page["entries"]] == ["ev-1", "ev-2"]
    assert page["total"] == 5 and page["matched"] == 5 and page["count"] == 2
    _, since = await control(sim, "GET", f"/_sim/ledger?since={T0 + 2}")
    assert [e["key"] for e in since["entries"]] == ["ev-3", "ev-4"]  # received_at > since
    _, by_key = await control(sim, "GET", "/_sim/ledger?key=ev-0")
    assert by_key["matched"] == 1 and by_key["entries"][0]["requests"] == 2
    _, summary = await control(sim, "GET", "/_sim/ledger?fields=summary")
    assert summary == {"total": 5, "matched": 5, "duplicates": 1, "requests": 6}
    _, summary = await control(sim, "GET", f"/_sim/ledger?fields=summary&since={T0 + 0.5}")
    assert summary == {"total": 5, "matched": 4, "duplicates": 0, "requests": 4}


@pytest.mark.parametrize(
    "query", ["limit=-1", "limit=x", "since=yesterday", "fields=all", "sincee=1"]
)
async def test_bad_ledger_query_is_400(sim: Sim, query: str) -> None:
    status, body = await control(sim, "GET", f"/_sim/ledger?{query}")
    assert status == 400 and body["error"]


# --- capacity -----------------------------------------------------------------------------------


def test_ledger_entry_memory_is_small() -> None:
    """300k entries must fit comfortably: check the bytes per entry on 5k."""
    state = ProviderState(ProviderConfig())
    n = 5_000
    tracemalloc.start()
    base = tracemalloc.get_traced_memory()[0]
    for i in range(n):
        parsed, _ = validate_mail(
            mail(f"00000000-0000-0000-0000-{i:012d}", to=f"user{i}@example.com")
        )
        assert parsed is not None
        state.accept(parsed.custom_args["event_id"], parsed, T0 + i / 1000)
    used = tracemalloc.get_traced_memory()[0] - base
    tracemalloc.stop()
    per_entry = used / n
    assert per_entry < 1500, per_entry  # 300k entries < ~450 MB
