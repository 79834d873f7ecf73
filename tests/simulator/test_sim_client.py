"""simulator.client against real servers, and the ``python -m`` entry points."""

from __future__ import annotations

import asyncio
import json
import smtplib
from email.message import EmailMessage
from pathlib import Path

import aiosmtplib
import httpx
import pytest
from aiohttp.test_utils import TestServer

from simulator.client import (
    SimulatorClient,
    SimulatorError,
    SmtpSinkClient,
    SyncSimulatorClient,
    SyncSmtpSinkClient,
)
from simulator.common import ConfigError
from simulator.provider import (
    STATE_KEY,
    ProviderConfig,
    config_from_args,
    create_app,
    parse_args,
    validate_mail,
)
from simulator.smtp_sink import RunningSink
from tests.plugins.sim import Proc

AUTH = {"Authorization": "Bearer sim-key"}


def mail(event_id: str) -> dict[str, object]:
    return {
        "personalizations": [{"to": [{"email": "ada@example.com"}]}],
        "from": {"email": "no-reply@shop.example"},
        "subject": "Hi",
        "content": [{"type": "text/plain", "value": "Hi"}],
        "custom_args": {"event_id": event_id},
    }


async def test_async_provider_client() -> None:
    app = create_app(ProviderConfig())
    async with TestServer(app) as server:
        base = str(server.make_url("")).rstrip("/")
        async with SimulatorClient(base) as sim, httpx.AsyncClient(base_url=base) as http:
            await sim.wait_ready()
            assert await sim.health() == {"ok": True}
            config = await sim.set_config(quota=50)
            assert config["quota"] == 50 and (await sim.config())["quota"] == 50
            with pytest.raises(SimulatorError) as info:
                await sim.set_config(bogus=1)
            assert info.value.status == 400 and "bogus" in info.value.message

            async def later() -> None:
                await asyncio.sleep(0.1)
                for i in range(3):
                    await http.post("/v3/mail/send", json=mail(f"e{i}"), headers=AUTH)
                await http.post("/v3/mail/send", json=mail("e0"), headers=AUTH)

            task = asyncio.create_task(later())
            stats = await sim.wait_for_accepted(3, timeout=5)
            await task
            assert stats["accepted"] >= 3 and "per_second" not in stats
            ledger = await sim.ledger()
            assert [e["key"] for e in ledger["entries"]] == ["e0", "e1", "e2"]
            assert ledger["total"] == ledger["matched"] == ledger["count"] == 3
            page = await sim.ledger(limit=1, offset=1)
            assert [e["key"] for e in page["entries"]] == ["e1"]
            assert (await sim.ledger(key="e2"))["matched"] == 1
            assert (await sim.ledger_summary())["requests"] == 4
            dups = await sim.duplicates()
            assert dups["count"] == 1 and dups["duplicate_requests"] == 1

            outage = await sim.outage(5, status=500, rate=1.0)
            assert outage["status"] == 500 and outage["end"] - outage["start"] == 5
            resp = await http.post("/v3/mail/send", json=mail("e9"), headers=AUTH)
            assert resp.status_code == 500
            await sim.end_outages()
            await sim.reset()
            assert (await sim.stats())["accepted"] == 0
            with pytest.raises(TimeoutError):
                await sim.wait_for_accepted(1, timeout=0.2)


async def test_large_ledger_is_streamed_whole() -> None:
    app = create_app(ProviderConfig())
    state = app[STATE_KEY]
    for i in range(4500):
        parsed, _ = validate_mail(mail(f"e{i}"))
        assert parsed is not None
        state.accept(f"e{i}", parsed, 1.0 + i)
    async with TestServer(app) as server, SimulatorClient(str(server.make_url(""))) as sim:
        entries = (await sim.ledger())["entries"]
        assert [e["key"] for e in entries] == [f"e{i}" for i in range(4500)]
        assert (await sim.ledger(since=4000.0))["count"] == 500


