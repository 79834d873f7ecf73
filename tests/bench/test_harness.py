"""The flash-sale harness's pure parts, without the stack: ``--quota`` settings,
system names (``spillway-<N>dispatch``), the analysis of a ledger (burst drain, late
critical), and the report over a run with a Spillway variant and late critical in the
unlimited mode, and over the result files on record."""

from __future__ import annotations

import functools
import json
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from bench import flash_sale, report
from bench.peers import celery_app, pgq


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        (None, [None]),
        ("250", [250]),
        ("0", [None]),
        ("0,1000", [None, 1000]),
        (" 1000 , none ", [1000, None]),
        ("unlimited,50,200", [None, 50, 200]),
    ],
)
def test_parse_quotas(text: str | None, expected: list[int | None]) -> None:
    assert flash_sale.parse_quotas(text) == expected


@pytest.mark.parametrize(
    "text",
    ["", ",", "0,", "abc", "-5", "+5", "1e3", "1_000", "nan", "inf", "2.5", "0,0", "0,none",
     "100,100", "\x00", "\ud800", "\uff19", "9" * 10],
)
def test_parse_quotas_refuses(text: str) -> None:
    with pytest.raises(ValueError):
        flash_sale.parse_quotas(text)


@given(st.lists(st.integers(min_value=1, max_value=10**6), unique=True, min_size=1))
def test_parse_quotas_round_trip(quotas: list[int]) -> None:
    assert flash_sale.parse_quotas(",".join(map(str, quotas))) == quotas


@given(st.text())
def test_parse_quotas_any_text(text: str) -> None:
    """Any text: a list of distinct settings, or ValueError; never another exception."""
    try:
        out = flash_sale.parse_quotas(text)
    except ValueError:
        return
    assert out and len(out) == len(set(out))
    assert all(q is None or q > 0 for q in out)


def test_runner_names() -> None:
    assert flash_sale.runner("bare") is flash_sale.run_bare
    run = flash_sale.runner("spillway-3dispatch")
    assert isinstance(run, functools.partial) and run.func is flash_sale.run_spillway
    assert run.keywords == {"dispatch_workers": 3, "system": "spillway-3dispatch"}
    bad_names = ("spillway-0dispatch", "spillway-3d", "spillway-dispatch", "Spillway", "", "bare ")
    for bad in bad_names:
        with pytest.raises(KeyError):
            flash_sale.runner(bad)


@pytest.mark.parametrize(
    "argv",
    [
        ["--systems", "spillway,nope"],
        ["--systems", "bare,bare"],
        ["--systems", "bare", "--quota", "fast"],
        ["--systems", "bare", "--quota", "0,0"],
    ],
)
def test_main_refuses_before_running(argv: list[str], monkeypatch: pytest.MonkeyPatch) -> None:
    def no_run(*_a: Any, **_k: Any) -> None:
        raise AssertionError("ran a benchmark on bad arguments")

    monkeypatch.setattr(flash_sale, "run_all", no_run)
    with pytest.raises(SystemExit) as exc:
        flash_sale.main(argv)
    assert exc.value.code == 2


