"""Spillway: a burst-proof transactional email pipeline on Kafka and faust-streaming.

``faust -A app worker`` finds the Faust app as ``app.app``; it is built on first
access from the environment (see ``app.settings``), so importing submodules
never creates it.
"""

from __future__ import annotations

from typing import Any

_app: Any = None


def __getattr__(name: str) -> Any:
    global _app
    if name == "app":
        if _app is None:
            from app.factory import create_app

            _app = create_app()
        return _app
    raise AttributeError(name)
