"""Typed clients for the simulators' control APIs (tests and benchmarks).

Async: :class:`SimulatorClient` (HTTP provider) and :class:`SmtpSinkClient`, on
``httpx.AsyncClient``; use ``async with`` or call ``aclose()``. Sync twins:
:class:`SyncSimulatorClient` and :class:`SyncSmtpSinkClient` on ``httpx.Client``.

Every method returns the decoded JSON; a 4xx/5xx raises :class:`SimulatorError`.
"""

from __future__ import annotations

import asyncio
import sys
import time
from dataclasses import dataclass
from types import TracebackType
from typing import Any, ClassVar, Self

import httpx

JSON = dict[str, Any]


def provider_command(port: int, *extra: str, log_level: str = "WARNING") -> list[str]:
    """The command line of a provider simulator on 127.0.0.1:``port`` (``extra``: more
    ``simulator.provider`` options, e.g. ``--quota 100``)."""
    return [
        sys.executable,
        "-m",
        "simulator.provider",
        "--host",
        "127.0.0.1",
        "--port",
        str(port),
        "--log-level",
        log_level,
        *extra,
    ]


class SimulatorError(RuntimeError):
    def __init__(self, status: int, message: str) -> None:
        super().__init__(f"{status}: {message}")
        self.status = status
        self.message = message


@dataclass(frozen=True, slots=True)
class _Paths:
    health: str
    config: str
    reset: str
    stats: str
    ledger: str
    duplicates: str


_PROVIDER = _Paths(
    "/health",
    "/_sim/config",
    "/_sim/reset",
    "/_sim/stats",
    "/_sim/ledger",
    "/_sim/ledger/duplicates",
)
_SINK = _Paths("/health", "/config", "/reset", "/stats", "/ledger", "/ledger/duplicates")


def _decode(response: httpx.Response) -> Any:
    if response.status_code >= 400:
        try:
            message = str(response.json().get("error", response.text))
        except ValueError:
            message = response.text
        raise SimulatorError(response.status_code, message)
    return response.json()


def _ledger_params(
    since: float | None, limit: int | None, offset: int | None, key: str | None
) -> dict[str, str]:
    params = {"since": since, "limit": limit, "offset": offset, "key": key}
    return {k: str(v) for k, v in params.items() if v is not None}


class _AsyncBase:
    PATHS: ClassVar[_Paths]

    def __init__(
        self, base_url: str, *, timeout: float = 10.0, client: httpx.AsyncClient | None = None
    ) -> None:
        self.base_url = base_url.rstrip("/")
        self._own = client is None
        self._http = client or httpx.AsyncClient(timeout=timeout)

    async def __aenter__(self) -> Self:
        return self

    async def __aexit__(
        self, et: type[BaseException] | None, e: BaseException | None, tb: TracebackType | None
    ) -> None:
        await self.aclose()

    async def aclose(self) -> None:
        if self._own:
            await self._http.aclose()

    async def _call(
        self, method: str, path: str, *, json: Any = None, params: dict[str, str] | None = None
    ) -> Any:
        response = await self._http.request(method, self.base_url + path, json=json, params=params)
        return _decode(response)

    async def health(self) -> JSON:
        result: JSON = await self._call("GET", self.PATHS.health)
        return result

    async def wait_ready(
        self,
        timeout: float = 10.0,  # noqa: ASYNC109 - a polling deadline, not a cancel scope
        interval: float = 0.05,
    ) -> None:
        """Poll /health until the server answers (e.g. after starting a subprocess)."""
        deadline = time.monotonic() + timeout
        while True:
            try:
                await self.health()
                return
            except (httpx.TransportError, SimulatorError):
                if time.monotonic() > deadline:
                    raise TimeoutError(f"{self.base_url} not ready after {timeout}s") from None
            await asyncio.sleep(interval)

    async def config(self) -> JSON:
        result: JSON = await self._call("GET", self.PATHS.config)
        return result

    async def set_config(self, **changes: Any) -> JSON:
        """Partial update; returns the whole new config."""
        result: JSON = await self._call("PATCH", self.PATHS.config, json=changes)
        return result

    async def reset(self) -> None:
        await self._call("POST", self.PATHS.reset)

    async def stats(self, *, series: bool = True, seconds: int | None = None) -> JSON:
        params = {"series": "1" if series else "0"}
        if seconds is not None:
            params["seconds"] = str(seconds)
        result: JSON = await self._call("GET", self.PATHS.stats, params=params)
        return result

    async def ledger(
        self,
        since: float | None = None,
        limit: int | None = None,
        *,
        offset: int | None = None,
        key: str | None = None,
    ) -> JSON:
        """``{"total", "matched", "offset", "count", "entries": [...]}``.

        Entries are in acceptance order, filtered by ``received_at > since`` and ``key``.
        """
        params = _ledger_params(since, limit, offset, key)
        result: JSON = await self._call("GET", self.PATHS.ledger, params=params)
        return result

    async def ledger_summary(self, since: float | None = None) -> JSON:
        params = _ledger_params(since, None, None, None)
        params["fields"] = "summary"
        result: JSON = await self._call("GET", self.PATHS.ledger, params=params)
        return result

    async def duplicates(self) -> JSON:
        result: JSON = await self._call("GET", self.PATHS.duplicates)
        return result

    async def wait_for_accepted(
        self,
        n: int,
        timeout: float = 30.0,  # noqa: ASYNC109 - a polling deadline, not a cancel scope
        interval: float = 0.05,
    ) -> JSON:
        """Poll stats until ``accepted >= n``; returns the stats, or raises TimeoutError."""
        deadline = time.monotonic() + timeout
        while True:
            stats = await self.stats(series=False)
            if stats["accepted"] >= n:
                return stats
            if time.monotonic() > deadline:
                raise TimeoutError(f"accepted {stats['accepted']} < {n} after {timeout}s")
            await asyncio.sleep(interval)


