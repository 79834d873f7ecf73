"""Helpers of the Dispatcher's unit tests (app/dispatcher.py): the work item a lane
admits, the value of a ``sent`` emission, and waiting for a condition with a deadline."""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from app.dispatcher import Work
from app.stages.common import Origin


@dataclass
class Result:
    """The value of a ``sent`` emission (stands for a SendResult)."""

    event_id: str


def work(
    tp: Any,
    offset: int,
    acks: list[tuple[Any, int]],
    generation: int | None = 1,
    value: bytes | None = None,
) -> Work:
    """Message ``offset`` of partition ``tp`` (value ``e<partition>-<offset>`` unless
    given); its release appends ``(tp, offset)`` to ``acks``."""
    return Work(
        tp=tp,
        offset=offset,
        generation=generation,
        value=f"e{tp[1]}-{offset}".encode() if value is None else value,
        origin=Origin(topic="lane", partition=tp[1], offset=offset),
        release=lambda: acks.append((tp, offset)),
    )


async def until(cond: Callable[[], Any], deadline_s: float = 5.0, poll_s: float = 0.005) -> None:
    """Wait until ``cond()`` is true; fail once ``deadline_s`` passed (loop time)."""
    loop = asyncio.get_running_loop()
    end = loop.time() + deadline_s
    while not cond():
        assert loop.time() < end, "condition not reached"
        await asyncio.sleep(poll_s)
