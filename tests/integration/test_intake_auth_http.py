"""Secure intake against a real intake worker and broker: keys, signatures, limits, source."""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from typing import Any

import httpx
import pytest
from confluent_kafka import Consumer, Message, TopicPartition

from app.intake import INTEGRATION_HEADER, sign
from harness.workers import Worker, wait_until
from tests.plugins.stack import Env, healthy

pytestmark = pytest.mark.integration

SHOP_KEY = "shop-backend-key-0123456789"
SLOW_KEY = "slow-tool-key-0123456789abc"
LEGACY_KEY = "legacy-tool-key-0123456789abc"
KEYS = {"shop-backend": SHOP_KEY, "slow-tool": SLOW_KEY, "legacy": LEGACY_KEY}
MAX_BODY = 65_536
#: shop-backend is scoped; legacy has only a key (the old form: unrestricted)
SCOPES = {
    "shop-backend": {
        "templates": ["password_reset"],
        "from_addresses": ["shop.example"],
        "max_priority": "normal",
    }
}


@pytest.fixture(scope="module")
def intake(stack: None) -> Iterator[tuple[Env, Worker]]:
    """One intake worker for the module: two integrations, the slow one at 0.2 events/s."""
    env = Env("test_intake_auth")
    worker = env.workers.add(
        "intake",
        SPILLWAY_INTAKE_API_KEYS=json.dumps(KEYS),
        SPILLWAY_INTAKE_MAX_BODY_BYTES=str(MAX_BODY),
        SPILLWAY_INTAKE_RATE_BURST="5",
        SPILLWAY_INTAKE_RATE_LIMITS=json.dumps({"slow-tool": 0.2}),
        SPILLWAY_INTAKE_INTEGRATIONS=json.dumps(SCOPES),
    )
    try:
        assert wait_until(lambda: healthy(worker.web_url), timeout=60), "intake did not start"
        yield env, worker
    finally:
        log = worker.log_path.read_text(errors="replace")
        env.close()
        assert all(k not in log for k in KEYS.values()), "a secret reached the worker log"


def event(env: Env, n: str, **extra: Any) -> dict[str, Any]:
    return {
        "event_id": f"{env.ns}-auth-{n}",
        "template": "password_reset",
        "to": "auth@example.com",
        "data": env.samples["password_reset"],
        **extra,
    }


def post(
    worker: Worker, body: bytes, headers: dict[str, str], path: str = "/v1/events"
) -> httpx.Response:
    return httpx.post(
        f"{worker.web_url}{path}",
        content=body,
        timeout=30,
        headers={"content-type": "application/json", **headers},
    )


def read_at(env: Env, answer: dict[str, Any]) -> Message:
    c = Consumer(
        {
            "bootstrap.servers": env.settings.kafka.bootstrap,
            "group.id": f"{env.ns}-r",
            "enable.auto.commit": False,
        }
    )
    try:
        # the topic, partition and offset the intake answered with
        c.assign([TopicPartition(answer["topic"], answer["partition"], answer["offset"])])
        msg = c.poll(10)
        assert msg is not None and msg.error() is None
        return msg
    finally:
        c.close()


def test_missing_key_is_401(intake: tuple[Env, Worker]) -> None:
    env, worker = intake
    r = post(worker, json.dumps(event(env, "missing")).encode(), {})
    assert r.status_code == 401
    assert "missing credentials" in r.json()["error"]
    assert r.headers["WWW-Authenticate"].startswith("Bearer")


def test_wrong_key_is_401(intake: tuple[Env, Worker]) -> None:
    env, worker = intake
    body = json.dumps(event(env, "wrong")).encode()
    r = post(worker, body, {"Authorization": "Bearer not-a-key-0123456789"})
    assert r.status_code == 401 and r.json()["error"] == "invalid API key"
    ts = str(int(time.time()))
    r = post(
        worker,
        body,
        {
            "X-Spillway-Integration": "shop-backend",
            "X-Spillway-Timestamp": ts,
            "X-Spillway-Signature": sign(SLOW_KEY, ts, body),
        },
    )
    assert r.status_code == 401 and r.json()["error"] == "invalid signature"


