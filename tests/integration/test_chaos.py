"""Short chaos scenarios (issue 12) on the shared stack: dispatch scaled 1 -> 3 -> 1 twice,
and a SIGSTOPped zombie, each with 2,000 mixed-priority events under a saturated quota
(the full suite, 10,000 events per scenario and the broker kill, is ``scripts/chaos``).

Counts only, no timing: every event sent or dead, no request for a key the provider had
already accepted, no second above the quota, no worker that needed SIGKILL to stop.

Long suite for now (``scripts/test-long -k chaos``): both scenarios still lose a few
emails (issue 12 is open; figures in docs/guarantees-chaos.md), and a failing run waits
60 s without progress before it gives up. They move back into the default run once
they pass.
"""

from __future__ import annotations

import os
import uuid

import pytest

from app.settings import Settings
from bench.chaos import Figures, Stack, run_scenario

from .conftest import ARTIFACTS

pytestmark = [
    pytest.mark.integration,
    pytest.mark.long,
    pytest.mark.skipif(
        not os.environ.get("SPILLWAY_LONG_TESTS"), reason="long suite: SPILLWAY_LONG_TESTS=1"
    ),
]

EVENTS = 2_000
QUOTA = 50  # requests/s: 2,000 events keep the lanes backlogged for about 45 s


def shared_stack() -> Stack:
    s = Settings()
    return Stack(s.kafka_bootstrap, s.schema_registry_url)


def check(f: Figures) -> None:
    summary = f.row()
    assert f.produced == EVENTS, summary
    assert f.missing == 0, summary
    assert f.sent + f.dead == EVENTS, summary
    assert f.requests_for_accepted_keys == 0, summary
    assert f.max_requests_per_s <= f.quota_per_s, summary
    assert f.forced_kills == 0, summary


def run(name: str) -> Figures:
    log_root = ARTIFACTS / "chaos" / f"{name}-{uuid.uuid4().hex[:6]}"
    return run_scenario(name, shared_stack(), EVENTS, QUOTA, log_root, stall_s=60.0)


def test_dispatch_scaled_up_and_down_twice_loses_and_repeats_nothing(stack: None) -> None:
    figures = run("scale")
    print(figures.row())
    check(figures)


def test_zombie_dispatch_worker_sends_nothing_it_no_longer_owns(stack: None) -> None:
    figures = run("zombie")
    print(figures.row())
    check(figures)
