"""HTTP email provider simulator shaped like SendGrid v3 Mail Send.

Run::

    python -m simulator.provider --host 127.0.0.1 --port 8030 [--config sim.json]
        [--quota N] [--window-s S] [--daily-quota N] [--latency-ms A]
        [--latency-jitter-ms J] [--latency-dist uniform|lognormal] [--error-rate 500=0.2]
        [--api-key KEY] [--reject-regex RE] [--seed N] [--set key=<json>]

Precedence: defaults < ``--config`` file < CLI flags. ``PATCH /_sim/config`` changes
any key at run time (partial, validated as a whole; unknown keys give 400).

Config keys (JSON):

``api_keys`` (list of str, default [])
    Accepted bearer keys. Empty: any non-empty key is accepted; else others get 403.
``quota`` (int or null, default null = unlimited), ``window_s`` (float, default 1.0)
    At most ``quota`` requests per fixed window; window k covers
    [k*window_s, (k+1)*window_s) of the unix clock. Above it: 429 + ``Retry-After``.
``daily_quota`` (int or null)
    Same per UTC day. ``X-RateLimit-Remaining`` shows the smaller of the two.
``latency_ms``, ``latency_jitter_ms`` (float >= 0, default 0)
    Delay before answering (``asyncio.sleep``): ``latency_ms`` plus uniform
    [0, jitter). With ``latency_dist: "lognormal"`` the base part is instead
    ``latency_ms * exp(N(0, latency_sigma))`` (median ``latency_ms``); jitter still adds.
``latency_dist`` ("uniform" | "lognormal"), ``latency_sigma`` (float > 0, default 0.5)
``error_rates`` (map status -> probability, e.g. {"500": 0.2, "503": 0.05})
    Injected failures (400..599, sum <= 1) for requests that passed auth and validation.
``outages`` (list of {"start": unix, "end": unix, "status": 503, "rate": 1.0})
    While start <= now < end, that fraction of requests fail with that status.
    ``POST /_sim/outage`` appends one starting now; ``POST /_sim/reset`` clears them.
``reject_local_prefixes`` (list, default ["reject"]), ``reject_domains`` (list,
default ["invalid.example"]), ``reject_regex`` (str or null)
    Recipients matching any rule get a permanent 400 on ``personalizations.0.to.0.email``.
``seed`` (int or null)
    Seeds the RNG for error, outage and latency draws (reseeded on reset).
``max_body_bytes`` (int, default 30 MiB): larger bodies get 413.
``idempotency`` (bool, default true)
    False: the provider has no idempotency keys (like SMTP, SES or SendGrid v3): every
    accepted request is a delivered email with its own ledger entry, a second request
    for a key is delivered again (flagged ``replay``), nothing answers
    ``Idempotent-Replayed``.
``no_idempotency_key_prefixes`` (list, default ["noidem"])
    Requests whose bearer API key starts with one of these get the no-idempotency
    behaviour whatever ``idempotency`` says. This selects the mode per account (per
    test) on one shared simulator, without changing its config.
``request_log_max`` (int, default 2,000,000)
    Most request records kept; above it the oldest tenth is dropped (counted).

Request handling order for ``POST /v3/mail/send`` (arrival time = ``received_at``):
auth (401/403) -> rate limit (429, answered at once) -> size (413) -> JSON and
validation (400) -> permanent rejection (400) -> outage / injected error draw ->
latency sleep -> injected error response, or acceptance. Acceptance dedupes on the
``Idempotency-Key`` header, else ``custom_args.event_id``: a known key answers 202
with the first ``X-Message-Id`` and ``Idempotent-Replayed: true`` and adds no entry.
Only 202s create ledger entries; rate-limit, validation, injected errors don't.
Without idempotency (see ``idempotency``) every 202 creates an entry.

Every request to the send path, whatever its outcome, also goes to the request log
(``GET /_sim/requests``): key (the ``Idempotency-Key`` header, else
``custom_args.event_id`` of a valid body; requests refused before the body is read,
401/403/429/413, only know the header), arrival and decision times, status, outcome,
the mode it was handled in, and ``replay``: the key already had a delivered email
when the request was decided.

Control API (JSON; errors are ``{"error": "..."}`` with a 4xx):

- ``GET /health`` -> ``{"ok": true}``
- ``GET /_sim/config``, ``PATCH /_sim/config`` -> the whole config
- ``POST /_sim/outage`` ``{"duration_s", "status"=503, "rate"=1.0, "start_in_s"=0}``;
  ``DELETE /_sim/outage`` ends all outages
- ``POST /_sim/reset``: clears ledger, stats, outages and rate-limit counters
- ``GET /_sim/stats[?series=0][&seconds=N]``: totals and a per-second series
  keyed by arrival second
- ``GET /_sim/ledger[?since=T][&key=K][&limit=N][&offset=N][&fields=summary]``
- ``GET /_sim/ledger/duplicates``: entries with ``requests > 1`` or ``replay``
- ``GET /_sim/requests[?since=T][&key=K][&prefix=P][&limit=N][&offset=N][&fields=summary]``
  the request log in arrival order (``since``, ``key``, ``prefix`` as for the ledger)

Shapes::

    stats:  {"started_at", "now", "requests", "accepted" (= ledger entries),
             "duplicate_requests", "in_flight", "ledger_size", "by_status": {"202": n},
             "per_second": [{"second", "requests", "accepted", "by_status"}]}
    ledger: {"total", "matched", "offset", "count", "entries": [{"key", "message_id",
             "to", "from", "subject", "custom_args", "received_at", "accepted_at",
             "requests"}]}      (fields=summary: {"total", "matched", "duplicates",
             "requests"})
    duplicates: {"count", "duplicate_requests", "entries": [...]}
    requests: {"total", "dropped", "matched", "offset", "count", "entries": [{"seq", "key",
             "received_at", "decided_at", "status", "outcome", "replay", "idempotent",
             "message_id"}]}   (fields=summary: {"total", "dropped", "matched",
             "delivered", "replays", "by_outcome"})
    outcome: in_flight (not answered yet) | accepted (a delivered email) |
             replayed (202, deduplicated) | unauthorized | forbidden | rate_limited |
             too_large | invalid | rejected | failed (injected error or outage)
"""

