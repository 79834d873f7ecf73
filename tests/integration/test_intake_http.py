"""HTTP intake against the real broker: acks, offsets, and clear refusals."""

from __future__ import annotations

import json
from collections.abc import Iterator
from typing import Any

import httpx
import pytest
from confluent_kafka import Consumer, TopicPartition

from harness.workers import Worker, wait_until
from tests.plugins.stack import Env, healthy

pytestmark = pytest.mark.integration


def read_at(env: Env, answer: dict[str, Any]) -> tuple[bytes | None, bytes]:
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
        return msg.key(), msg.value()
    finally:
        c.close()


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
    assert result["topic"] == env.topic("email.raw-events.critical")  # its priority's topic
    assert result["sequence"] == f"{result['partition']}:{result['offset']}"
    assert read_at(env, result) == (event_id.encode(), body)

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


@pytest.fixture(scope="module")
def intake(stack: None) -> Iterator[tuple[Env, Worker]]:
    """One intake worker (Faust's web server, auth off) for the body tests."""
    env = Env("test_intake_http")
    worker = env.workers.add("intake", SPILLWAY_INTAKE_AUTH="off")
    try:
        assert wait_until(lambda: healthy(worker.web_url), timeout=60), "intake did not start"
        yield env, worker
    finally:
        env.close()


def event_of(env: Env, size: int) -> tuple[str, bytes]:
    """A valid event of exactly ``size`` bytes and its id."""
    event_id = f"{env.ns}-size-{size}"
    head: dict[str, Any] = {"event_id": event_id, "template": "password_reset", "to": "s@x.example"}
    head["data"] = {"blob": ""}
    head["data"]["blob"] = "x" * (size - len(json.dumps(head).encode()))
    body = json.dumps(head).encode()
    assert len(body) == size
    return event_id, body


@pytest.mark.parametrize("size", [65_537, 300_000, 999_000])
def test_large_bodies_reach_kafka_whole(intake: tuple[Env, Worker], size: int) -> None:
    """Through the Faust worker's own aiohttp server: the record is the body, byte for byte
    (bodies over ~64 KB used to be cut at what was buffered)."""
    env, worker = intake
    event_id, body = event_of(env, size)
    r = httpx.post(
        f"{worker.web_url}/v1/events",
        content=body,
        headers={"content-type": "application/json"},
        timeout=30,
    )
    assert r.status_code == 202, r.text
    assert read_at(env, r.json()) == (event_id.encode(), body)


def test_chunked_body_reaches_kafka_whole(intake: tuple[Env, Worker]) -> None:
    env, worker = intake
    event_id, body = event_of(env, 500_000)

    def chunks() -> Iterator[bytes]:
        for i in range(0, len(body), 4_096):
            yield body[i : i + 4_096]

    r = httpx.post(
        f"{worker.web_url}/v1/events",
        content=chunks(),  # no Content-Length: Transfer-Encoding: chunked
        headers={"content-type": "application/json"},
        timeout=30,
    )
    assert r.status_code == 202, r.text
    assert read_at(env, r.json()) == (event_id.encode(), body)


def chunked(total: int) -> Iterator[bytes]:
    for _ in range(total // 65_536):
        yield b"x" * 65_536


@pytest.mark.parametrize(
    ("path", "body", "status", "reason", "needle"),
    [
        ("/v1/events", b"[1, 2]", 400, "invalid_event", "must be a JSON object"),
        ("/v1/events", b"{oops", 400, "malformed_json", "not valid UTF-8 JSON"),
        ("/v1/events", b"[" * 500_000, 400, "too_deep", "nests too deeply"),
        ("/v1/events", b"x" * 2_000_000, 413, "body_too_large", "exceeds the limit"),
        ("/v1/events", "chunked", 413, "body_too_large", "exceeds the limit of 1048576"),
        ("/v1/events", 1_000_001, 413, "record_too_large", "largest the producer sends"),
        ("/v1/events", 1_048_576, 413, "record_too_large", "largest the producer sends"),
        ("/v1/events/batch", json.dumps([{}] * 1001).encode(), 413, "batch_too_large",
         "exceeds the limit of 1000"),
        ("/v1/events/batch", b'{"events": 3}', 400, "invalid_event", "JSON array"),
    ],
)
def test_intake_refuses_bad_bodies_clearly(
    intake: tuple[Env, Worker], path: str, body: Any, status: int, reason: str, needle: str
) -> None:
    env, worker = intake
    if body == "chunked":
        body = chunked(2_000_000)
    elif isinstance(body, int):
        body = event_of(env, body)[1]  # under the body limit, over one Kafka record
    r = httpx.post(
        f"{worker.web_url}{path}",
        content=body,
        headers={"content-type": "application/json"},
        timeout=30,
    )
    assert (r.status_code, r.json()["reason"]) == (status, reason), r.text
    assert needle in r.json()["error"]


def test_the_worker_serves_the_contract_and_json_errors(intake: tuple[Env, Worker]) -> None:
    _, worker = intake
    doc = httpx.get(f"{worker.web_url}/openapi.json", timeout=10)
    assert doc.status_code == 200
    assert set(doc.json()["paths"]) == {"/v1/events", "/v1/events/batch", "/openapi.json"}
    r = httpx.get(f"{worker.web_url}/v1/events", timeout=10)
    assert (r.status_code, r.json()["reason"]) == (405, "method_not_allowed")
    r = httpx.post(f"{worker.web_url}/v1/nothing", content=b"{}", timeout=10)
    assert (r.status_code, r.json()["reason"]) == (404, "not_found")
