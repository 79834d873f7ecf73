"""Pieces shared by the provider simulator and the SMTP sink.

Config validation helpers, the recipient reject rule, ledger query parsing and
paging, per-second statistics, JSON responses and the serve-until-signal loop.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import json
import logging
import math
import re
import signal
import sys
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, ClassVar, Protocol, Self, TypeVar

from aiohttp import web
from aiohttp.typedefs import Handler, Middleware

Clock = Callable[[], float]
JSON = dict[str, Any]

log = logging.getLogger("simulator")


class ConfigError(ValueError):
    """A config change (file, CLI or PATCH) is invalid; the message names the key."""


class QueryError(ValueError):
    """A control-API query string or body is invalid."""


# --- JSON -----------------------------------------------------------------------


def dumps(data: Any) -> bytes:
    return json.dumps(data, separators=(",", ":")).encode()


def json_response(
    data: Any, status: int = 200, headers: Mapping[str, str] | None = None
) -> web.Response:
    return web.Response(
        body=dumps(data), status=status, headers=headers, content_type="application/json"
    )


def error_response(message: str, status: int = 400) -> web.Response:
    """The control APIs' error shape: ``{"error": "..."}``."""
    return json_response({"error": message}, status)


async def read_json_object(request: web.Request, *, allow_empty: bool = False) -> JSON:
    """The request body as a JSON object, or :class:`QueryError`."""
    raw = await request.read()
    if not raw.strip():
        if allow_empty:
            return {}
        raise QueryError("request body must be a JSON object")
    try:
        data = json.loads(raw)
    except ValueError as exc:
        raise QueryError(f"request body is not valid JSON: {exc}") from None
    if not isinstance(data, dict):
        raise QueryError("request body must be a JSON object")
    return data


def control_error_middleware(sendgrid_prefix: str | None = None) -> Middleware:
    """Turn aiohttp's plain-text 4xx/5xx (404, 405, 413...) into JSON.

    Paths under ``sendgrid_prefix`` get SendGrid's ``{"errors": [...]}`` shape,
    every other path the control APIs' ``{"error": "..."}`` shape.
    """

    @web.middleware
    async def middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
        try:
            return await handler(request)
        except web.HTTPException as exc:
            if exc.status < 400:
                raise
            headers = {k: v for k, v in exc.headers.items() if k.lower() == "allow"}
            if sendgrid_prefix is not None and request.path.startswith(sendgrid_prefix):
                body: Any = sendgrid_errors(exc.reason.lower())
            else:
                body = {"error": f"{exc.reason}: {request.method} {request.path}"}
            return json_response(body, exc.status, headers)

    return middleware


def sendgrid_errors(message: str, field: str | None = None) -> JSON:
    return {"errors": [{"message": message, "field": field, "help": None}]}


# --- config value converters ------------------------------------------------------
# Each takes (key, raw value) and returns the typed value or raises ConfigError.


def _is_number(value: Any) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool) and math.isfinite(value)


def opt_count(key: str, value: Any) -> int | None:
    """None, or an integer >= 0."""
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int) or value < 0:
        raise ConfigError(f"{key}: must be null or an integer >= 0, got {value!r}")
    return value


def pos_int(key: str, value: Any) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ConfigError(f"{key}: must be an integer >= 1, got {value!r}")
    return value


def opt_int(key: str, value: Any) -> int | None:
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int):
        raise ConfigError(f"{key}: must be null or an integer, got {value!r}")
    return value


def pos_float(key: str, value: Any) -> float:
    if not _is_number(value) or value <= 0:
        raise ConfigError(f"{key}: must be a number > 0, got {value!r}")
    return float(value)


def nonneg_float(key: str, value: Any) -> float:
    if not _is_number(value) or value < 0:
        raise ConfigError(f"{key}: must be a number >= 0, got {value!r}")
    return float(value)


def probability(key: str, value: Any) -> float:
    if not _is_number(value) or not 0 <= value <= 1:
        raise ConfigError(f"{key}: must be a number in [0, 1], got {value!r}")
    return float(value)