from __future__ import annotations

import argparse
import asyncio
import dataclasses
import json
import logging
import math
import random
import re
import secrets
import sys
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from http import HTTPStatus
from typing import Any, TypeGuard

from aiohttp import web

from simulator.common import (
    JSON,
    Clock,
    ConfigBase,
    ConfigError,
    LedgerQuery,
    QueryError,
    RejectRule,
    StatsBook,
    check_keys,
    control_error_middleware,
    dumps,
    error_response,
    json_response,
    ledger_response,
    load_json_file,
    nonneg_float,
    one_of,
    opt_count,
    opt_int,
    opt_regex,
    parse_assignments,
    parse_stats_query,
    pos_float,
    pos_int,
    probability,
    read_json_object,
    sendgrid_errors,
    setup_logging,
    start_site,
    status_code,
    str_tuple,
    wait_for_signal,
)

log = logging.getLogger("simulator.provider")

MAIL_SEND_PATH = "/v3/mail/send"
DAY_S = 86_400.0


# --- config -------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Outage:
    start: float
    end: float
    status: int = 503
    rate: float = 1.0

    def to_json(self) -> JSON:
        return dataclasses.asdict(self)


def _error_rates(key: str, value: Any) -> dict[int, float]:
    if not isinstance(value, Mapping):
        raise ConfigError(f"{key}: must be a map of status -> probability, got {value!r}")
    rates = {status_code(key, s): probability(f"{key}.{s}", p) for s, p in value.items()}
    if sum(rates.values()) > 1 + 1e-9:
        raise ConfigError(f"{key}: probabilities add up to more than 1")
    return rates


def _outage(key: str, value: Any) -> Outage:
    if not isinstance(value, Mapping):
        raise ConfigError(f"{key}: must be an object, got {value!r}")
    check_keys(key, value, ("start", "end", "status", "rate"))
    if "start" not in value or "end" not in value:
        raise ConfigError(f"{key}: needs start and end (unix seconds)")
    start = nonneg_float(f"{key}.start", value["start"])
    end = nonneg_float(f"{key}.end", value["end"])
    if end <= start:
        raise ConfigError(f"{key}: end must be after start")
    return Outage(
        start,
        end,
        status_code(f"{key}.status", value.get("status", 503)),
        probability(f"{key}.rate", value.get("rate", 1.0)),
    )


def _outages(key: str, value: Any) -> tuple[Outage, ...]:
    if not isinstance(value, list | tuple):
        raise ConfigError(f"{key}: must be a list of outages, got {value!r}")
    return tuple(
        v if isinstance(v, Outage) else _outage(f"{key}.{i}", v) for i, v in enumerate(value)
    )


@dataclass(frozen=True, slots=True)
class FailRule:
    """Fail requests whose recipient matches ``regex``: the first ``times`` of each
    recipient (``None``: always) get ``status``. Drives per-message retry tests."""

    regex: str
    times: int | None = None
    status: int = 500

    def to_json(self) -> JSON:
        return dataclasses.asdict(self)