def test_main_runs_every_quota_and_saves_each(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    calls: list[tuple[list[str], int | None, int | None]] = []

    def fake_run_all(
        preset: str, systems: list[str], quota: int | None, workers: int, n: int | None, **kw: Any
    ) -> dict[str, Any]:
        calls.append((systems, quota, kw["late"]))
        return {"preset": preset, "quota_per_s": quota, "started_at": f"T{len(calls)}",
                "systems": [{"correct": True}]}

    saved: list[dict[str, Any]] = []

    def fake_save(doc: dict[str, Any]) -> Path:
        saved.append(doc)
        return tmp_path / "x.json"

    monkeypatch.setattr(flash_sale, "run_all", fake_run_all)
    monkeypatch.setattr(flash_sale, "save", fake_save)
    monkeypatch.setattr(flash_sale, "PROJECT_ROOT", tmp_path)
    argv = ["--systems", "spillway,spillway-3dispatch,celery", "--quota", "0,1000", "--late", "7"]
    assert flash_sale.main(argv) == 0
    systems = ["spillway", "spillway-3dispatch", "celery"]
    assert calls == [(systems, None, 7), (systems, 1000, 7)]
    assert [d["quota_per_s"] for d in saved] == [None, 1000]


def test_peer_priorities_put_critical_first() -> None:
    """Celery on Redis serves the lowest number first, pgqueuer the highest."""
    c = celery_app.PRIORITY
    assert c["critical"] < c["normal"] < c["bulk"]
    assert all(v in celery_app.TRANSPORT_OPTIONS["priority_steps"] for v in c.values())
    assert celery_app.app.conf.broker_transport_options == celery_app.TRANSPORT_OPTIONS
    p = pgq.PRIORITY
    assert p["critical"] > p["normal"] > p["bulk"]


def ledger(
    produced_at: dict[str, float], sent: dict[str, tuple[float, str]]
) -> list[dict[str, Any]]:
    return [
        {"key": k, "accepted_at": t, "custom_args": {"priority": prio}}
        for k, (t, prio) in sent.items()
    ] + [{"key": "someone-else", "accepted_at": 999.0, "custom_args": {}}]


def test_analyse_burst_drain_and_late_critical() -> None:
    late = f"x{flash_sale.LATE}0"
    produced_at = {"x-0": 100.0, "x-1": 100.0, "x-2": 100.5, late: 103.0}
    sent = {
        "x-0": (100.2, "critical"),
        "x-1": (101.0, "bulk"),
        "x-2": (102.0, "normal"),
        late: (110.0, "critical"),
    }
    r = flash_sale.SystemResult("s", "c", produced=4)
    flash_sale.analyse(r, produced_at, ledger(produced_at, sent), {"count": 0})
    assert r.correct and (r.sent, r.missing) == (4, 0)
    assert r.drain_s == pytest.approx(2.0)  # the burst's: the late reset came after it
    assert r.send_rate_per_s == pytest.approx(1.5)
    tts = r.time_to_send_ms
    assert tts["critical"]["count"] == 1 and tts["critical"]["p99"] == pytest.approx(200.0)
    assert tts["critical_late"]["count"] == 1
    assert tts["critical_late"]["p99"] == pytest.approx(7000.0)
    assert r.series["second"][-1] == 10  # the series still runs to the last acceptance


def test_analyse_nothing_sent() -> None:
    r = flash_sale.SystemResult("s", "c", produced=2)
    flash_sale.analyse(r, {"x-0": 1.0, "x-1": 1.0}, [], {})
    assert not r.correct and r.missing == 2 and r.drain_s is None


def system(name: str, drain: float, crit: float, late_p99: float | None) -> dict[str, Any]:
    tts: dict[str, dict[str, float | int | None]] = {
        p: {"count": 10, "p50": crit, "p99": crit * 2, "max": crit * 3}
        for p in ("critical", "normal", "bulk")
    }
    if late_p99 is not None:
        tts["critical_late"] = {"count": 20, "p50": late_p99 / 2, "p99": late_p99, "max": late_p99}
    r = flash_sale.SystemResult(name, f"{name} config", produced=50, sent=50, drain_s=drain,
                                send_rate_per_s=50 / drain, time_to_send_ms=tts, correct=True,
                                resources={f"{name}-w": {"peak_rss_mb": 100.0, "cpu_s": 1.5}},
                                series={"second": [0.0], "produced_per_s": [50.0],
                                        "sent_per_s": [50.0], "backlog": [0.0]})
    r.intake = flash_sale.intake_of("how", 50, 1.0, [0.001])
    from dataclasses import asdict

    return asdict(r)


def doc_of(quota: int | None, late: int) -> dict[str, Any]:
    return {
        "benchmark": "flash-sale", "preset": "smoke", "events": 30, "quota_per_s": quota,
        "late_critical": late, "late_rate_per_s": 5.0, "peer_workers": 2,
        "started_at": "20261204T000000Z", "commit": "x",
        "machine": {"cores": 2, "memory_gb": 1.0, "cpu_model": "m", "os": "o", "python": "3",
                    "load_avg_at_start": [0.0, 0.0, 0.0]},
        "versions": {"x": "1"}, "logs": "var/x",
        "systems": [
            system("spillway", 10.0, 100.0, 400.0),
            system("spillway-3dispatch", 8.0, 50.0, 300.0),
            system("celery", 20.0, 1000.0, 5000.0),
        ],
    }


def test_report_renders_variant_and_late_critical_unlimited() -> None:
    lines, figures = report.section([doc_of(None, 20)])
    text = "\n".join(lines)
    row = next(line for line in lines if line.startswith("| spillway-3dispatch |"))
    assert "| 150 / 300 |" in row  # late critical p50 / p99
    assert "is still draining" in text and "saturates the quota" not in text
    ratio = next(line for line in lines if line.startswith("| spillway-3dispatch | 0.80x"))
    assert "0.75x" in ratio  # late critical p99 300 / 400
    assert "| celery | 2.00x |" in text
    assert figures["spillway-3dispatch"]["tts"]["critical_late"]["p99"] == 300.0


def test_report_quota_wording_and_no_late() -> None:
    text = "\n".join(report.section([doc_of(500, 50)])[0])
    assert "saturates the quota" in text
    text = "\n".join(report.section([doc_of(None, 0)])[0])
    assert "Late critical:" not in text


def test_report_reads_every_result_on_record(tmp_path: Path) -> None:
    """Today's result files (and older ones) still render: tables and plot."""
    groups = report.newest_groups(flash_sale.RESULTS_DIR)
    if not groups:
        pytest.skip("no flash-sale results under bench/results/")
    for runs in groups:
        lines, figures = report.section(runs)
        assert any(line.startswith("| spillway |") for line in lines) or "spillway" not in figures
    path = flash_sale.save(doc_of(None, 20), tmp_path)
    assert json.loads(path.read_text())["systems"][1]["system"] == "spillway-3dispatch"
    md, png = tmp_path / "b.md", tmp_path / "b.png"
    report.render([[report.load([path])[0]]], md, png)
    assert "| spillway-3dispatch |" in md.read_text() and png.stat().st_size > 0