class SimulatorClient(_AsyncBase):
    """Control API of the HTTP provider simulator (``simulator.provider``)."""

    PATHS = _PROVIDER

    async def outage(self, duration_s: float, status: int = 503, rate: float = 1.0) -> JSON:
        """Start an outage now; returns it as ``{start, end, status, rate}``."""
        body = {"duration_s": duration_s, "status": status, "rate": rate}
        result: JSON = await self._call("POST", "/_sim/outage", json=body)
        return result

    async def end_outages(self) -> None:
        await self._call("DELETE", "/_sim/outage")


class SmtpSinkClient(_AsyncBase):
    """HTTP API of the SMTP sink (``simulator.smtp_sink``)."""

    PATHS = _SINK


class _SyncBase:
    PATHS: ClassVar[_Paths]

    def __init__(
        self, base_url: str, *, timeout: float = 10.0, client: httpx.Client | None = None
    ) -> None:
        self.base_url = base_url.rstrip("/")
        self._own = client is None
        self._http = client or httpx.Client(timeout=timeout)

    def __enter__(self) -> Self:
        return self

    def __exit__(
        self, et: type[BaseException] | None, e: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.close()

    def close(self) -> None:
        if self._own:
            self._http.close()

    def _call(
        self, method: str, path: str, *, json: Any = None, params: dict[str, str] | None = None
    ) -> Any:
        return _decode(self._http.request(method, self.base_url + path, json=json, params=params))

    def health(self) -> JSON:
        result: JSON = self._call("GET", self.PATHS.health)
        return result

    def wait_ready(self, timeout: float = 10.0, interval: float = 0.05) -> None:
        deadline = time.monotonic() + timeout
        while True:
            try:
                self.health()
                return
            except (httpx.TransportError, SimulatorError):
                if time.monotonic() > deadline:
                    raise TimeoutError(f"{self.base_url} not ready after {timeout}s") from None
            time.sleep(interval)

    def config(self) -> JSON:
        result: JSON = self._call("GET", self.PATHS.config)
        return result

    def set_config(self, **changes: Any) -> JSON:
        result: JSON = self._call("PATCH", self.PATHS.config, json=changes)
        return result

    def reset(self) -> None:
        self._call("POST", self.PATHS.reset)

    def stats(self, *, series: bool = True, seconds: int | None = None) -> JSON:
        params = {"series": "1" if series else "0"}
        if seconds is not None:
            params["seconds"] = str(seconds)
        result: JSON = self._call("GET", self.PATHS.stats, params=params)
        return result

    def ledger(
        self,
        since: float | None = None,
        limit: int | None = None,
        *,
        offset: int | None = None,
        key: str | None = None,
    ) -> JSON:
        params = _ledger_params(since, limit, offset, key)
        result: JSON = self._call("GET", self.PATHS.ledger, params=params)
        return result

    def ledger_summary(self, since: float | None = None) -> JSON:
        params = _ledger_params(since, None, None, None)
        params["fields"] = "summary"
        result: JSON = self._call("GET", self.PATHS.ledger, params=params)
        return result

    def duplicates(self) -> JSON:
        result: JSON = self._call("GET", self.PATHS.duplicates)
        return result

    def wait_for_accepted(self, n: int, timeout: float = 30.0, interval: float = 0.05) -> JSON:
        deadline = time.monotonic() + timeout
        while True:
            stats = self.stats(series=False)
            if stats["accepted"] >= n:
                return stats
            if time.monotonic() > deadline:
                raise TimeoutError(f"accepted {stats['accepted']} < {n} after {timeout}s")
            time.sleep(interval)


class SyncSimulatorClient(_SyncBase):
    PATHS = _PROVIDER

    def outage(self, duration_s: float, status: int = 503, rate: float = 1.0) -> JSON:
        body = {"duration_s": duration_s, "status": status, "rate": rate}
        result: JSON = self._call("POST", "/_sim/outage", json=body)
        return result

    def end_outages(self) -> None:
        self._call("DELETE", "/_sim/outage")


class SyncSmtpSinkClient(_SyncBase):
    PATHS = _SINK
