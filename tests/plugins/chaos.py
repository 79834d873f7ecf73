"""The short chaos scenarios' helpers (issue 12): run one scenario of ``bench.chaos`` on
the shared stack with 2,000 mixed-priority events under a saturated quota, and judge
its counts. Used by ``tests/integration/test_chaos.py``."""

from __future__ import annotations

import uuid

from app.settings import Settings
from bench.chaos import Figures, Stack, run_scenario
from tests.plugins.stack import ARTIFACTS

EVENTS = 2_000
QUOTA = 50  # requests/s: 2,000 events keep the lanes backlogged for about 45 s


def shared_stack() -> Stack:
    s = Settings()
    return Stack(s.kafka.bootstrap, s.registry.url)


def run_short(
    name: str, events: int = EVENTS, quota: int = QUOTA, session_timeout_s: float = 10.0
) -> Figures:
    """``name``'s scenario on the shared stack; worker logs under test-artifacts/chaos/."""
    log_root = ARTIFACTS / "chaos" / f"{name}-{uuid.uuid4().hex[:6]}"
    return run_scenario(
        name,
        shared_stack(),
        events,
        quota,
        log_root,
        session_timeout_s=session_timeout_s,
        stall_s=60.0,
    )


def check(f: Figures, events: int = EVENTS) -> None:
    """Counts only, no timing: every event sent or dead, no request for a key the
    provider had already accepted, no second above the quota, no forced kill."""
    summary = {k: v for k, v in f.row().items() if k not in ("requests_per_s", "status_429_per_s")}
    assert f.produced == events, summary
    assert f.missing == 0, summary
    assert f.sent + f.dead == events, summary
    assert f.requests_for_accepted_keys == 0, summary
    assert f.max_requests_per_s <= f.quota_per_s, summary
    assert f.forced_kills == 0, summary
