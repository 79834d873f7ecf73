"""The provider simulator's request log and its mode without idempotency keys.

With idempotency (the default, like Resend) a second request for a key is answered
202 ``Idempotent-Replayed`` and delivers nothing; without it (SMTP, SES, SendGrid v3)
every accepted request is a delivered email. Either way every request is logged, so
a duplicate is visible in both modes.
"""

from __future__ import annotations

import asyncio
from typing import Any

import pytest
from aiohttp.test_utils import TestClient, TestServer
from hypothesis import given
from hypothesis import strategies as st

from simulator.client import (
    NO_IDEMPOTENCY_KEY,
    SimulatorClient,
    SyncSimulatorClient,
    deliveries_per_key,
    max_per_second,
    requests_after_acceptance,
    requests_per_key,
)
from simulator.provider import STATE_KEY, ProviderConfig, ProviderState, create_app
from tests.plugins.sim import T0, Sim

SEND = "/v3/mail/send"
AUTH = {"Authorization": "Bearer sim-key"}
NOIDEM = {"Authorization": f"Bearer {NO_IDEMPOTENCY_KEY}"}


def mail(event_id: str | None = "ev-1", to: str = "ada@example.com") -> dict[str, Any]:
    body: dict[str, Any] = {
        "personalizations": [{"to": [{"email": to}]}],
        "from": {"email": "no-reply@shop.example"},
        "subject": "Hi",
        "content": [{"type": "text/plain", "value": "Hi"}],
        "custom_args": {},
    }
    if event_id is not None:
        body["custom_args"]["event_id"] = event_id
    return body


async def post(sim: Sim, body: Any, headers: dict[str, str] = AUTH) -> Any:
    return await sim.client.post(SEND, json=body, headers=headers)


async def log(sim: Sim, **query: str) -> dict[str, Any]:
    resp = await sim.client.get("/_sim/requests", params=query)
    assert resp.status == 200, await resp.text()
    result: dict[str, Any] = await resp.json()
    return result


async def test_idempotent_mode_logs_the_replay_and_delivers_once(sim: Sim) -> None:
    first = await post(sim, mail("k1"))
    sim.clock.advance(0.5)
    second = await post(sim, mail("k1"))
    assert first.status == second.status == 202
    assert "Idempotent-Replayed" not in first.headers
    assert second.headers["Idempotent-Replayed"] == "true"
    assert second.headers["X-Message-Id"] == first.headers["X-Message-Id"]
    assert len(sim.state.ledger) == 1 and sim.state.ledger[0].requests == 2

    records = (await log(sim))["entries"]
    assert [(r["seq"], r["key"], r["outcome"], r["replay"]) for r in records] == [
        (1, "k1", "accepted", False),
        (2, "k1", "replayed", True),
    ]
    assert all(r["idempotent"] and r["status"] == 202 for r in records)
    assert records[1]["received_at"] == T0 + 0.5
    assert requests_per_key(records) == {"k1": 2}
    assert deliveries_per_key(records) == {"k1": 1}
    assert [r["seq"] for r in requests_after_acceptance(records)["k1"]] == [2]


async def test_without_idempotency_every_accepted_request_is_an_email(sim: Sim) -> None:
    await sim.client.patch("/_sim/config", json={"idempotency": False})
    responses = [await post(sim, mail("k1")) for _ in range(3)]
    assert [r.status for r in responses] == [202, 202, 202]
    assert not any("Idempotent-Replayed" in r.headers for r in responses)
    assert len({r.headers["X-Message-Id"] for r in responses}) == 3
    ledger = [e.to_json() for e in sim.state.ledger]
    assert [(e["key"], e["requests"], e["replay"]) for e in ledger] == [
        ("k1", 1, False),
        ("k1", 1, True),
        ("k1", 1, True),
    ]
    stats = await (await sim.client.get("/_sim/stats", params={"series": "0"})).json()
    assert stats["accepted"] == 3 and stats["duplicate_requests"] == 2
    dups = await (await sim.client.get("/_sim/ledger/duplicates")).json()
    assert dups["count"] == 2 and dups["duplicate_requests"] == 2

    records = (await log(sim))["entries"]
    assert [r["outcome"] for r in records] == ["accepted"] * 3
    assert [r["replay"] for r in records] == [False, True, True]
    assert not any(r["idempotent"] for r in records)
    assert deliveries_per_key(records) == {"k1": 3}
    assert len(requests_after_acceptance(records)["k1"]) == 2


