"""Moved to ``tests/plugins/providers.py``; this name stays importable only for
tests/integration/test_reliability.py (edited in parallel for issue 12). Remove it once
that module imports ``tests.plugins.providers``."""

from tests.plugins.providers import MODES, consumed, lane_partition, provider  # noqa: F401