def _fail_rules(key: str, value: Any) -> tuple[FailRule, ...]:
    if not isinstance(value, list | tuple):
        raise ConfigError(f"{key}: must be a list of rules, got {value!r}")
    rules = []
    for i, v in enumerate(value):
        if isinstance(v, FailRule):
            rules.append(v)
            continue
        if not isinstance(v, Mapping) or set(v) - {"regex", "times", "status"}:
            raise ConfigError(f"{key}.{i}: must be {{regex, times, status}}, got {v!r}")
        regex = opt_regex(f"{key}.{i}.regex", v.get("regex"))
        if regex is None:
            raise ConfigError(f"{key}.{i}.regex: required")
        times = opt_count(f"{key}.{i}.times", v.get("times"))
        rules.append(FailRule(regex, times, status_code(f"{key}.{i}.status", v.get("status", 500))))
    return tuple(rules)


def _bool(key: str, value: Any) -> bool:
    if not isinstance(value, bool):
        raise ConfigError(f"{key}: must be true or false, got {value!r}")
    return value


@dataclass(frozen=True, slots=True)
class ProviderConfig(ConfigBase):
    api_keys: tuple[str, ...] = ()
    quota: int | None = None
    window_s: float = 1.0
    daily_quota: int | None = None
    latency_ms: float = 0.0
    latency_jitter_ms: float = 0.0
    latency_dist: str = "uniform"
    latency_sigma: float = 0.5
    error_rates: dict[int, float] = field(default_factory=dict)
    outages: tuple[Outage, ...] = ()
    reject_local_prefixes: tuple[str, ...] = ("reject",)
    reject_domains: tuple[str, ...] = ("invalid.example",)
    reject_regex: str | None = None
    fail_rules: tuple[FailRule, ...] = ()
    seed: int | None = None
    max_body_bytes: int = 30 * 1024 * 1024
    idempotency: bool = True
    no_idempotency_key_prefixes: tuple[str, ...] = ("noidem",)
    request_log_max: int = 2_000_000


# One converter per field; set after the class body: a ClassVar annotation inside a
# dataclass is misread when this module runs as __main__ under a wrapper (cProfile).
ProviderConfig.CONVERTERS = {
    "api_keys": str_tuple,
    "quota": opt_count,
    "window_s": pos_float,
    "daily_quota": opt_count,
    "latency_ms": nonneg_float,
    "latency_jitter_ms": nonneg_float,
    "latency_dist": one_of("uniform", "lognormal"),
    "latency_sigma": pos_float,
    "error_rates": _error_rates,
    "outages": _outages,
    "reject_local_prefixes": str_tuple,
    "reject_domains": str_tuple,
    "reject_regex": opt_regex,
    "fail_rules": _fail_rules,
    "seed": opt_int,
    "max_body_bytes": pos_int,
    "idempotency": _bool,
    "no_idempotency_key_prefixes": str_tuple,
    "request_log_max": pos_int,
}


# --- ledger ---------------------------------------------------------------------------


class LedgerEntry:
    """One accepted message. Slots keep 300k entries to a few hundred MB at most."""

    __slots__ = (
        "accepted_at",
        "custom_args",
        "from_",
        "key",
        "message_id",
        "received_at",
        "replay",
        "requests",
        "subject",
        "to",
    )

    def __init__(
        self,
        key: str | None,
        message_id: str,
        to: str,
        from_: str,
        subject: str,
        custom_args: dict[str, str],
        received_at: float,
        accepted_at: float,
    ) -> None:
        self.key = key
        self.message_id = message_id
        self.to = to
        self.from_ = from_
        self.subject = subject
        self.custom_args = custom_args
        self.received_at = received_at
        self.accepted_at = accepted_at
        self.requests = 1
        self.replay = False  # no-idempotency mode: this key had been delivered before

    def to_json(self) -> JSON:
        return {
            "key": self.key,
            "message_id": self.message_id,
            "to": self.to,
            "from": self.from_,
            "subject": self.subject,
            "custom_args": self.custom_args,
            "received_at": self.received_at,
            "accepted_at": self.accepted_at,
            "requests": self.requests,
            "replay": self.replay,
        }


class RequestRecord:
    """One request to the send path, whatever its outcome (the request log)."""

    __slots__ = (
        "decided_at",
        "idempotent",
        "key",
        "message_id",
        "outcome",
        "received_at",
        "replay",
        "seq",
        "status",
    )

    def __init__(self, seq: int, received_at: float) -> None:
        self.seq = seq
        self.received_at = received_at
        self.key: str | None = None
        self.decided_at = received_at
        self.status = 0
        self.outcome = "in_flight"
        self.replay = False
        self.idempotent = True
        self.message_id: str | None = None

    def to_json(self) -> JSON:
        return {
            "seq": self.seq,
            "key": self.key,
            "received_at": self.received_at,
            "decided_at": self.decided_at,
            "status": self.status,
            "outcome": self.outcome,
            "replay": self.replay,
            "idempotent": self.idempotent,
            "message_id": self.message_id,
        }


# --- request validation -------------------------------------------------------------


