"""Shared fixtures. Unit tests use confluent-kafka's in-memory registry (mock://).

Fixtures and helpers live in the plugins of ``tests/plugins/`` (registered below); a test
module imports helpers from there, never from another test module.
"""

from __future__ import annotations

from typing import Any

import pytest
from confluent_kafka.schema_registry import SchemaRegistryClient

from app.serde import Serde
from app.topology import topic_schemas

pytest_plugins = [
    "tests.plugins.factories",
    "tests.plugins.fakes",
    "tests.plugins.metrics",
    "tests.plugins.agents",
    "tests.plugins.intake",
    "tests.plugins.promql",
    "tests.plugins.sim",
    "tests.plugins.cli",
    "tests.plugins.stack",
    "tests.plugins.traffic",
    "tests.plugins.providers",
    "tests.plugins.scram",
    "tests.plugins.chaos",  # the short chaos scenarios (H1b, issue 12)
]


@pytest.fixture
def registry() -> Any:
    return SchemaRegistryClient.new_client({"url": "mock://unit"})


@pytest.fixture
def serde(registry: Any) -> Serde:
    s = Serde(registry, topic_schemas())
    s.register()
    return s
