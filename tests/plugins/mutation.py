"""Hypothesis settings for mutation runs (``scripts/mutation`` loads this plugin with
``-p tests.plugins.mutation`` through pyproject's ``[tool.mutmut]``).

A mutation run executes the same tests hundreds of times on a loaded machine, where
hypothesis's ``too_slow`` health check and per-example deadlines fail tests that pass
(a timing, not a verdict); mutmut then refuses to run at all. The examples and every
assertion stay as they are."""

from __future__ import annotations

from hypothesis import HealthCheck, settings

settings.register_profile(
    "mutation",
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)
settings.load_profile("mutation")
