"""A small flash sale through every system of the benchmark (bench/flash_sale.py):
it checks that the harness works and that every system sends every email exactly
once. Timings are printed, never asserted. Needs the local stack (the ``stack`` fixture
of tests/plugins/stack.py starts it if it is not running), Debian's redis-server and
PostgreSQL 15."""

from __future__ import annotations

import shutil
import time
from pathlib import Path

import psutil
import pytest

from bench import flash_sale, report

pytestmark = pytest.mark.integration

EVENTS = 1_500
LATE = 10  # password resets sent while the burst drains


@pytest.mark.skipif(
    shutil.which("redis-server") is None or not Path("/usr/lib/postgresql/15/bin").is_dir(),
    reason="needs Debian's redis-server and postgresql (scripts/setup installs them)",
)
def test_flash_sale_smoke_all_systems(stack: None, tmp_path: Path) -> None:
    before = {p.pid for p in psutil.Process().children(recursive=True)}
    started = time.monotonic()
    doc = flash_sale.run_all(
        "smoke",
        list(flash_sale.SYSTEMS),
        quota=None,
        workers=2,
        n=EVENTS,
        stall_s=20,
        late=LATE,
    )
    elapsed = time.monotonic() - started

    results = {s["system"]: s for s in doc["systems"]}
    assert set(results) == set(flash_sale.SYSTEMS)
    for system, r in results.items():
        assert r["produced"] == EVENTS + LATE, system
        assert r["sent"] == EVENTS + LATE and r["dead"] == 0, (
            system,
            r["sent"],
            r["dead"],
            r["notes"],
        )
        assert r["time_to_send_ms"]["critical_late"]["count"] == LATE, system
        assert r["duplicates"] == 0, (system, r["duplicates"])
        assert r["correct"], system
        assert r["drain_s"] and r["series"]["backlog"], system
    spillway = results["spillway"]
    assert set(spillway["resources"]) >= {"spillway-render", "spillway-route", "spillway-dispatch"}
    assert sum(c["count"] for c in spillway["time_to_send_ms"].values()) == EVENTS + LATE

    path = flash_sale.save(doc, tmp_path)  # the report renders from what the run saved
    doc_md, png = tmp_path / "benchmarks.md", tmp_path / "benchmarks.png"
    report.render([[report.load([path])[0]]], doc_md, png)
    assert "| spillway |" in doc_md.read_text() and png.stat().st_size > 0
    print(f"smoke: {EVENTS} events x {len(results)} systems in {elapsed:.0f} s")

    def leftovers() -> set[int]:
        return {p.pid for p in psutil.Process().children(recursive=True)} - before

    deadline = time.monotonic() + 10
    while leftovers() and time.monotonic() < deadline:
        time.sleep(0.2)
    assert not leftovers(), "the benchmark left processes running"