async def test_async_sink_client(sink: RunningSink) -> None:
    async with SmtpSinkClient(sink.http_url) as client:
        assert await client.health() == {"ok": True}
        msg = EmailMessage()
        msg["From"], msg["To"], msg["Subject"] = "a@shop.example", "b@example.com", "s"
        msg["X-Spillway-Event-Id"] = "ev-1"
        msg.set_content("x")
        for _ in range(2):
            await aiosmtplib.send(msg, hostname=sink.host, port=sink.smtp_port)
        stats = await client.wait_for_accepted(1, timeout=5)
        assert stats["duplicates"] == 1
        assert (await client.ledger())["entries"][0]["count"] == 2
        assert (await client.duplicates())["count"] == 1
        assert (await client.set_config(latency_ms=1))["latency_ms"] == 1
        await client.reset()
        assert (await client.ledger())["entries"] == []


# --- python -m entry points (subprocesses) + sync clients ------------------------------------


def test_provider_module_runs_and_sync_client(provider_proc: Proc) -> None:
    (port,) = provider_proc.ports
    base = f"http://127.0.0.1:{port}"
    with SyncSimulatorClient(base) as sim, httpx.Client(base_url=base) as http:
        sim.wait_ready()
        assert sim.config()["quota"] == 1000  # from --quota
        resp = http.post("/v3/mail/send", json=mail("x"), headers=AUTH)
        assert resp.status_code == 202 and resp.headers["X-RateLimit-Limit"] == "1000"
        assert sim.wait_for_accepted(1, timeout=5)["accepted"] == 1
        assert sim.ledger()["entries"][0]["key"] == "x"
        assert sim.ledger_summary()["total"] == 1
        assert sim.outage(1, 503)["status"] == 503
        sim.end_outages()
        assert sim.duplicates()["count"] == 0
        assert sim.set_config(quota=None)["quota"] is None
        sim.reset()
        assert sim.stats()["requests"] == 0
    code, err = provider_proc.stop()
    assert code == 0
    lines = err.strip().splitlines()
    assert "provider simulator listening on" in lines[0]
    assert "'quota': 1000" in lines[0]


def test_sink_module_runs_and_sync_client(sink_proc: Proc) -> None:
    smtp_port, http_port = sink_proc.ports
    msg = EmailMessage()
    msg["From"], msg["To"], msg["Subject"] = "a@shop.example", "b@example.com", "s"
    msg["X-Spillway-Event-Id"] = "ev-9"
    msg.set_content("text")
    msg.add_alternative("<p>html</p>", subtype="html")
    with smtplib.SMTP("127.0.0.1", smtp_port) as smtp:
        smtp.send_message(msg)
        with pytest.raises(smtplib.SMTPRecipientsRefused):
            smtp.send_message(msg, to_addrs=["reject@example.com"])
    with SyncSmtpSinkClient(f"http://127.0.0.1:{http_port}") as sink:
        sink.wait_ready()
        (entry,) = sink.ledger()["entries"]
        assert entry["key"] == "ev-9" and entry["has_html"] and entry["has_text"]
        assert sink.stats()["rcpt_rejected"] == 1
    code, err = sink_proc.stop()
    assert code == 0 and "SMTP sink listening on" in err


def test_config_file_and_flags(tmp_path: Path) -> None:
    path = tmp_path / "sim.json"
    path.write_text(
        json.dumps({"quota": 5, "error_rates": {"500": 0.1}, "reject_regex": "^x", "seed": 1})
    )
    args = parse_args(
        ["--config", str(path), "--quota", "7", "--error-rate", "503=0.2", "--set", "latency_ms=3"]
    )
    config = config_from_args(args)
    assert config.quota == 7  # flag beats file
    assert config.error_rates == {500: 0.1, 503: 0.2}
    assert config.reject_regex == "^x" and config.latency_ms == 3 and config.seed == 1


def test_bad_config_file_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "sim.json"
    path.write_text(json.dumps({"quotaa": 5}))
    with pytest.raises(ConfigError, match="unknown config keys: quotaa"):
        config_from_args(parse_args(["--config", str(path)]))
