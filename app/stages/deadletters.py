"""Dead-letter logic as plain typed functions: filtering, windowed counts, replays.

Used by the analyser (``app/agents/deadletters.py``, counts kept by
``app/tables/deadletters.py``), the
replay tool (``app/replay.py``) and the operator CLI (``app/cli/dead.py``).

Counts live in time buckets (``bucket_s`` wide, by the dead letter's ``dead_at``)
keyed ``<partition>|<bucket start>|<dimension>|<value>``. The source partition is
part of the key because a Faust table writes each change to the changelog partition
of the event being handled: a key written from one partition only is restored
exactly. A sliding window is the sum of the buckets it covers, evaluated on read,
so one table answers any window up to the retention (rounded up to whole buckets).
"""

from __future__ import annotations

import math
import re
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

from app.models import PRIORITIES, DeadLetter, DispatchRequest
from app.stages.common import REPLAY_HEADER

#: Dimensions a dead letter is counted by; "template" is "<name>@<version>".
DIMENSIONS = ("reason", "template", "source", "provider", "stage")
NONE = "-"  # value of a dimension the dead letter does not carry

#: Header naming the dead letter a replay came from: "<dead topic>/<partition>/<offset>".
REPLAY_OF_HEADER = "spillway-replay-of"


# --- stored dead letters and filters ------------------------------------------------


@dataclass(frozen=True, slots=True)
class StoredDeadLetter:
    """A dead letter with its position in ``email.dead``."""

    partition: int
    offset: int
    key: bytes | None
    letter: DeadLetter
    timestamp_ms: int | None = None

    @property
    def ref(self) -> str:
        """The operator's handle for one dead letter: ``<partition>:<offset>``."""
        return f"{self.partition}:{self.offset}"


def template_label(dl: DeadLetter) -> str:
    if not dl.template:
        return NONE
    return f"{dl.template}@{dl.template_version}" if dl.template_version else dl.template


def dimension_values(dl: DeadLetter) -> dict[str, str]:
    return {
        "reason": dl.reason or NONE,
        "template": template_label(dl),
        "source": dl.source or NONE,
        "provider": dl.provider or NONE,
        "stage": dl.stage or NONE,
    }


@dataclass(frozen=True)
class DeadLetterFilter:
    """Which dead letters an operator means. Empty sets match everything.

    ``templates`` entries are ``name`` (any version) or ``name@version``.
    """

    reasons: frozenset[str] = frozenset()
    templates: frozenset[str] = frozenset()
    template_versions: frozenset[str] = frozenset()
    sources: frozenset[str] = frozenset()
    providers: frozenset[str] = frozenset()
    stages: frozenset[str] = frozenset()
    event_ids: frozenset[str] = frozenset()
    since_ms: int | None = None  # dead_at >= since
    until_ms: int | None = None  # dead_at < until

    def is_empty(self) -> bool:
        return self == DeadLetterFilter()

    def matches(self, dl: DeadLetter) -> bool:
        def ok(values: frozenset[str], value: str | None) -> bool:
            return not values or (value or NONE) in values

        if self.templates and not (
            dl.template in self.templates or template_label(dl) in self.templates
        ):
            return False
        return (
            ok(self.reasons, dl.reason)
            and ok(self.template_versions, dl.template_version)
            and ok(self.sources, dl.source)
            and ok(self.providers, dl.provider)
            and ok(self.stages, dl.stage)
            and ok(self.event_ids, dl.event_id)
            and (self.since_ms is None or dl.dead_at >= self.since_ms)
            and (self.until_ms is None or dl.dead_at < self.until_ms)
        )


# --- durations and times -----------------------------------------------------------

_DURATION = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*(ms|s|m|h|d|w)?\s*$")
_UNIT_S = {"ms": 0.001, "s": 1, "m": 60, "h": 3600, "d": 86400, "w": 604800, None: 1}


def parse_duration(text: str) -> float:
    """Seconds from ``"90"``, ``"90s"``, ``"5m"``, ``"1h"``, ``"2d"``."""
    m = _DURATION.match(text)
    if not m:
        raise ValueError(f"not a duration: {text!r} (try 30s, 5m, 1h, 2d)")
    return float(m.group(1)) * _UNIT_S[m.group(2)]


