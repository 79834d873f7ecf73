"""A sent-ledger table whose changelog writes Kafka acknowledges when the test says.

``AckedTable`` is a dict with ``KeyHashedTable.written``: each write (set or delete)
gets a future, pending until the test calls ``ack`` (or ``fail``), so a test can prove
that something waits for a mark's acknowledgement, not only for the write.
"""

from __future__ import annotations

import asyncio
from typing import Any


class AckedTable(dict[bytes, Any]):
    def __init__(self, *args: Any, auto: bool = False) -> None:
        super().__init__(*args)
        self.futures: dict[bytes, asyncio.Future[None]] = {}
        self.writes: list[tuple[bytes, str | None]] = []  # (key, state) in write order
        self.auto = auto  # ack every write at once

    def _wrote(self, key: bytes, state: str | None) -> None:
        future: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        if self.auto:
            future.set_result(None)
        self.futures[key] = future
        self.writes.append((key, state))

    def __setitem__(self, key: bytes, value: Any) -> None:
        super().__setitem__(key, value)
        self._wrote(key, value.get("s") if isinstance(value, dict) else None)

    def __delitem__(self, key: bytes) -> None:
        super().__delitem__(key)
        self._wrote(key, None)

    def written(self, key: bytes) -> asyncio.Future[None] | None:
        future = self.futures.get(key)
        if future is None or (
            future.done() and not future.cancelled() and future.exception() is None
        ):
            return None
        return future

    def acked(self, key: bytes) -> bool:
        future = self.futures.get(key)
        return future is None or (future.done() and future.exception() is None)

    def ack(self, key: bytes) -> None:
        future = self.futures[key]
        if not future.done():
            future.set_result(None)

    def fail(self, key: bytes, error: BaseException | None = None) -> None:
        self.futures[key].set_exception(error or RuntimeError("broker refused the record"))