@dataclass(slots=True)
class Mail:
    """The parts of a valid Mail Send body that the ledger keeps."""

    recipients: list[tuple[str, str]]  # (field path, address)
    from_: str
    subject: str
    custom_args: dict[str, str]


# local@domain, domain of two or more dot-separated labels; no spaces, brackets or quotes.
_ADDRESS = re.compile(r'[^@\s<>,;"]+@[^@\s<>,;".]+(?:\.[^@\s<>,;".]+)+')


def _valid_address(value: Any) -> TypeGuard[str]:
    return isinstance(value, str) and len(value) <= 320 and _ADDRESS.fullmatch(value) is not None


def _string_map(value: Any, path: str, errors: list[JSON]) -> dict[str, str]:
    if value is None:
        return {}
    if not isinstance(value, dict):
        errors.append({"message": f"{path} must be an object of strings", "field": path})
        return {}
    out: dict[str, str] = {}
    for k, v in value.items():
        if not isinstance(v, str):
            errors.append({"message": f"{path} values must be strings", "field": f"{path}.{k}"})
        else:
            out[sys.intern(k)] = v  # interned keys: the ledger holds many equal ones
    return out


def validate_mail(body: Any) -> tuple[Mail | None, list[JSON]]:
    """Check a Mail Send body the way SendGrid does; returns (mail, errors)."""
    errors: list[JSON] = []
    if not isinstance(body, dict):
        return None, [{"message": "request body must be a JSON object", "field": None}]
    recipients: list[tuple[str, str]] = []
    subject: Any = body.get("subject")
    custom_args = _string_map(body.get("custom_args"), "custom_args", errors)
    _string_map(body.get("headers"), "headers", errors)

    pers = body.get("personalizations")
    if not isinstance(pers, list) or not pers:
        errors.append(
            {
                "message": "The personalizations field is required and must have at least "
                "one personalization.",
                "field": "personalizations",
            }
        )
    else:
        for i, p in enumerate(pers):
            if not isinstance(p, dict):
                errors.append(
                    {
                        "message": "personalization must be an object",
                        "field": f"personalizations.{i}",
                    }
                )
                continue
            to = p.get("to")
            if not isinstance(to, list) or not to:
                errors.append(
                    {
                        "message": "The to array is required for all personalization objects, "
                        "and must have at least one email object with a valid email address.",
                        "field": f"personalizations.{i}.to",
                    }
                )
                continue
            for j, r in enumerate(to):
                path = f"personalizations.{i}.to.{j}.email"
                email = r.get("email") if isinstance(r, dict) else None
                if not _valid_address(email):
                    errors.append({"message": "Does not contain a valid address.", "field": path})
                else:
                    recipients.append((path, email))
            if i == 0:
                subject = p.get("subject", subject)  # personalization subject wins
                custom_args.update(
                    _string_map(p.get("custom_args"), f"personalizations.{i}.custom_args", errors)
                )

    sender = body.get("from")
    from_email = sender.get("email") if isinstance(sender, dict) else None
    if not _valid_address(from_email):
        errors.append(
            {"message": "The from email does not contain a valid address.", "field": "from.email"}
        )
    if not isinstance(subject, str) or not subject.strip():
        errors.append(
            {
                "message": "The subject is required. You can get around this requirement if you "
                "use a template with a subject defined or if every personalization has a "
                "subject defined.",
                "field": "subject",
            }
        )

    content = body.get("content")
    if not isinstance(content, list) or not content:
        errors.append(
            {
                "message": "Unless a valid template_id is provided, the content parameter is "
                "required. There must be at least one defined content block.",
                "field": "content",
            }
        )
    else:
        for i, c in enumerate(content):
            ctype = c.get("type") if isinstance(c, dict) else None
            value = c.get("value") if isinstance(c, dict) else None
            if not isinstance(ctype, str) or "/" not in ctype:
                errors.append(
                    {"message": "Content type must be a MIME type.", "field": f"content.{i}.type"}
                )
            if not isinstance(value, str) or not value:
                errors.append(
                    {
                        "message": "The content value must be a string at least one character "
                        "in length.",
                        "field": f"content.{i}.value",
                    }
                )

    if errors:
        return None, errors
    assert isinstance(from_email, str) and isinstance(subject, str)
    return Mail(recipients, sys.intern(from_email), subject, custom_args), []


# --- state --------------------------------------------------------------------------


