"""The alert rules pass ``promtool check rules`` and their unit tests (``promtool test
rules`` on synthetic series), and name only metrics the workers export."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import pytest
import yaml

from app.metrics import METRICS
from app.settings import PROJECT_ROOT
from tests.plugins.promql import BUILTIN, metric_names

PROM = PROJECT_ROOT / "deploy" / "prometheus"
PROMTOOL = shutil.which("promtool")
needs_promtool = pytest.mark.skipif(
    PROMTOOL is None, reason="promtool not installed (Debian package prometheus; scripts/setup)"
)

ALERTS = {
    "SpillwayDeadLettersHigh",
    "SpillwayLagGrowing",
    "SpillwayLagHigh",
    "SpillwayTimeToSendSlow",
    "SpillwayBreakerOpen",
    "SpillwayQuotaCeiling",
    "SpillwayWorkerDown",
}


def promtool(*args: str | Path) -> subprocess.CompletedProcess[str]:
    assert PROMTOOL is not None
    return subprocess.run(
        [PROMTOOL, *map(str, args)], capture_output=True, text=True, timeout=60, cwd=PROM
    )


@needs_promtool
def test_promtool_check_rules() -> None:
    result = promtool("check", "rules", "rules.yml")
    assert result.returncode == 0, result.stdout + result.stderr


@needs_promtool
def test_promtool_check_config() -> None:
    result = promtool("check", "config", "prometheus.yml")
    assert result.returncode == 0, result.stdout + result.stderr


@needs_promtool
def test_promtool_test_rules() -> None:
    result = promtool("test", "rules", "rules_test.yml")
    assert result.returncode == 0, result.stdout + result.stderr
    assert "SUCCESS" in result.stdout


def rules() -> list[dict]:
    doc = yaml.safe_load((PROM / "rules.yml").read_text())
    return [rule for group in doc["groups"] for rule in group["rules"]]


def test_every_required_alert_is_there_with_a_runbook_and_a_test() -> None:
    alerts = {r["alert"]: r for r in rules() if "alert" in r}
    assert set(alerts) == ALERTS
    tested = {
        case["alertname"]
        for test in yaml.safe_load((PROM / "rules_test.yml").read_text())["tests"]
        for case in test.get("alert_rule_test", [])
        if case["exp_alerts"]
    }
    assert tested == ALERTS, "every alert has a test where it fires"
    docs = (PROJECT_ROOT / "docs" / "observability.md").read_text().lower()
    for name, rule in alerts.items():
        anchor = rule["annotations"]["runbook"].split("#")[1]
        assert anchor == name.lower() and f"### {name.lower()}" in docs, name
        assert rule["labels"]["severity"] in ("page", "warning")


def test_rules_name_only_exported_metrics() -> None:
    known = METRICS.metric_names() | BUILTIN
    recorded = {r["record"] for r in rules() if "record" in r}
    for rule in rules():
        unknown = metric_names(rule["expr"]) - known - recorded
        assert not unknown, f"{rule.get('alert') or rule.get('record')}: {unknown}"