async def test_the_mode_is_per_account_on_one_simulator(sim: Sim) -> None:
    """A ``noidem`` bearer key gets no deduplication; other accounts still do, and
    neither changes the config."""
    for headers in (NOIDEM, NOIDEM, AUTH, AUTH):
        assert (await post(sim, mail("a" if headers is NOIDEM else "b"), headers)).status == 202
    per_key = deliveries_per_key((await log(sim))["entries"])
    assert per_key == {"a": 2, "b": 1}
    assert sim.state.config.idempotency is True
    # a custom prefix list replaces the default one
    await sim.client.patch("/_sim/config", json={"no_idempotency_key_prefixes": ["plain-"]})
    assert (await post(sim, mail("a"), NOIDEM)).headers.get("Idempotent-Replayed") == "true"
    headers = {"Authorization": "Bearer plain-1"}
    assert (await post(sim, mail("c"), headers)).status == 202
    assert (await post(sim, mail("c"), headers)).headers.get("Idempotent-Replayed") is None


async def test_every_outcome_is_logged_with_its_key(sim: Sim) -> None:
    await sim.client.patch(
        "/_sim/config",
        json={"fail_rules": [{"regex": "^flaky@", "times": 1, "status": 503}]},
    )
    assert (await post(sim, mail("u"), {})).status == 401
    hdr = {**AUTH, "Idempotency-Key": "hk"}
    assert (await sim.client.post(SEND, data=b"{not json", headers=hdr)).status == 400
    assert (await post(sim, {"subject": "x", "custom_args": {"event_id": "v"}})).status == 400
    assert (await post(sim, mail("r", to="reject-me@example.com"))).status == 400
    assert (await post(sim, mail("f", to="flaky@example.com"))).status == 503
    assert (await post(sim, mail("f", to="flaky@example.com"))).status == 202
    assert (await post(sim, mail(None))).status == 202  # no key at all
    await sim.client.patch("/_sim/config", json={"quota": 0})
    assert (await post(sim, mail("f"))).status == 429  # body not read: no key known
    keyed = {**AUTH, "Idempotency-Key": "f"}  # as Spillway's HTTP adapter sends it
    assert (await post(sim, mail("f"), keyed)).status == 429

    records = (await log(sim))["entries"]
    got = [(r["key"], r["status"], r["outcome"], r["replay"]) for r in records]
    assert got == [
        (None, 401, "unauthorized", False),  # auth fails before the body is read
        ("hk", 400, "invalid", False),  # the header key is known without a body
        (None, 400, "invalid", False),  # an invalid body's event_id is not trusted
        ("r", 400, "rejected", False),
        ("f", 503, "failed", False),
        ("f", 202, "accepted", False),
        (None, 202, "accepted", False),
        (None, 429, "rate_limited", False),
        ("f", 429, "rate_limited", True),  # asked again after its delivery
    ]
    summary = await log(sim, fields="summary")
    assert summary["matched"] == summary["total"] == 9 and summary["dropped"] == 0
    assert summary["delivered"] == 2 and summary["replays"] == 1
    assert summary["by_outcome"]["invalid"] == 2
    assert requests_after_acceptance(records) == {"f": [records[8]]}


async def test_requests_in_flight_are_logged_and_concurrent_ones_are_not_after(
    clock: Any,
) -> None:
    """Two requests for a key that arrive together, both before either is accepted:
    without keys both deliver (two emails), yet neither arrived after acceptance."""
    app = create_app(ProviderConfig(latency_ms=300, idempotency=False), clock=clock)
    async with TestClient(TestServer(app)) as client:
        pending = [
            asyncio.ensure_future(client.post(SEND, json=mail("k"), headers=AUTH))
            for _ in range(2)
        ]
        state = app[STATE_KEY]
        for _ in range(200):
            if len(state.requests) == 2:
                break
            await asyncio.sleep(0.005)
        assert [r.outcome for r in state.requests] == ["in_flight", "in_flight"]
        clock.advance(0.05)
        assert {(await p).status for p in pending} == {202}
        records = [r.to_json() for r in state.requests]
    assert deliveries_per_key(records) == {"k": 2}
    assert requests_after_acceptance(records) == {}
    assert sorted(r["replay"] for r in records) == [False, True]


async def test_prefix_since_and_key_filters(sim: Sim) -> None:
    for key in ("t1-a", "t1-b", "t2-a"):
        await post(sim, mail(key))
        sim.clock.advance(1)
    assert [r["key"] for r in (await log(sim, prefix="t1-"))["entries"]] == ["t1-a", "t1-b"]
    assert [r["key"] for r in (await log(sim, key="t2-a"))["entries"]] == ["t2-a"]
    assert [r["key"] for r in (await log(sim, since=str(T0 + 0.5)))["entries"]] == [
        "t1-b",
        "t2-a",
    ]
    page = await log(sim, limit="1", offset="1")
    assert page["count"] == 1 and page["entries"][0]["key"] == "t1-b"
    ledger = await (await sim.client.get("/_sim/ledger", params={"prefix": "t2-"})).json()
    assert [e["key"] for e in ledger["entries"]] == ["t2-a"]
    bad = await sim.client.get("/_sim/requests", params={"limit": "-1"})
    assert bad.status == 400
    bad = await sim.client.get("/_sim/requests", params={"nope": "1"})
    assert bad.status == 400