class ProviderState:
    """Config, ledger, statistics and rate-limit counters of one simulator."""

    def __init__(self, config: ProviderConfig, clock: Clock = time.time) -> None:
        self.clock = clock
        self.stats = StatsBook(clock)
        self.ledger: list[LedgerEntry] = []
        self.by_key: dict[str, LedgerEntry] = {}
        self.requests: list[RequestRecord] = []
        self.requests_seq = 0
        self.requests_dropped = 0
        self.in_flight = 0
        self.config = config
        self.rng = random.Random(config.seed)
        self._derive()
        self._reset_counters()

    def _derive(self) -> None:
        cfg = self.config
        self.api_keys = frozenset(cfg.api_keys)
        self.no_idem_prefixes = tuple(p for p in cfg.no_idempotency_key_prefixes if p)
        self.rejects = RejectRule(
            cfg.reject_local_prefixes, cfg.reject_domains, cfg.reject_regex
        ).compile()
        # Cumulative thresholds for one uniform draw: [(upper bound, status), ...].
        self.fail_rules = [(re.compile(r.regex), r) for r in cfg.fail_rules]
        acc = 0.0
        self.error_thresholds: list[tuple[float, int]] = []
        for status, rate in sorted(cfg.error_rates.items()):
            if rate > 0:
                acc += rate
                self.error_thresholds.append((acc, status))

    def _reset_counters(self) -> None:
        self.fail_counts: dict[tuple[int, str], int] = {}
        self.win_index = self.day_index = -1
        self.win_used = self.day_used = 0

    def set_config(self, config: ProviderConfig) -> None:
        if config.seed != self.config.seed:
            self.rng = random.Random(config.seed)
        self.config = config
        self._derive()

    def reset(self) -> None:
        self.ledger = []
        self.by_key = {}
        self.requests = []
        self.requests_dropped = 0
        self.stats.reset()
        self._reset_counters()
        self.config = dataclasses.replace(self.config, outages=())
        self.rng = random.Random(self.config.seed)
        self._derive()

    def add_outage(self, outage: Outage) -> None:
        now = self.clock()
        live = tuple(o for o in self.config.outages if o.end > now)
        self.config = dataclasses.replace(self.config, outages=(*live, outage))

    # --- rate limiting ---

    def rate_limit(self, now: float, consume: bool) -> tuple[float | None, dict[str, str] | None]:
        """Returns (retry_at if over a limit else None, X-RateLimit-* headers or None).

        ``consume`` counts the request when it is allowed (auth failures only peek).
        """
        cfg = self.config
        limits: list[tuple[int, int, float]] = []  # (limit, used, window end)
        if cfg.quota is not None:
            k = math.floor(now / cfg.window_s)
            if k != self.win_index:
                self.win_index, self.win_used = k, 0
            limits.append((cfg.quota, self.win_used, (k + 1) * cfg.window_s))
        if cfg.daily_quota is not None:
            d = math.floor(now / DAY_S)
            if d != self.day_index:
                self.day_index, self.day_used = d, 0
            limits.append((cfg.daily_quota, self.day_used, (d + 1) * DAY_S))
        if not limits:
            return None, None
        blocked = [end for limit, used, end in limits if used >= limit]
        retry_at = max(blocked) if blocked else None
        taken = 0
        if consume and retry_at is None:
            taken = 1
            self.win_used += 1
            self.day_used += 1
        # The binding limit (least remaining) sets Remaining and Reset.
        remaining, reset_at = min((limit - used - taken, end) for limit, used, end in limits)
        if retry_at is not None:
            reset_at = retry_at
        headers = {
            "X-RateLimit-Limit": str(limits[0][0]),
            "X-RateLimit-Remaining": str(max(0, remaining)),
            "X-RateLimit-Reset": str(math.ceil(reset_at)),
        }
        return retry_at, headers

    # --- injection draws ---

    def rule_failure(self, address: str) -> int | None:
        """Status from the first matching fail rule that still has failures left."""
        for i, (pattern, rule) in enumerate(self.fail_rules):
            if pattern.search(address):
                n = self.fail_counts.get((i, address), 0)
                if rule.times is None or n < rule.times:
                    self.fail_counts[(i, address)] = n + 1
                    return rule.status
        return None

    def draw_failure(self, now: float) -> int | None:
        """Status of an injected failure for a request arriving at ``now``, or None."""
        for o in self.config.outages:
            if o.start <= now < o.end and (o.rate >= 1 or self.rng.random() < o.rate):
                return o.status
        if self.error_thresholds:
            r = self.rng.random()
            for upper, status in self.error_thresholds:
                if r < upper:
                    return status
        return None

    def draw_latency(self) -> float:
        """Seconds to wait before answering."""
        cfg = self.config
        ms = cfg.latency_ms
        if ms and cfg.latency_dist == "lognormal":
            ms *= self.rng.lognormvariate(0.0, cfg.latency_sigma)
        if cfg.latency_jitter_ms:
            ms += self.rng.uniform(0.0, cfg.latency_jitter_ms)
        return ms / 1000.0

    # --- acceptance ---

    def log_request(self, received_at: float) -> RequestRecord:
        """A new request-log record (arrival order); the oldest tenth goes when full."""
        self.requests_seq += 1
        record = RequestRecord(self.requests_seq, received_at)
        if len(self.requests) >= self.config.request_log_max:
            drop = max(1, len(self.requests) // 10)
            del self.requests[:drop]
            self.requests_dropped += drop
        self.requests.append(record)
        return record

    def idempotent_for(self, api_key: str) -> bool:
        """Whether requests with this bearer key are deduplicated by idempotency key."""
        if not self.config.idempotency:
            return False
        return not (self.no_idem_prefixes and api_key.startswith(self.no_idem_prefixes))

    def accept(
        self, key: str | None, mail: Mail, received_at: float, idempotent: bool = True
    ) -> tuple[LedgerEntry, bool]:
        """Record an accepted request; returns (entry, replay).

        Idempotent: a known key is a replay that delivers nothing (the first entry).
        Not idempotent: every call is a delivery with its own entry; ``replay`` says
        that the key had been delivered before.
        """
        known = self.by_key.get(key) if key is not None else None
        if known is not None and idempotent:
            known.requests += 1
            self.stats.duplicates += 1
            return known, True
        entry = LedgerEntry(
            key,
            secrets.token_urlsafe(16),
            mail.recipients[0][1],
            mail.from_,
            mail.subject,
            mail.custom_args,
            received_at,
            self.clock(),
        )
        self.ledger.append(entry)
        if known is not None:
            entry.replay = True
            self.stats.duplicates += 1
            return entry, True
        if key is not None:
            self.by_key[key] = entry
        return entry, False

    def stats_json(self, series: bool = True, last_seconds: int | None = None) -> JSON:
        out = self.stats.totals_json()
        out["duplicate_requests"] = self.stats.duplicates
        out["in_flight"] = self.in_flight
        out["ledger_size"] = len(self.ledger)
        if series:
            out["per_second"] = self.stats.series_json(last_seconds)
        return out


# --- HTTP handlers --------------------------------------------------------------------

STATE_KEY = web.AppKey("provider_state", ProviderState)

_UNAUTHORIZED = dumps(sendgrid_errors("authorization required"))
_FORBIDDEN = dumps(sendgrid_errors("access forbidden"))
_TOO_MANY = dumps(sendgrid_errors("too many requests"))
_TOO_LARGE = dumps(sendgrid_errors("request body too large"))
_BAD_JSON = dumps(sendgrid_errors("The request body must be valid JSON."))


def _sendgrid(status: int, body: bytes, headers: dict[str, str] | None = None) -> web.Response:
    return web.Response(status=status, body=body, headers=headers, content_type="application/json")


def _injected_error(status: int, headers: dict[str, str] | None) -> web.Response:
    try:
        phrase = HTTPStatus(status).phrase.lower()
    except ValueError:
        phrase = "error"
    if status == 429:
        headers = {**(headers or {}), "Retry-After": "1"}
    return _sendgrid(status, dumps(sendgrid_errors(phrase)), headers)


async def mail_send(request: web.Request) -> web.StreamResponse:
    state = request.app[STATE_KEY]
    now = state.clock()
    bucket = state.stats.arrive(now)
    record = state.log_request(now)
    record.key = request.headers.get("Idempotency-Key") or None
    state.in_flight += 1
    try:
        response, outcome = await _mail_send(state, request, now, record)
    finally:
        state.in_flight -= 1
    record.status = response.status
    record.outcome = outcome
    record.decided_at = state.clock()
    if outcome != "accepted" and outcome != "replayed" and record.key is not None:
        record.replay = record.key in state.by_key
    state.stats.finish(bucket, response.status, accepted=outcome == "accepted")
    return response


async def _mail_send(
    state: ProviderState, request: web.Request, now: float, record: RequestRecord
) -> tuple[web.Response, str]:
    """The response and the request's outcome (see the module docstring)."""
    cfg = state.config
    scheme, _, api_key = request.headers.get("Authorization", "").partition(" ")
    api_key = api_key.strip()
    if scheme.lower() != "bearer" or not api_key:
        return _sendgrid(401, _UNAUTHORIZED, state.rate_limit(now, False)[1]), "unauthorized"
    if state.api_keys and api_key not in state.api_keys:
        return _sendgrid(403, _FORBIDDEN, state.rate_limit(now, False)[1]), "forbidden"
    idempotent = record.idempotent = state.idempotent_for(api_key)

    retry_at, headers = state.rate_limit(now, True)
    if retry_at is not None:
        assert headers is not None
        headers["Retry-After"] = str(max(1, math.ceil(retry_at - now)))
        return _sendgrid(429, _TOO_MANY, headers), "rate_limited"

    length = request.content_length
    if length is not None and length > cfg.max_body_bytes:
        return _sendgrid(413, _TOO_LARGE, headers), "too_large"
    try:
        raw = await request.read()
    except web.HTTPRequestEntityTooLarge:
        return _sendgrid(413, _TOO_LARGE, headers), "too_large"
    if len(raw) > cfg.max_body_bytes:
        return _sendgrid(413, _TOO_LARGE, headers), "too_large"
    try:
        body = json.loads(raw)
    except ValueError:
        return _sendgrid(400, _BAD_JSON, headers), "invalid"

    mail, errors = validate_mail(body)
    if mail is None:
        payload = {"errors": [{**e, "help": None} for e in errors]}
        return _sendgrid(400, dumps(payload), headers), "invalid"
    key = record.key = record.key or mail.custom_args.get("event_id") or None
    for path, address in mail.recipients:
        if state.rejects(address):
            message = f"The recipient address {address} was rejected (permanent failure)."
            return _sendgrid(400, dumps(sendgrid_errors(message, path)), headers), "rejected"

    # Draw outcome and delay at arrival, so a seeded RNG gives a reproducible sequence.
    failure = state.draw_failure(now)
    if failure is None and state.fail_rules:
        failure = state.rule_failure(mail.recipients[0][1])
    delay = state.draw_latency()
    if delay > 0:
        await asyncio.sleep(delay)
    if failure is not None:
        return _injected_error(failure, headers), "failed"

    entry, replay = state.accept(key, mail, now, idempotent)
    record.replay = replay
    record.message_id = entry.message_id
    out = dict(headers) if headers else {}
    out["X-Message-Id"] = entry.message_id
    if replay and idempotent:
        out["Idempotent-Replayed"] = "true"
        return web.Response(status=202, headers=out), "replayed"
    return web.Response(status=202, headers=out), "accepted"


# --- control API ------------------------------------------------------------------------


async def health(request: web.Request) -> web.Response:
    return json_response({"ok": True})


async def get_config(request: web.Request) -> web.Response:
    return json_response(request.app[STATE_KEY].config.to_json())


async def patch_config(request: web.Request) -> web.Response:
    state = request.app[STATE_KEY]
    try:
        changes = await read_json_object(request)
        state.set_config(state.config.updated(changes))
    except (ConfigError, QueryError) as exc:
        return error_response(str(exc))
    log.info("config changed: %s", ", ".join(sorted(changes)))
    return json_response(state.config.to_json())


async def post_outage(request: web.Request) -> web.Response:
    state = request.app[STATE_KEY]
    try:
        body = await read_json_object(request)
        check_keys("outage", body, ("duration_s", "status", "rate", "start_in_s"))
        if "duration_s" not in body:
            raise ConfigError("duration_s is required")
        duration = pos_float("duration_s", body["duration_s"])
        start = state.clock() + nonneg_float("start_in_s", body.get("start_in_s", 0))
        outage = Outage(
            start,
            start + duration,
            status_code("status", body.get("status", 503)),
            probability("rate", body.get("rate", 1.0)),
        )
    except (ConfigError, QueryError) as exc:
        return error_response(str(exc))
    state.add_outage(outage)
    log.info("outage %s", outage)
    return json_response(outage.to_json())


async def delete_outage(request: web.Request) -> web.Response:
    state = request.app[STATE_KEY]
    cleared = len(state.config.outages)
    state.config = dataclasses.replace(state.config, outages=())
    return json_response({"ok": True, "cleared": cleared})


async def post_reset(request: web.Request) -> web.Response:
    request.app[STATE_KEY].reset()
    return json_response({"ok": True})


async def get_stats(request: web.Request) -> web.Response:
    try:
        series, seconds = parse_stats_query(request.query)
    except QueryError as exc:
        return error_response(str(exc))
    return json_response(request.app[STATE_KEY].stats_json(series, seconds))


async def get_ledger(request: web.Request) -> web.StreamResponse:
    state = request.app[STATE_KEY]
    try:
        query = LedgerQuery.parse(request.query)
    except QueryError as exc:
        return error_response(str(exc))
    matched = query.select(state.ledger)
    out: JSON = {"total": len(state.ledger), "matched": len(matched)}
    if query.summary:
        out["duplicates"] = sum(1 for e in matched if e.requests > 1)
        out["requests"] = sum(e.requests for e in matched)
        return json_response(out)
    page = query.page(matched)
    out.update(offset=query.offset, count=len(page))
    return await ledger_response(request, out, page)


async def get_duplicates(request: web.Request) -> web.Response:
    state = request.app[STATE_KEY]
    dups = [e.to_json() for e in state.ledger if e.requests > 1 or e.replay]
    return json_response(
        {
            "count": len(dups),
            "duplicate_requests": state.stats.duplicates,
            "entries": dups,
        }
    )


async def get_requests(request: web.Request) -> web.StreamResponse:
    state = request.app[STATE_KEY]
    try:
        query = LedgerQuery.parse(request.query)
    except QueryError as exc:
        return error_response(str(exc))
    matched = query.select(state.requests)
    out: JSON = {
        "total": len(state.requests),
        "dropped": state.requests_dropped,
        "matched": len(matched),
    }
    if query.summary:
        by_outcome: dict[str, int] = {}
        for r in matched:
            by_outcome[r.outcome] = by_outcome.get(r.outcome, 0) + 1
        out["delivered"] = by_outcome.get("accepted", 0)
        out["replays"] = sum(1 for r in matched if r.replay)
        out["by_outcome"] = dict(sorted(by_outcome.items()))
        return json_response(out)
    page = query.page(matched)
    out.update(offset=query.offset, count=len(page))
    return await ledger_response(request, out, page)


def create_app(
    config: ProviderConfig | None = None, *, clock: Clock = time.time
) -> web.Application:
    """The simulator as an aiohttp app; its state is ``app[STATE_KEY]``."""
    config = config or ProviderConfig()
    app = web.Application(
        client_max_size=max(64 * 1024 * 1024, config.max_body_bytes + 1),
        middlewares=[control_error_middleware(sendgrid_prefix="/v3/")],
    )
    app[STATE_KEY] = ProviderState(config, clock)
    app.router.add_post(MAIL_SEND_PATH, mail_send)
    app.router.add_get("/health", health)
    app.router.add_get("/_sim/config", get_config)
    app.router.add_patch("/_sim/config", patch_config)
    app.router.add_post("/_sim/outage", post_outage)
    app.router.add_delete("/_sim/outage", delete_outage)
    app.router.add_post("/_sim/reset", post_reset)
    app.router.add_get("/_sim/stats", get_stats)
    app.router.add_get("/_sim/ledger", get_ledger)
    app.router.add_get("/_sim/ledger/duplicates", get_duplicates)
    app.router.add_get("/_sim/requests", get_requests)
    return app


# --- CLI ------------------------------------------------------------------------------


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(
        prog="python -m simulator.provider", description="SendGrid-v3-shaped provider simulator"
    )
    p.add_argument("--host", default="127.0.0.1")
    p.add_argument("--port", type=int, default=8030)
    p.add_argument("--config", help="JSON file of config keys (see module docstring)")
    p.add_argument("--quota", type=int)
    p.add_argument("--window-s", type=float)
    p.add_argument("--daily-quota", type=int)
    p.add_argument("--latency-ms", type=float)
    p.add_argument("--latency-jitter-ms", type=float)
    p.add_argument("--latency-dist", choices=("uniform", "lognormal"))
    p.add_argument("--latency-sigma", type=float)
    p.add_argument("--error-rate", action="append", metavar="STATUS=P", help="repeatable")
    p.add_argument("--api-key", action="append", help="repeatable; default: any key")
    p.add_argument("--reject-regex")
    p.add_argument("--seed", type=int)
    p.add_argument("--set", action="append", metavar="KEY=JSON", help="any config key")
    p.add_argument("--log-level", default="INFO")
    return p.parse_args(argv)


def config_from_args(args: argparse.Namespace) -> ProviderConfig:
    data = load_json_file(args.config)
    flags = {
        "quota": args.quota,
        "window_s": args.window_s,
        "daily_quota": args.daily_quota,
        "latency_ms": args.latency_ms,
        "latency_jitter_ms": args.latency_jitter_ms,
        "latency_dist": args.latency_dist,
        "latency_sigma": args.latency_sigma,
        "reject_regex": args.reject_regex,
        "seed": args.seed,
        "api_keys": args.api_key,
    }
    data.update({k: v for k, v in flags.items() if v is not None})
    if args.error_rate:
        rates = dict(data.get("error_rates") or {})
        for item in args.error_rate:
            status, _, prob = item.partition("=")
            try:
                rates[status] = float(prob)
            except ValueError:
                raise ConfigError(f"--error-rate expects STATUS=P, got {item!r}") from None
        data["error_rates"] = rates
    data.update(parse_assignments(args.set))
    return ProviderConfig.from_mapping(data)


async def serve(config: ProviderConfig, host: str, port: int) -> None:
    runner, bound = await start_site(create_app(config), host, port)
    log.info(
        "provider simulator listening on http://%s:%d; config changes: %s",
        host,
        bound,
        config.non_defaults() or "none",
    )
    try:
        await wait_for_signal()
    finally:
        await runner.cleanup()


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    setup_logging(args.log_level)
    try:
        config = config_from_args(args)
    except (ConfigError, OSError, ValueError) as exc:
        print(f"simulator.provider: {exc}", file=sys.stderr)
        return 2
    asyncio.run(serve(config, args.host, args.port))
    return 0


if __name__ == "__main__":
    sys.exit(main())