def format_duration(seconds: float) -> str:
    for unit, size in (("d", 86400), ("h", 3600), ("m", 60)):
        if seconds >= size and seconds % size == 0:
            return f"{int(seconds // size)}{unit}"
    return f"{seconds:g}s"


def parse_time(text: str, now_ms: int) -> int:
    """Epoch ms from a duration ago (``"2h"``), epoch ms/s digits, or ISO 8601 (UTC if naive)."""
    text = text.strip()
    if text.isdigit():
        n = int(text)
        return n if n >= 10**11 else n * 1000  # 11+ digits: already milliseconds
    try:
        return now_ms - int(parse_duration(text) * 1000)
    except ValueError:
        pass
    try:
        when = datetime.fromisoformat(text.replace("Z", "+00:00"))
    except ValueError:
        raise ValueError(
            f"not a time: {text!r} (use e.g. 2h for two hours ago, or 2025-05-01T10:00Z)"
        ) from None
    if when.tzinfo is None:
        when = when.replace(tzinfo=UTC)
    return int(when.timestamp() * 1000)


def iso(ms: int | None) -> str:
    if ms is None:
        return NONE
    return (
        datetime.fromtimestamp(ms / 1000, UTC).isoformat(timespec="seconds").replace("+00:00", "Z")
    )


# --- windowed counts -------------------------------------------------------------------