async def test_reset_clears_the_log_and_seq_keeps_growing(sim: Sim) -> None:
    await post(sim, mail("a"))
    await sim.client.post("/_sim/reset")
    assert (await log(sim))["total"] == 0
    await post(sim, mail("a"))
    (record,) = (await log(sim))["entries"]
    assert record["seq"] == 2 and record["replay"] is False and record["outcome"] == "accepted"


def test_the_log_is_bounded() -> None:
    state = ProviderState(ProviderConfig(request_log_max=10))
    for i in range(25):
        state.log_request(float(i))
    assert len(state.requests) <= 10
    assert state.requests_dropped + len(state.requests) == 25
    assert state.requests[-1].seq == 25
    assert [r.seq for r in state.requests] == sorted(r.seq for r in state.requests)


@pytest.mark.parametrize(
    "changes",
    [
        {"idempotency": "no"},
        {"idempotency": 0},
        {"idempotency": None},
        {"no_idempotency_key_prefixes": "noidem"},
        {"request_log_max": 0},
        {"request_log_max": -5},
    ],
)
async def test_mode_config_is_validated(sim: Sim, changes: dict[str, Any]) -> None:
    resp = await sim.client.patch("/_sim/config", json=changes)
    assert resp.status == 400
    assert sim.state.config.idempotency is True


def test_an_empty_prefix_does_not_switch_every_account() -> None:
    state = ProviderState(ProviderConfig(no_idempotency_key_prefixes=("",)))
    assert state.idempotent_for("sim-key")
    assert not ProviderState(ProviderConfig(idempotency=False)).idempotent_for("sim-key")


async def test_clients_read_the_log() -> None:
    app = create_app(ProviderConfig())
    async with TestServer(app) as server:
        base = str(server.make_url("")).rstrip("/")
        async with SimulatorClient(base) as sim:
            assert await sim.supports_request_log()
            http = sim._http
            for _ in range(2):
                await http.post(base + SEND, json=mail("x-1"), headers=NOIDEM)
            records = await sim.requests(prefix="x-")
            assert deliveries_per_key(records) == {"x-1": 2}
            summary = await sim.requests_summary(key="x-1")
            assert summary["delivered"] == 2 and summary["replays"] == 1

            def sync_side() -> tuple[int, bool]:
                with SyncSimulatorClient(base) as s:
                    return len(s.requests(key="x-1")), s.supports_request_log()

            assert await asyncio.to_thread(sync_side) == (2, True)
    # a simulator without the endpoint (an older build) says so instead of raising
    async with (
        TestServer(_app_without_log()) as server,
        SimulatorClient(str(server.make_url("")).rstrip("/")) as old,
    ):
        assert not await old.supports_request_log()


def _app_without_log() -> Any:
    from aiohttp import web

    async def health(request: web.Request) -> web.Response:
        return web.json_response({"ok": True})

    app = web.Application()
    app.router.add_get("/health", health)
    return app


# --- the pure helpers ------------------------------------------------------------------


def rec(seq: int, key: str | None, at: float, outcome: str = "accepted", **kw: Any) -> Any:
    return {
        "seq": seq,
        "key": key,
        "received_at": at,
        "decided_at": kw.get("decided_at", at),
        "outcome": outcome,
    }


def test_max_per_second_counts_a_sliding_window() -> None:
    assert max_per_second([]) == 0
    times = [0.0, 0.1, 0.9, 1.0, 1.05, 1.8, 3.0]
    records = [rec(i, "k", t) for i, t in enumerate(times)]
    assert max_per_second(records) == 4  # 0.1, 0.9, 1.0, 1.05 (1.8 - 0.9 < 1 too: 0.9..1.8)
    assert max_per_second(records, window_s=0.2) == 3  # 0.9, 1.0, 1.05
    assert max_per_second(list(reversed(records))) == 4  # order of the input does not matter


@given(st.lists(st.floats(min_value=0, max_value=100, allow_nan=False), max_size=60))
def test_max_per_second_matches_brute_force(times: list[float]) -> None:
    records = [rec(i, "k", t) for i, t in enumerate(times)]
    brute = max((sum(1 for u in times if t <= u and u - t < 1.0) for t in times), default=0)
    assert max_per_second(records) == brute


def test_requests_after_acceptance_uses_the_first_delivery_by_decision() -> None:
    records = [
        rec(1, "k", 0.0, "failed"),
        rec(2, "k", 1.0, "accepted", decided_at=3.0),  # slow: decided last
        rec(3, "k", 2.0, "accepted", decided_at=2.5),  # the first delivery
        rec(4, "k", 2.6, "rate_limited"),
        rec(5, "j", 9.0, "failed"),
        rec(6, None, 9.0, "accepted"),
    ]
    after = requests_after_acceptance(records)
    assert {k: [r["seq"] for r in v] for k, v in after.items()} == {"k": [4]}
    assert requests_per_key(records) == {"k": 4, "j": 1}
    assert deliveries_per_key(records) == {"k": 2}