def str_tuple(key: str, value: Any) -> tuple[str, ...]:
    if isinstance(value, str) or not isinstance(value, list | tuple):
        raise ConfigError(f"{key}: must be a list of strings, got {value!r}")
    if not all(isinstance(v, str) and v for v in value):
        raise ConfigError(f"{key}: must be a list of non-empty strings, got {value!r}")
    return tuple(value)


def opt_regex(key: str, value: Any) -> str | None:
    if value is None or value == "":
        return None
    if not isinstance(value, str):
        raise ConfigError(f"{key}: must be null or a regex string, got {value!r}")
    try:
        re.compile(value)
    except re.error as exc:
        raise ConfigError(f"{key}: invalid regex {value!r}: {exc}") from None
    return value


def one_of(*choices: str) -> Callable[[str, Any], str]:
    def convert(key: str, value: Any) -> str:
        if value not in choices:
            raise ConfigError(f"{key}: must be one of {', '.join(choices)}, got {value!r}")
        return str(value)

    return convert


def status_code(key: str, value: Any, low: int = 400, high: int = 599) -> int:
    """An HTTP/SMTP status given as int or digit string, within [low, high]."""
    if isinstance(value, str) and value.strip().isdigit():
        value = int(value)
    if isinstance(value, bool) or not isinstance(value, int) or not low <= value <= high:
        raise ConfigError(f"{key}: status must be an integer in [{low}, {high}], got {value!r}")
    return value


def check_keys(where: str, data: Mapping[str, Any], allowed: Iterable[str]) -> None:
    unknown = sorted(set(data) - set(allowed))
    if unknown:
        raise ConfigError(f"unknown {where} keys: {', '.join(unknown)}")


class ConfigBase:
    """Mixin for frozen config dataclasses: validated partial updates and JSON output.

    Subclasses list one converter per field in ``CONVERTERS``.
    """

    __slots__ = ()
    CONVERTERS: ClassVar[dict[str, Callable[[str, Any], Any]]] = {}

    def updated(self, changes: Mapping[str, Any]) -> Self:
        """A copy with ``changes`` applied; ConfigError names unknown or bad keys."""
        check_keys("config", changes, self.CONVERTERS)
        values = {k: self.CONVERTERS[k](k, v) for k, v in changes.items()}
        return dataclasses.replace(self, **values)  # type: ignore[type-var]

    @classmethod
    def from_mapping(cls, data: Mapping[str, Any]) -> Self:
        return cls().updated(data)

    def to_json(self) -> JSON:
        out: JSON = {}
        for f in dataclasses.fields(self):  # type: ignore[arg-type]
            value = getattr(self, f.name)
            if isinstance(value, tuple):
                value = [v.to_json() if hasattr(v, "to_json") else v for v in value]
            elif isinstance(value, dict):
                value = {str(k): v for k, v in sorted(value.items())}
            out[f.name] = value
        return out

    def non_defaults(self) -> JSON:
        """Keys whose values differ from the defaults (for the start log line)."""
        default = type(self)().to_json()
        return {k: v for k, v in self.to_json().items() if default.get(k) != v}


# --- reject rule --------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class RejectRule:
    """Which recipient addresses are refused permanently.

    An address matches when its local part starts with one of ``local_prefixes``,
    its domain is (or is a subdomain of) one of ``domains``, or ``regex`` is found
    anywhere in it (``re.search``, case-insensitive). All comparisons ignore case.
    """

    local_prefixes: tuple[str, ...] = ("reject",)
    domains: tuple[str, ...] = ("invalid.example",)
    regex: str | None = None

    def compile(self) -> Callable[[str], bool]:
        prefixes = tuple(p.lower() for p in self.local_prefixes)
        domains = frozenset(d.lower().strip(".") for d in self.domains)
        suffixes = tuple("." + d for d in domains)
        pattern = re.compile(self.regex, re.IGNORECASE) if self.regex else None

        def matches(address: str) -> bool:
            addr = address.strip().lower()
            local, _, domain = addr.rpartition("@")
            if prefixes and local.startswith(prefixes):
                return True
            if domain in domains or (suffixes and domain.endswith(suffixes)):
                return True
            return pattern is not None and pattern.search(address) is not None

        return matches