def bucket_of(ts_ms: int, bucket_s: int) -> int:
    """Start (epoch seconds) of the bucket holding ``ts_ms``."""
    return (ts_ms // 1000) // bucket_s * bucket_s


def count_key(partition: int, bucket: int, dimension: str, value: str) -> bytes:
    return f"{partition}|{bucket}|{dimension}|{value}".encode()


def parse_count_key(key: bytes) -> tuple[int, int, str, str]:
    partition, bucket, dimension, value = key.decode().split("|", 3)
    return int(partition), int(bucket), dimension, value


@dataclass
class Count:
    count: int = 0
    previous: int = 0  # in the window of the same size just before

    def as_json(self) -> dict[str, int]:
        return {"count": self.count, "previous": self.previous}


@dataclass
class WindowSummary:
    """Dead letters in ``[start_ms, end_ms)``, by dimension, and in the window before."""

    window_s: float
    start_ms: int
    end_ms: int
    as_of_ms: int | None = None  # "now", when the window ends in the future (whole buckets)
    total: int = 0
    previous_total: int = 0
    by: dict[str, dict[str, Count]] = field(default_factory=dict)

    @property
    def rate_per_min(self) -> float:
        end = min(self.end_ms, self.as_of_ms) if self.as_of_ms else self.end_ms
        span_min = max(end - self.start_ms, 1000) / 60_000
        return self.total / span_min if span_min > 0 else 0.0

    def add(self, values: Mapping[str, str], n: int, *, current: bool, total: bool = True) -> None:
        if total:
            if current:
                self.total += n
            else:
                self.previous_total += n
        for dimension, value in values.items():
            c = self.by.setdefault(dimension, {}).setdefault(value, Count())
            if current:
                c.count += n
            else:
                c.previous += n

    def top(self, dimension: str, n: int | None = None) -> list[tuple[str, Count]]:
        rows = sorted(
            self.by.get(dimension, {}).items(), key=lambda kv: (-kv[1].count, -kv[1].previous)
        )
        return rows[:n] if n else rows

    def as_json(self, dimensions: Iterable[str] = DIMENSIONS, top: int | None = None) -> Any:
        return {
            "window": format_duration(self.window_s),
            "window_s": self.window_s,
            "start": iso(self.start_ms),
            "end": iso(self.end_ms),
            "total": self.total,
            "previous_total": self.previous_total,
            "rate_per_min": round(self.rate_per_min, 3),
            "by": {
                d: {value: c.as_json() for value, c in self.top(d, top) if c.count or c.previous}
                for d in dimensions
            },
        }


def summarize_counts(
    items: Iterable[tuple[bytes, int]], *, now_ms: int, window_s: float, bucket_s: int
) -> WindowSummary:
    """A window over bucketed counts: whole buckets, ending with the current one."""
    end = bucket_of(now_ms, bucket_s) + bucket_s
    span = max(1, math.ceil(window_s / bucket_s)) * bucket_s
    start = end - span
    summary = WindowSummary(window_s, start * 1000, end * 1000, as_of_ms=now_ms)
    for key, n in items:
        _, bucket, dimension, value = parse_count_key(key)
        if start <= bucket < end:
            current = True
        elif start - span <= bucket < start:
            current = False
        else:
            continue
        summary.add({dimension: value}, n, current=current, total=dimension == "stage")
    return summary


def summarize_letters(
    letters: Iterable[DeadLetter], *, now_ms: int, window_s: float
) -> WindowSummary:
    """The same summary computed exactly from dead letters (the CLI reads the topic)."""
    span_ms = int(window_s * 1000)
    summary = WindowSummary(window_s, now_ms - span_ms, now_ms)
    for dl in letters:
        if now_ms - span_ms <= dl.dead_at <= now_ms:
            summary.add(dimension_values(dl), 1, current=True)
        elif now_ms - 2 * span_ms <= dl.dead_at < now_ms - span_ms:
            summary.add(dimension_values(dl), 1, current=False)
    return summary


@dataclass(frozen=True)
class AlertRule:
    """Raise the alert signal when dead letters exceed a count or a rate.

    ``count`` over ``count_window_s`` catches a slow leak; ``rate_per_min`` over
    the (shorter) ``rate_window_s`` catches a spike. 0 disables a threshold.
    """

    count: int
    count_window_s: float
    rate_per_min: float
    rate_window_s: float

    def evaluate(self, count_window: WindowSummary, rate_window: WindowSummary) -> dict[str, Any]:
        by_count = self.count > 0 and count_window.total >= self.count
        by_rate = self.rate_per_min > 0 and rate_window.rate_per_min >= self.rate_per_min
        return {
            "firing": by_count or by_rate,
            "count": {
                "firing": by_count,
                "value": count_window.total,
                "threshold": self.count,
                "window": format_duration(self.count_window_s),
            },
            "rate": {
                "firing": by_rate,
                "value_per_min": round(rate_window.rate_per_min, 3),
                "threshold_per_min": self.rate_per_min,
                "window": format_duration(self.rate_window_s),
            },
        }


# --- replays -----------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class ReplayItem:
    """One record the replay tool produces."""

    source: StoredDeadLetter
    topic: str  # logical topic name (see app.topology)
    key: bytes | None
    value: bytes
    headers: tuple[tuple[str, bytes], ...]

    @property
    def replay_number(self) -> int:
        return int(dict(self.headers)[REPLAY_HEADER])


@dataclass(frozen=True, slots=True)
class Skipped:
    source: StoredDeadLetter
    why: str


def newest_per_event(letters: Iterable[StoredDeadLetter]) -> list[StoredDeadLetter]:
    """One dead letter per event id (the newest), so one replay run sends each event
    once even if it died several times; letters without an id are all kept."""
    newest: dict[str, StoredDeadLetter] = {}
    anonymous: list[StoredDeadLetter] = []
    for s in letters:
        event_id = s.letter.event_id
        if not event_id:
            anonymous.append(s)
            continue
        seen = newest.get(event_id)
        if seen is None or (s.letter.dead_at, s.partition, s.offset) > (
            seen.letter.dead_at,
            seen.partition,
            seen.offset,
        ):
            newest[event_id] = s
    return sorted([*newest.values(), *anonymous], key=lambda s: (s.letter.dead_at, s.ref))


Decode = Callable[[bytes, str], Any]  # (framed Avro, schema stem) -> Record
Encode = Callable[[str, Any], bytes]  # (logical topic, Record) -> framed Avro


def plan_replay(
    stored: StoredDeadLetter, *, dead_topic: str, decode: Decode, encode: Encode
) -> ReplayItem | Skipped:
    """Where and how to replay one dead letter.

    - render: the original raw event back to ``raw`` (it re-renders with the current
      template); route: the original rendered email back to ``rendered``.
    - dispatch: the DispatchRequest to its priority's lane with ``attempts=0``,
      ``replay=True``, ``not_before=None`` and its history kept.

    The key is the event id, so the dispatch stage's sent-ledger suppresses an email
    that was sent already: replaying twice sends nothing new.
    """
    dl = stored.letter
    if not dl.payload:
        return Skipped(stored, "no payload (redacted, or the event was empty): nothing to replay")
    key = dl.event_id.encode() if dl.event_id else stored.key
    headers = (
        (REPLAY_HEADER, str(dl.replayed + 1).encode()),
        (REPLAY_OF_HEADER, f"{dead_topic}/{stored.partition}/{stored.offset}".encode()),
    )
    if dl.stage == "render":
        return ReplayItem(stored, "raw", key, dl.payload, headers)
    if dl.stage == "route":
        return ReplayItem(stored, "rendered", key, dl.payload, headers)
    if dl.stage == "dispatch":
        try:
            req: DispatchRequest = decode(dl.payload, "dispatch_request")
        except Exception as exc:
            return Skipped(stored, f"dispatch payload does not decode: {exc}")
        if req.priority not in PRIORITIES:
            return Skipped(stored, f"unknown priority {req.priority!r}")
        lane = f"dispatch.{req.priority}"
        fresh = DispatchRequest(
            **{**req.asdict(), "attempts": 0, "replay": True, "not_before": None}
        )
        return ReplayItem(stored, lane, req.event_id.encode(), encode(lane, fresh), headers)
    return Skipped(stored, f"stage {dl.stage!r} has no replay target")


# --- bounded labels (issue 15) ---------------------------------------------------------------

#: What a dimension value outside its known set is counted as.
OTHER = "other"
#: Reason codes the pipeline writes (app/errors.py, the stages, the providers). A unit
#: test scans app/ for reason literals and fails when one is missing here.
KNOWN_REASONS = frozenset({
    "bad_event", "empty_value", "error", "intake_refused", "internal_error", "invalid_field",
    "invalid_header", "needs_reconciliation", "provider_auth", "provider_error",
    "provider_rejected", "provider_throttled", "provider_timeout", "provider_unavailable",
    "render_error", "schema_violation", "too_large", "undecodable", "unencodable",
    "unknown_template",
    # issue 13 (dispatch outcomes): parked after a lost answer; 409 answers
    "ambiguous", "idempotency_conflict", "provider_conflict",
})  # fmt: skip
KNOWN_STAGES = frozenset({"intake", "render", "route", "dispatch", "analyser"})


class LabelBounds:
    """The values the analyser's table keys and metric labels may take, per dimension.

    Anything a producer can choose (source, template, provider, even reason and stage:
    whoever may write to email.dead writes them) is mapped into a set fixed by the
    configuration: known reasons and stages, the configured integrations and providers,
    the templates (and their versions) in the templates folder. Everything else counts
    as ``other`` (a known template with an unknown version as ``<name>@other``), so the
    table and ``spillway_dead_letters_window_by`` have at most
    ``sum(len(set) + 2)`` values per bucket and window, whatever arrives.
    """

    def __init__(
        self,
        *,
        sources: frozenset[str],
        providers: frozenset[str],
        templates: Callable[[], Mapping[str, frozenset[str]]] | Mapping[str, frozenset[str]],
        reasons: frozenset[str] = KNOWN_REASONS,
        stages: frozenset[str] = KNOWN_STAGES,
        refresh_s: float = 30.0,
        clock: Callable[[], float] | None = None,
    ) -> None:
        import time

        self.sources, self.providers = sources, providers
        self.reasons, self.stages = reasons, stages
        self._load = templates if callable(templates) else (lambda: templates)
        self._clock = clock or time.monotonic
        self.refresh_s = refresh_s
        self.templates: Mapping[str, frozenset[str]] = self._load()
        self._loaded_at = self._clock()

    @classmethod
    def from_settings(cls, settings: Any) -> LabelBounds:
        from app.templating import TemplateStore

        def templates() -> dict[str, frozenset[str]]:
            try:
                store = TemplateStore(settings.templates_dir)
                return {n: frozenset(store.versions(n)) for n in store.names()}
            except Exception:  # a broken templates folder must not stop the counting
                return {}

        keys = settings.intake.api_keys
        scopes = settings.intake.integrations
        return cls(
            sources=frozenset({"cli", *map(str, keys), *map(str, scopes)}),
            providers=frozenset(p.name for p in settings.provider_policies()),
            templates=templates,
        )

    def _template(self, dl: DeadLetter) -> str:
        if not dl.template:
            return NONE
        versions = self.templates.get(dl.template)
        if versions is None and self._clock() - self._loaded_at >= self.refresh_s:
            self.templates, self._loaded_at = self._load(), self._clock()  # new template?
            versions = self.templates.get(dl.template)
        if versions is None:
            return OTHER
        if not dl.template_version:
            return dl.template
        return template_label(dl) if dl.template_version in versions else f"{dl.template}@{OTHER}"

    def values(self, dl: DeadLetter) -> dict[str, str]:
        def known(value: str | None, allowed: frozenset[str]) -> str:
            if not value:
                return NONE
            return value if value in allowed else OTHER

        return {
            "reason": known(dl.reason, self.reasons),
            "template": self._template(dl),
            "source": known(dl.source, self.sources),
            "provider": known(dl.provider, self.providers),
            "stage": known(dl.stage, self.stages),
        }


# --- PII redaction (issue 15: setting redact_pii) -------------------------------------------

# A local part may hold quotes and most punctuation (RFC 5322): take all but spaces
# and separators; the domain stops at quotes too.
_EMAIL = re.compile(r"[^\s@<>,;:()\[\]\"]+@[^\s@<>\"'`,;:()\[\]{}]+")
_QUOTED = re.compile(r"'[^']*'|\"[^\"]*\"|`[^`]*`")
REDACTED_EMAIL = "<email>"
REDACTED_MARK = "[redacted]"


def redact_text(text: str) -> str:
    """``text`` with email addresses and quoted values (which may be template data)
    masked: ``<email>`` and ``'…'``."""
    return _QUOTED.sub("'…'", _EMAIL.sub(REDACTED_EMAIL, text))


def redact_dead_letter(dl: DeadLetter) -> DeadLetter:
    """The dead letter without the event: payload emptied, messages masked; metadata
    (reason, stage, template, source, provider, ids, offsets) kept for counting and
    for finding the original upstream. Idempotent."""
    from app.models import Attempt
    from app.stages.common import MAX_MESSAGE_CHARS, text

    def clean(value: str) -> str:  # masked, encodable (lone surrogates escaped), bounded
        return text(redact_text(value), MAX_MESSAGE_CHARS)

    history = [
        Attempt(**{**a.asdict(), "message": clean(a.message)}) if isinstance(a, Attempt)
        else a
        for a in dl.history
    ]  # fmt: skip
    message = clean(dl.message)
    if not message.startswith(REDACTED_MARK):
        message = f"{REDACTED_MARK} {message}"
    return type(dl)(**{
        **dl.asdict(), "payload": b"", "payload_format": "unknown", "message": message,
        "history": history,
    })  # fmt: skip


class RedactingRecordFactory:
    """A ``logging`` record factory that masks email addresses and quoted values in
    every log message (installed by :func:`install_log_redaction`)."""

    def __init__(self, inner: Callable[..., Any]) -> None:
        self.inner = inner

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        record = self.inner(*args, **kwargs)
        try:
            message = redact_text(record.getMessage())
        except Exception:  # a bad format string: logging's error report would print the args
            message = f"{redact_text(str(record.msg))} [arguments dropped: they do not fit]"
        record.msg, record.args = message, None
        return record


def install_log_redaction() -> bool:
    """Mask addresses in every log record of this process; True if newly installed."""
    import logging

    current = logging.getLogRecordFactory()
    if isinstance(current, RedactingRecordFactory):
        return False
    logging.setLogRecordFactory(RedactingRecordFactory(current))
    return True
