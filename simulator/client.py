"""Typed clients for the simulators' control APIs (tests and benchmarks).

Async: :class:`SimulatorClient` (HTTP provider) and :class:`SmtpSinkClient`, on
``httpx.AsyncClient``; use ``async with`` or call ``aclose()``. Sync twins:
:class:`SyncSimulatorClient` and :class:`SyncSmtpSinkClient` on ``httpx.Client``.

Every method returns the decoded JSON; a 4xx/5xx raises :class:`SimulatorError`.

The provider's request log (``requests()``: every request to the send path, whatever
its outcome) is what duplicate checks read; the pure helpers below work on its
records: :func:`requests_per_key`, :func:`deliveries_per_key`,
:func:`requests_after_acceptance`, :func:`max_per_second` (from the simulator's own
arrival timestamps, not the test's clock). :data:`NO_IDEMPOTENCY_KEY` is a bearer key
that makes the shared simulator behave like a provider without idempotency keys
(SMTP, SES, SendGrid v3) for that account only.
"""

from __future__ import annotations

import asyncio
import sys
import time
from collections import Counter
from collections.abc import Iterable
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


#: A bearer key the provider simulator treats as an account without idempotency keys
#: (config ``no_idempotency_key_prefixes``, default ["noidem"]); append a test's
#: namespace to keep it readable in logs.
NO_IDEMPOTENCY_KEY = "noidem-key"


def requests_per_key(records: Iterable[JSON]) -> Counter[str]:
    """How many requests reached the provider per key (any outcome)."""
    return Counter(r["key"] for r in records if r.get("key") is not None)


def deliveries_per_key(records: Iterable[JSON]) -> Counter[str]:
    """How many delivered emails each key got (outcome ``accepted``; an idempotent
    replay is not a delivery)."""
    return Counter(
        r["key"] for r in records if r.get("key") is not None and r["outcome"] == "accepted"
    )


def requests_after_acceptance(records: Iterable[JSON]) -> dict[str, list[JSON]]:
    """Per key, the requests that arrived (later in arrival order, at or after the
    time) the key's first delivery was decided; keys with none are left out.

    This is what "no email sent twice" means against a provider without keys: any
    such request would be a second email (or, with keys, a wasted request).
    """
    ordered = sorted(records, key=lambda r: r["seq"])
    first: dict[str, JSON] = {}
    for r in ordered:
        key = r.get("key")
        if key is not None and r["outcome"] == "accepted":
            known = first.get(key)
            if known is None or r["decided_at"] < known["decided_at"]:
                first[key] = r
    after: dict[str, list[JSON]] = {}
    for r in ordered:
        key = r.get("key")
        accepted = first.get(key) if key is not None else None
        if accepted is None or r["seq"] <= accepted["seq"]:
            continue  # ``seq`` is arrival order: these arrived no later than it did
        if r["received_at"] >= accepted["decided_at"]:
            after.setdefault(key, []).append(r)  # type: ignore[arg-type]
    return after


def max_per_second(records: Iterable[JSON], window_s: float = 1.0) -> int:
    """The most requests that arrived within any ``window_s`` (sliding, by the
    simulator's arrival timestamps)."""
    times = sorted(r["received_at"] for r in records)
    best = lo = 0
    for hi, t in enumerate(times):
        while t - times[lo] >= window_s:
            lo += 1
        best = max(best, hi - lo + 1)
    return best


def _requests_params(
    since: float | None, key: str | None, prefix: str | None, summary: bool
) -> dict[str, str]:
    params = {"since": since, "key": key, "prefix": prefix}
    out = {k: str(v) for k, v in params.items() if v is not None}
    if summary:
        out["fields"] = "summary"
    return out


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

    async def requests(
        self, *, since: float | None = None, key: str | None = None, prefix: str | None = None
    ) -> list[JSON]:
        """The request log (every request to the send path), in arrival order."""
        params = _requests_params(since, key, prefix, False)
        result: JSON = await self._call("GET", "/_sim/requests", params=params)
        return list(result["entries"])

    async def requests_summary(
        self, *, since: float | None = None, key: str | None = None, prefix: str | None = None
    ) -> JSON:
        """``{"total", "dropped", "matched", "delivered", "replays", "by_outcome"}``."""
        params = _requests_params(since, key, prefix, True)
        result: JSON = await self._call("GET", "/_sim/requests", params=params)
        return result

    async def supports_request_log(self) -> bool:
        """False for a simulator started before the request log existed."""
        try:
            await self._call("GET", "/_sim/requests", params={"limit": "0"})
        except SimulatorError:
            return False
        return True


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

    def requests(
        self, *, since: float | None = None, key: str | None = None, prefix: str | None = None
    ) -> list[JSON]:
        params = _requests_params(since, key, prefix, False)
        result: JSON = self._call("GET", "/_sim/requests", params=params)
        return list(result["entries"])

    def requests_summary(
        self, *, since: float | None = None, key: str | None = None, prefix: str | None = None
    ) -> JSON:
        params = _requests_params(since, key, prefix, True)
        result: JSON = self._call("GET", "/_sim/requests", params=params)
        return result

    def supports_request_log(self) -> bool:
        try:
            self._call("GET", "/_sim/requests", params={"limit": "0"})
        except SimulatorError:
            return False
        return True


class SyncSmtpSinkClient(_SyncBase):
    PATHS = _SINK
