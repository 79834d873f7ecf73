"""Integration tier: the real broker, registry, provider simulator and SMTP sink.

Its fixtures (``stack``, ``env``, ``own_sim``) and the ``Env`` class live in
``tests/plugins/stack.py``; import helpers from ``tests.plugins``, not from here.
"""

from __future__ import annotations

import pytest

# Kept importable from here only for tests/integration/test_reliability.py and
# test_chaos.py, edited in parallel (issue 12); drop once they import tests.plugins.stack.
from tests.plugins.stack import ARTIFACTS, Env  # noqa: F401

pytestmark = pytest.mark.integration