# --- ledger queries -------------------------------------------------------------------


class LedgerItem(Protocol):
    @property
    def key(self) -> str | None: ...

    @property
    def received_at(self) -> float: ...


E = TypeVar("E", bound=LedgerItem)


@dataclass(frozen=True, slots=True)
class LedgerQuery:
    """``since`` (received_at >), ``key`` (exact), ``prefix`` (of the key), ``limit``,
    ``offset``, ``fields=summary``."""

    since: float | None = None
    key: str | None = None
    limit: int | None = None
    offset: int = 0
    summary: bool = False
    prefix: str | None = None

    @classmethod
    def parse(cls, query: Mapping[str, str]) -> LedgerQuery:
        unknown = sorted(set(query) - {"since", "key", "prefix", "limit", "offset", "fields"})
        if unknown:
            raise QueryError(f"unknown query parameters: {', '.join(unknown)}")
        fields = query.get("fields", "full")
        if fields not in ("full", "summary"):
            raise QueryError(f"fields must be 'full' or 'summary', got {fields!r}")
        since = None
        if "since" in query:
            try:
                since = float(query["since"])
            except ValueError:
                raise QueryError(f"since must be a unix time, got {query['since']!r}") from None
        return cls(
            since=since,
            key=query.get("key"),
            limit=_query_int(query, "limit"),
            offset=_query_int(query, "offset") or 0,
            summary=fields == "summary",
            prefix=query.get("prefix") or None,
        )

    def select(self, entries: Sequence[E]) -> list[E]:
        """Entries matching ``since``/``key``, in acceptance order (not paged)."""
        if self.since is None and self.key is None and self.prefix is None:
            return list(entries)
        since, key, prefix = self.since, self.key, self.prefix
        return [
            e
            for e in entries
            if (since is None or e.received_at > since)
            and (key is None or e.key == key)
            and (prefix is None or (e.key is not None and e.key.startswith(prefix)))
        ]

    def page(self, matched: list[E]) -> list[E]:
        end = None if self.limit is None else self.offset + self.limit
        return matched[self.offset : end]


def _query_int(query: Mapping[str, str], name: str) -> int | None:
    if name not in query:
        return None
    try:
        value = int(query[name])
    except ValueError:
        raise QueryError(f"{name} must be an integer >= 0, got {query[name]!r}") from None
    if value < 0:
        raise QueryError(f"{name} must be an integer >= 0, got {value}")
    return value


async def ledger_response(
    request: web.Request, head: JSON, entries: Sequence[Any], chunk: int = 2000
) -> web.StreamResponse:
    """``head`` plus ``"entries": [e.to_json(), ...]`` as one JSON object.

    Large pages are written in chunks so a full 300k-entry dump (seconds of CPU)
    does not stall traffic on the same loop.
    """
    if len(entries) <= chunk:
        return json_response({**head, "entries": [e.to_json() for e in entries]})
    response = web.StreamResponse(headers={"Content-Type": "application/json"})
    await response.prepare(request)
    await response.write(dumps(head)[:-1] + b',"entries":[')
    for i in range(0, len(entries), chunk):
        part = dumps([e.to_json() for e in entries[i : i + chunk]])[1:-1]
        await response.write((b"," if i else b"") + part)
    await response.write(b"]}")
    await response.write_eof()
    return response


# --- statistics -----------------------------------------------------------------------


class SecondBucket:
    """Counts for the requests that arrived in one wall-clock second."""

    __slots__ = ("accepted", "by_status", "requests")

    def __init__(self) -> None:
        self.requests = 0
        self.accepted = 0
        self.by_status: dict[int, int] = {}


