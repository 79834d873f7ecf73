"""``spillway status`` against a fake AdminClient: lag arithmetic, down stages, exit codes."""

from __future__ import annotations

import json
from concurrent.futures import Future
from types import SimpleNamespace
from typing import Any

import pytest
from click.testing import CliRunner
from confluent_kafka import TopicPartition

from app.cli import EXIT_FAILURE, EXIT_UNAVAILABLE
from app.cli.main import cli
from app.cli.status import consumed_topics
from app.topology import TOPICS


def done(value: Any) -> Future[Any]:
    f: Future[Any] = Future()
    f.set_result(value)
    return f


class FakeAdmin:
    """4 partitions per topic: earliest 10, latest 110; committed offsets per group."""

    def __init__(self, members: dict[str, int], committed: dict[str, int]) -> None:
        self.members, self.committed = members, committed

    def list_topics(self, timeout: float) -> Any:
        topics = {
            name: SimpleNamespace(partitions=dict.fromkeys(range(4))) for name, _ in TOPICS.values()
        }
        return SimpleNamespace(topics=topics)

    def list_offsets(self, request: dict[TopicPartition, Any], request_timeout: float) -> Any:
        latest = "latest" in repr(next(iter(request.values()))).lower()
        return {tp: done(SimpleNamespace(offset=110 if latest else 10)) for tp in request}

    def describe_consumer_groups(self, groups: list[str], request_timeout: float) -> Any:
        return {
            g: done(
                SimpleNamespace(
                    state=SimpleNamespace(name="STABLE"),
                    members=[object()] * self.members.get(g, 0),
                )
            )
            for g in groups
        }

    def list_consumer_group_offsets(self, request: list[Any], request_timeout: float) -> Any:
        [req] = request
        group = req.group_id
        offset = self.committed.get(group)
        tps = (
            []
            if offset is None
            else [
                TopicPartition(topic, p, offset)
                for topic in {
                    "spillway-render": consumed_topics("render"),  # per-priority topics too
                    "spillway-route": consumed_topics("route"),
                }.get(group, [])
                for p in range(4)
            ]
        )
        return {group: done(SimpleNamespace(topic_partitions=tps))}


@pytest.fixture
def admin(monkeypatch: pytest.MonkeyPatch) -> dict[str, FakeAdmin]:
    import confluent_kafka.admin

    holder: dict[str, FakeAdmin] = {}
    monkeypatch.setattr(confluent_kafka.admin, "AdminClient", lambda conf: holder["admin"])
    return holder


def test_lag_per_stage_and_down_stages(admin: dict[str, FakeAdmin]) -> None:
    admin["admin"] = FakeAdmin(
        {"spillway-render": 2, "spillway-route": 1}, {"spillway-render": 100, "spillway-route": 110}
    )
    result = CliRunner().invoke(cli, ["status", "--json"])
    assert result.exit_code == EXIT_FAILURE  # dispatch has no worker
    report = json.loads(result.output[: result.output.rindex("}") + 1])
    stages = {s["stage"]: s for s in report["stages"]}
    # each topic render reads (issue 14: per priority + the catch-all): 4 x (110 - 100)
    assert stages["render"]["lag"] == len(consumed_topics("render")) * 40
    assert stages["route"]["lag"] == 0
    # nothing committed: every retained record of every topic dispatch consumes
    assert stages["dispatch"]["lag"] == len(consumed_topics("dispatch")) * 4 * 100
    assert report["down"] == ["dispatch"]
    assert report["dead_letters"] == 400
    assert "all" not in stages


def test_dev_mode_all_covers_every_stage_and_max_lag(admin: dict[str, FakeAdmin]) -> None:
    admin["admin"] = FakeAdmin({"spillway-all": 1}, {"spillway-all": 0})
    result = CliRunner().invoke(cli, ["status"])
    assert result.exit_code == 0, result.output
    assert "add --worker URL" in result.output
    admin["admin"] = FakeAdmin(
        {g: 1 for g in ("spillway-render", "spillway-route", "spillway-dispatch")},
        {"spillway-render": 100, "spillway-route": 110},
    )
    assert CliRunner().invoke(cli, ["status", "--max-lag", "100"]).exit_code == EXIT_FAILURE
    result = CliRunner().invoke(cli, ["status", "--max-lag", "5000"])
    assert result.exit_code == 0, result.output


def test_kafka_unreachable_is_4(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("SPILLWAY_KAFKA_BOOTSTRAP", "127.0.0.1:9")
    result = CliRunner().invoke(cli, ["status", "--timeout", "0.5"])
    assert result.exit_code == EXIT_UNAVAILABLE
    assert "did not answer" in result.output


def test_worker_adds_breakers_and_dead_letters_by_reason(
    admin: dict[str, FakeAdmin], monkeypatch: pytest.MonkeyPatch
) -> None:
    import httpx

    model = {
        "providers": [{"provider": "sim-http", "breaker": "open", "sent": 7}],
        "dead_letters": {
            "total": 3,
            "by_reason": [{"stage": "render", "reason": "unknown_template", "count": 3}],
        },
    }

    def get(url: str, timeout: float) -> httpx.Response:
        if url.startswith("http://down"):
            raise httpx.ConnectError("refused")
        assert url == "http://w:6069/status.json"
        return httpx.Response(200, json=model, request=httpx.Request("GET", url))

    monkeypatch.setattr(httpx, "get", get)
    admin["admin"] = FakeAdmin({"spillway-all": 1}, {})
    result = CliRunner().invoke(cli, ["status", "-w", "http://w:6069", "-w", "http://down:1"])
    assert result.exit_code == 0, result.output
    assert "provider sim-http" in result.output and "breaker open" in result.output
    assert "unknown_template" in result.output
    assert "worker http://down:1: unavailable (ConnectError: refused)" in result.output
