"""Integration tier: the real broker, registry, provider simulator and SMTP sink.

Its fixtures (``stack``, ``env``, ``own_sim``) and the ``Env`` class live in
``tests/plugins/stack.py``; import helpers from ``tests.plugins``, not from here.
"""

from __future__ import annotations

import pytest

pytestmark = pytest.mark.integration