class StatsBook:
    """Totals plus a per-second series, keyed by the second a request arrived.

    ``names`` renames the three counters in JSON (the SMTP sink says messages/by_code).
    """

    def __init__(
        self, clock: Clock, names: tuple[str, str, str] = ("requests", "accepted", "by_status")
    ) -> None:
        self._clock = clock
        self._names = names
        self.reset()

    def reset(self) -> None:
        self.started_at = self._clock()
        self.requests = 0
        self.accepted = 0
        self.duplicates = 0
        self.by_status: dict[int, int] = {}
        self.seconds: dict[int, SecondBucket] = {}

    def arrive(self, now: float) -> SecondBucket:
        """Count one arrival; returns its bucket for :meth:`finish`."""
        second = int(now)
        bucket = self.seconds.get(second)
        if bucket is None:
            bucket = self.seconds[second] = SecondBucket()
        bucket.requests += 1
        self.requests += 1
        return bucket

    def finish(self, bucket: SecondBucket, status: int, *, accepted: bool = False) -> None:
        bucket.by_status[status] = bucket.by_status.get(status, 0) + 1
        self.by_status[status] = self.by_status.get(status, 0) + 1
        if accepted:
            bucket.accepted += 1
            self.accepted += 1

    def count(self, now: float, status: int) -> None:
        """Count a status that is not the outcome of an arrival (an SMTP RCPT reply)."""
        second = int(now)
        bucket = self.seconds.get(second)
        if bucket is None:
            bucket = self.seconds[second] = SecondBucket()
        bucket.by_status[status] = bucket.by_status.get(status, 0) + 1
        self.by_status[status] = self.by_status.get(status, 0) + 1

    def totals_json(self) -> JSON:
        req, acc, by = self._names
        return {
            "started_at": self.started_at,
            "now": self._clock(),
            req: self.requests,
            acc: self.accepted,
            by: {str(k): v for k, v in sorted(self.by_status.items())},
        }

    def series_json(self, last_seconds: int | None = None) -> list[JSON]:
        req, acc, by = self._names
        first = None if last_seconds is None else int(self._clock()) - last_seconds + 1
        return [
            {
                "second": second,
                req: b.requests,
                acc: b.accepted,
                by: {str(k): v for k, v in sorted(b.by_status.items())},
            }
            for second, b in sorted(self.seconds.items())
            if first is None or second >= first
        ]


def parse_stats_query(query: Mapping[str, str]) -> tuple[bool, int | None]:
    """``series=0`` drops the per-second series; ``seconds=N`` keeps only the last N."""
    unknown = sorted(set(query) - {"series", "seconds"})
    if unknown:
        raise QueryError(f"unknown query parameters: {', '.join(unknown)}")
    series = query.get("series", "1").lower() not in ("0", "false", "no")
    return series, _query_int(query, "seconds")


# --- running --------------------------------------------------------------------------


def setup_logging(level: str) -> None:
    logging.basicConfig(
        stream=sys.stderr, level=level.upper(), format="%(asctime)s %(levelname)s %(message)s"
    )


def load_json_file(path: str | None) -> JSON:
    if path is None:
        return {}
    with open(path, encoding="utf-8") as fh:
        data = json.load(fh)
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: config file must hold a JSON object")
    return data


def parse_assignments(items: Sequence[str] | None) -> JSON:
    """``--set key=<json>`` pairs; a value that is not JSON is taken as a string."""
    out: JSON = {}
    for item in items or ():
        key, sep, raw = item.partition("=")
        if not sep or not key:
            raise ConfigError(f"--set expects key=value, got {item!r}")
        try:
            out[key] = json.loads(raw)
        except ValueError:
            out[key] = raw
    return out


async def wait_for_signal() -> None:
    """Block until SIGINT or SIGTERM."""
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        with contextlib.suppress(NotImplementedError):
            loop.add_signal_handler(sig, stop.set)
    await stop.wait()


async def start_site(app: web.Application, host: str, port: int) -> tuple[web.AppRunner, int]:
    """Serve ``app`` without access logs; returns the runner and the bound port."""
    runner = web.AppRunner(app, access_log=None, handle_signals=False)
    await runner.setup()
    site = web.TCPSite(runner, host, port, backlog=2048)
    await site.start()
    server = site._server  # the bound asyncio.Server, to learn the port when 0 was asked
    sockets = getattr(server, "sockets", None) or []
    bound = sockets[0].getsockname()[1] if sockets else port
    return runner, int(bound)
