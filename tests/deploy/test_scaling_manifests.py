"""KEDA ScaledObjects and HPAs: one per consuming stage, scaling on that stage's lag at
10,000 per replica, capped at the partition count."""

from __future__ import annotations

from typing import Any

import pytest
import yaml

from app.settings import PROJECT_ROOT, Settings
from app.topology import STAGES, TOPICS

DEPLOY = PROJECT_ROOT / "deploy"
STAGES_SCALED = ("render", "route", "dispatch")


def load(path: str) -> dict[str, Any]:
    return yaml.safe_load((DEPLOY / path).read_text())


def lanes_of(stage: str) -> set[str]:
    """Topics the stage consumes, retry topics excepted (their lag is a wait, not work)."""
    return {TOPICS[t][0] for t in STAGES[stage][0] if "retry" not in t}


@pytest.mark.parametrize("stage", STAGES_SCALED)
def test_keda_scaled_object(stage: str) -> None:
    doc = load(f"keda/{stage}.yaml")
    settings = Settings()
    assert doc["kind"] == "ScaledObject" and doc["spec"]["scaleTargetRef"]["name"].endswith(stage)
    assert doc["spec"]["maxReplicaCount"] == settings.kafka.topic_partitions
    triggers = doc["spec"]["triggers"]
    assert {t["type"] for t in triggers} == {"kafka"}
    assert {t["metadata"]["topic"] for t in triggers} == lanes_of(stage)
    for t in triggers:
        assert t["metadata"]["consumerGroup"] == settings.app_id(stage)
        assert t["metadata"]["lagThreshold"] == "10000"


@pytest.mark.parametrize("stage", STAGES_SCALED)
def test_hpa_on_exported_lag(stage: str) -> None:
    doc = load(f"hpa/{stage}.yaml")
    assert doc["apiVersion"] == "autoscaling/v2" and doc["kind"] == "HorizontalPodAutoscaler"
    assert doc["spec"]["maxReplicas"] == Settings().kafka.topic_partitions
    [metric] = doc["spec"]["metrics"]
    external = metric["external"]
    assert external["metric"]["selector"]["matchLabels"] == {"stage": stage}
    assert external["target"] == {"type": "AverageValue", "averageValue": "10000"}
    adapter = load("hpa/prometheus-adapter.yaml")["rules"]["external"]
    assert any(r["name"]["as"] == external["metric"]["name"] for r in adapter)
