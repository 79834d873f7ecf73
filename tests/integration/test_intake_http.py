"""HTTP intake against the real broker: acks, offsets, and clear refusals."""

from __future__ import annotations

import json

import httpx
import pytest
from confluent_kafka import Consumer, TopicPartition

from app.tools.workers import wait_until
from tests.integration.conftest import Env

pytestmark = pytest.mark.integration


def read_at(env: Env, partition: int, offset: int) -> tuple[bytes | None, bytes]:
    c = Consumer(
        {
            "bootstrap.servers": env.settings.kafka_bootstrap,
            "group.id": f"{env.ns}-r",
            "enable.auto.commit": False,
        }
    )
    try:
        c.assign([TopicPartition(env.topic("email.raw-events"), partition, offset)])
        msg = c.poll(10)
        assert msg is not None and msg.error() is None
        return msg.key(), msg.value()
    finally:
        c.close()


def healthy(url: str) -> bool:
    try:
        return httpx.get(f"{url}/health", timeout=1).status_code == 200
    except httpx.HTTPError:
        return False


def test_intake_appends_and_answers_with_the_offset(env: Env) -> None:
    # dev mode: intake views and every stage; auth is tested in test_intake_auth.py
    worker = env.workers.add("all", SPILLWAY_INTAKE_AUTH="off")
    observer = env.observe()
    assert wait_until(lambda: healthy(worker.web_url), timeout=60), "intake did not start"
    event_id = f"{env.ns}-http-1"
    body = json.dumps(
        {
            "event_id": event_id,
            "template": "password_reset",
            "to": "h@example.com",
            "priority": "critical",
            "data": env.samples["password_reset"],
        }
    ).encode()
    r = httpx.post(
        f"{worker.web_url}/v1/events",
        content=body,
        headers={"content-type": "application/json"},
        timeout=30,
    )
    assert r.status_code == 202, r.text
    result = r.json()
    assert result["topic"] == env.topic("email.raw-events")
    assert result["sequence"] == f"{result['partition']}:{result['offset']}"
    assert read_at(env, result["partition"], result["offset"]) == (event_id.encode(), body)

    batch = [
        {
            "event_id": f"{env.ns}-http-b{i}",
            "template": "password_reset",
            "to": f"b{i}@example.com",
            "data": env.samples["password_reset"],
        }
        for i in range(5)
    ]
    r = httpx.post(f"{worker.web_url}/v1/events/batch", json={"events": batch}, timeout=30)
    assert r.status_code == 202, r.text
    assert r.json()["accepted"] == 5 and len(r.json()["results"]) == 5

    tally = observer.wait_for(6, timeout=90, check=env.workers.check_alive)
    assert {event_id, *(b["event_id"] for b in batch)} <= set(tally.sent)


@pytest.mark.parametrize(
    ("path", "body", "status", "needle"),
    [
        ("/v1/events", b"[1, 2]", 400, "must be a JSON object"),
        ("/v1/events", b"{oops", 400, "not valid UTF-8 JSON"),
        ("/v1/events", b"x" * 2_000_000, 413, "exceeds the limit"),
        ("/v1/events/batch", json.dumps([{}] * 1001).encode(), 413, "exceeds the limit of 1000"),
        ("/v1/events/batch", b'{"events": 3}', 400, "JSON array"),
    ],
)
def test_intake_refuses_bad_bodies_clearly(
    env: Env, path: str, body: bytes, status: int, needle: str
) -> None:
    worker = env.workers.add("intake", SPILLWAY_INTAKE_AUTH="off")
    assert wait_until(lambda: healthy(worker.web_url), timeout=60), "intake did not start"
    r = httpx.post(
        f"{worker.web_url}{path}",
        content=body,
        headers={"content-type": "application/json"},
        timeout=30,
    )
    assert r.status_code == status
    assert needle in r.json()["error"]
