"""The Grafana dashboard is valid JSON, provisionable, and its PromQL names only metrics
that app/metrics.py defines."""

from __future__ import annotations

import json
from typing import Any

import yaml

from app.metrics import METRICS
from app.settings import PROJECT_ROOT
from tests.plugins.promql import BUILTIN, metric_names

GRAFANA = PROJECT_ROOT / "deploy" / "grafana"


def dashboard() -> dict[str, Any]:
    return json.loads((GRAFANA / "dashboards" / "spillway.json").read_text())


def panels(d: dict[str, Any]) -> list[dict[str, Any]]:
    out = []
    for p in d["panels"]:
        out.append(p)
        out += p.get("panels", [])  # collapsed rows keep theirs inside
    return out


def test_dashboard_parses_and_is_provisionable() -> None:
    d = dashboard()
    assert d["uid"] and d["title"] and isinstance(d["schemaVersion"], int)
    assert "id" not in d or d["id"] is None, "a provisioned dashboard must not carry an id"
    ids = [p["id"] for p in panels(d)]
    assert len(ids) == len(set(ids)), "panel ids are unique"
    for p in panels(d):
        pos = p["gridPos"]
        assert pos["x"] + pos["w"] <= 24, p["title"]
    provider = yaml.safe_load(
        (GRAFANA / "provisioning" / "dashboards" / "spillway.yaml").read_text()
    )
    assert provider["apiVersion"] == 1 and provider["providers"][0]["type"] == "file"
    ds = yaml.safe_load((GRAFANA / "provisioning" / "datasources" / "prometheus.yaml").read_text())
    assert ds["datasources"][0]["type"] == "prometheus"


def test_panels_name_only_defined_metrics() -> None:
    known = METRICS.metric_names() | BUILTIN
    d = dashboard()
    exprs = [(p["title"], t["expr"]) for p in panels(d) for t in p.get("targets", [])]
    exprs += [(a["name"], a["expr"]) for a in d["annotations"]["list"] if "expr" in a]
    assert len(exprs) > 20
    for title, expr in exprs:
        names = metric_names(expr)
        assert names, f"{title}: no metric in {expr!r}"
        assert names <= known, f"{title}: unknown metrics {names - known}"


def test_dashboard_covers_what_on_call_needs() -> None:
    used = {
        n
        for p in panels(dashboard())
        for t in p.get("targets", [])
        for n in metric_names(t["expr"])
    }
    for needed in (
        "spillway_consumer_lag",
        "spillway_consumer_lag_slope",
        "spillway_time_to_send_seconds_bucket",
        "spillway_provider_requests_total",
        "spillway_provider_quota_per_second",
        "spillway_provider_breaker_state_code",
        "spillway_dead_letters_total",
    ):
        assert needed in used, needed


def test_metric_names_reads_expressions() -> None:
    expr = (
        'histogram_quantile(0.95, sum by (priority, le) (rate(spillway_x_bucket{a="b"}[5m])))'
        ' / on (provider) max by (provider) (spillway_y) > 0.8 and on () up{job=~"s.*"} == 0'
    )
    assert metric_names(expr) == {"spillway_x_bucket", "spillway_y", "up"}
