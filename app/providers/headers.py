"""Provider answers are untrusted input: strict, total parsers for their headers.

Every function here is pure and never raises, whatever the header holds (empty,
garbage, NaN, infinities, negative or huge numbers, control characters, lone
surrogates). Absent or unusable values give ``None``; the caller then falls back
to its policy (``clamp_wait``). Nothing here decides how long to wait: the
policy's range does (``ProviderPolicy.retry_after_min_s`` .. ``retry_after_max_s``).

Retry-After (RFC 9110 section 10.2.3) is ``HTTP-date / delay-seconds`` with
``delay-seconds = 1*DIGIT``: "1.5", "-1", "nan", "inf" and "+3" are not valid and
give ``None``. HTTP-date is IMF-fixdate, or one of the obsolete RFC 850 and asctime
forms a recipient must accept (section 5.6.7); a date in the past means "now" (0).

X-RateLimit-Reset has no standard: providers send either a unix time (SendGrid,
GitHub) or seconds from now (others). A non-negative integer of at least 10**9 is
read as a unix time, a smaller one as seconds from now.
"""

from __future__ import annotations

import math
import re
from datetime import UTC, datetime

_DIGITS = re.compile(r"[0-9]+")
#: Longer digit strings are "huge" anyway; cut before int() so no string is slow.
_MAX_DIGITS = 15
_HUGE = 1e15
_EPOCH_FLOOR = 1_000_000_000  # 2001-09-09: smaller X-RateLimit-Reset values are deltas
_MONTHS = ["Jan", "Feb", "Mar", "Apr", "May", "Jun", "Jul", "Aug", "Sep", "Oct", "Nov", "Dec"]
_IMF = re.compile(
    r"(?:Mon|Tue|Wed|Thu|Fri|Sat|Sun), ([0-9]{2}) ([A-Z][a-z]{2}) ([0-9]{4}) "
    r"([0-9]{2}):([0-9]{2}):([0-9]{2}) GMT"
)
_RFC850 = re.compile(
    r"(?:Monday|Tuesday|Wednesday|Thursday|Friday|Saturday|Sunday), "
    r"([0-9]{2})-([A-Z][a-z]{2})-([0-9]{2}) ([0-9]{2}):([0-9]{2}):([0-9]{2}) GMT"
)
_ASCTIME = re.compile(
    r"(?:Mon|Tue|Wed|Thu|Fri|Sat|Sun) ([A-Z][a-z]{2}) ([ 0-9][0-9]) "
    r"([0-9]{2}):([0-9]{2}):([0-9]{2}) ([0-9]{4})"
)


def _digits(value: str) -> float | None:
    """``1*DIGIT`` (ASCII only) as a float, huge ones capped; else None."""
    if not _DIGITS.fullmatch(value):
        return None
    if len(value.lstrip("0")) > _MAX_DIGITS:
        return _HUGE
    return float(int(value))


def _timestamp(year: int, month: str, day: int, hh: int, mm: int, ss: int) -> float | None:
    if month not in _MONTHS:
        return None
    try:
        at = datetime(year, _MONTHS.index(month) + 1, day, hh, mm, ss, tzinfo=UTC)
    except ValueError:  # 31 Feb, 25:00, second 61 ...
        return None
    return at.timestamp()


def http_date(value: str) -> float | None:
    """An RFC 9110 HTTP-date as unix seconds, or None."""
    value = value.strip()
    if m := _IMF.fullmatch(value):
        day, mon, year, hh, mi, ss = m.groups()
        return _timestamp(int(year), mon, int(day), int(hh), int(mi), int(ss))
    if m := _RFC850.fullmatch(value):
        day, mon, yy, hh, mi, ss = m.groups()
        # RFC 9110: a two-digit year more than 50 years ahead is in the past century.
        year = 2000 + int(yy)
        if year > datetime.now(UTC).year + 50:
            year -= 100
        return _timestamp(year, mon, int(day), int(hh), int(mi), int(ss))
    if m := _ASCTIME.fullmatch(value):
        mon, day, hh, mi, ss, year = m.groups()
        return _timestamp(int(year), mon, int(day), int(hh), int(mi), int(ss))
    return None


def retry_after_s(value: str | None, now: float) -> float | None:
    """Seconds to wait from ``now`` (unix seconds) per a Retry-After value, or None
    when it is absent or not a valid RFC 9110 value. Never negative, never NaN; a
    huge delay is returned as a large finite number (the caller clamps it)."""
    if value is None:
        return None
    value = value.strip(" \t")
    seconds = _digits(value)
    if seconds is not None:
        return seconds
    at = http_date(value)
    if at is None or not math.isfinite(now):
        return None
    return max(0.0, at - now)


def rate_limit_reset_at(value: str | None, now: float) -> float | None:
    """X-RateLimit-Reset as a unix time, or None when absent or unusable."""
    if value is None:
        return None
    n = _digits(value.strip(" \t"))
    if n is None or not math.isfinite(now):
        return None
    return n if n >= _EPOCH_FLOOR else now + n


def non_negative_int(value: str | None) -> int | None:
    """X-RateLimit-Limit / -Remaining: a plain non-negative integer, or None."""
    if value is None:
        return None
    n = _digits(value.strip(" \t"))
    return None if n is None else int(min(n, _HUGE))


def clamp_wait(seconds: float | None, low: float, high: float, fallback: float) -> float:
    """A wait within [low, high]: ``seconds`` when it is a usable number (finite, not
    negative), else ``fallback`` (the policy's backoff); either way clamped."""
    if seconds is None or not math.isfinite(seconds) or seconds < 0:
        seconds = fallback
    if not math.isfinite(seconds):
        seconds = high
    return min(high, max(low, seconds))
