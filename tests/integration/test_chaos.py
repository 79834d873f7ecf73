"""Short chaos scenarios (issue 12) on the shared stack: dispatch scaled 1 -> 3 -> 1 twice
with 2,000 mixed-priority events, and a SIGSTOPped zombie with 1,200 and a 6 s session
timeout, under a saturated quota (the full suite, 10,000 events per scenario and the
broker kill, is ``scripts/chaos``).

Counts only, no timing (``tests.plugins.chaos.check``): every event sent or dead, no
request for a key the provider had already accepted, no second above the quota, no
worker that needed SIGKILL to stop. A failing run gives up after 60 s without progress;
the workers' logs are under test-artifacts/chaos/. In the default run (issue 12: CI
catches a regression of scaling or fencing), about 2 minutes each; both passed twice in a
row on the shared 2-core machine before moving here from the long suite.
"""

from __future__ import annotations

import pytest

from tests.plugins.chaos import check, run_short

pytestmark = [pytest.mark.integration]


def test_dispatch_scaled_up_and_down_twice_loses_and_repeats_nothing(stack: None) -> None:
    figures = run_short("scale")
    print(figures.row())
    check(figures)


#: The zombie needs traffic while it is stopped and for a while after it resumes, not
#: 2,000 events: stopped at 15% of them for the session timeout plus 2 s, it resumes
#: at about 40% of 1,200, with some 15 s of traffic left at 50/s.
ZOMBIE_EVENTS = 1_200
#: 6 s (the broker's minimum) instead of 10 s: the group notices the stopped worker
#: sooner, and the stop lasts 8 s instead of 12 s.
ZOMBIE_SESSION_S = 6.0


def test_zombie_dispatch_worker_sends_nothing_it_no_longer_owns(stack: None) -> None:
    figures = run_short("zombie", events=ZOMBIE_EVENTS, session_timeout_s=ZOMBIE_SESSION_S)
    print(figures.row())
    check(figures, ZOMBIE_EVENTS)