def test_right_key_is_202_and_the_source_is_the_integration(intake: tuple[Env, Worker]) -> None:
    env, worker = intake
    r = post(
        worker,
        json.dumps(event(env, "right", source="spoofed")).encode(),
        {"Authorization": f"Bearer {SHOP_KEY}"},
    )
    assert r.status_code == 202, r.text
    msg = read_at(env, r.json())
    assert json.loads(msg.value())["source"] == "shop-backend"
    assert (INTEGRATION_HEADER, b"shop-backend") in (msg.headers() or [])

    body = json.dumps(event(env, "signed")).encode()  # HMAC instead of a key
    ts = str(int(time.time()))
    r = post(
        worker,
        body,
        {
            "X-Spillway-Integration": "shop-backend",
            "X-Spillway-Timestamp": ts,
            "X-Spillway-Signature": sign(SHOP_KEY, ts, body),
        },
    )
    assert r.status_code == 202, r.text
    msg = read_at(env, r.json())
    assert json.loads(msg.value())["source"] == "shop-backend"

    r = post(
        worker,
        json.dumps([event(env, "b1"), event(env, "b2", source="x")]).encode(),
        {"X-Api-Key": SHOP_KEY},
        path="/v1/events/batch",
    )
    assert r.status_code == 202, r.text
    for result in r.json()["results"]:
        msg = read_at(env, result)
        assert json.loads(msg.value())["source"] == "shop-backend"


def test_oversized_body_is_413(intake: tuple[Env, Worker]) -> None:
    env, worker = intake
    big = event(env, "big", data={"blob": "x" * (MAX_BODY + 1)})
    r = post(worker, json.dumps(big).encode(), {"X-Api-Key": SHOP_KEY})
    assert r.status_code == 413 and "exceeds the limit" in r.json()["error"]


def test_over_rate_is_429_with_retry_after(intake: tuple[Env, Worker]) -> None:
    env, worker = intake
    batch = json.dumps([event(env, f"slow{i}") for i in range(5)]).encode()
    r = post(worker, batch, {"X-Api-Key": SLOW_KEY}, path="/v1/events/batch")
    assert r.status_code == 202, r.text  # the bucket's 5 tokens
    r = post(worker, json.dumps(event(env, "slow5")).encode(), {"X-Api-Key": SLOW_KEY})
    assert r.status_code == 429
    assert "over its rate" in r.json()["error"]
    assert 1 <= int(r.headers["Retry-After"]) <= 5  # one token at 0.2/s
    # another integration is not affected
    r = post(worker, json.dumps(event(env, "other")).encode(), {"X-Api-Key": SHOP_KEY})
    assert r.status_code == 202


@pytest.mark.parametrize(
    ("extra", "rule"),
    [
        ({"template": "newsletter"}, "templates"),
        ({"priority": "critical"}, "max_priority"),
        ({"from_address": "Boss <ceo@bank.example>"}, "from_addresses"),
    ],
)
def test_out_of_scope_is_403_naming_the_rule(
    intake: tuple[Env, Worker], extra: dict[str, str], rule: str
) -> None:
    env, worker = intake
    body = json.dumps(event(env, f"scope-{rule}", **extra)).encode()
    r = post(worker, body, {"X-Api-Key": SHOP_KEY})
    assert r.status_code == 403, r.text
    assert (r.json()["reason"], r.json()["rule"]) == ("scope_violation", rule)
    # the unscoped integration may (its key predates scopes)
    body = json.dumps(event(env, f"scope-{rule}-open", **extra)).encode()
    r = post(worker, body, {"X-Api-Key": LEGACY_KEY})
    assert r.status_code == 202, r.text


def test_in_scope_with_an_allowed_sender_is_202(intake: tuple[Env, Worker]) -> None:
    env, worker = intake
    body = json.dumps(event(env, "scope-ok", from_address="Shop <no-reply@shop.example>"))
    r = post(worker, body.encode(), {"X-Api-Key": SHOP_KEY})
    assert r.status_code == 202, r.text
