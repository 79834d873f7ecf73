"""CLI tests: no SPILLWAY_* from the caller's shell and the in-memory registry (for this
folder only, hence here). The fake producer is in tests/plugins/cli.py."""

from __future__ import annotations

import pytest


@pytest.fixture(autouse=True)
def clean_env(monkeypatch: pytest.MonkeyPatch) -> None:
    """No SPILLWAY_* from the caller's shell; an in-memory registry."""
    import os

    for name in list(os.environ):
        if name.startswith("SPILLWAY_"):
            monkeypatch.delenv(name)
    monkeypatch.setenv("SPILLWAY_SCHEMA_REGISTRY_URL", "mock://cli-tests")
