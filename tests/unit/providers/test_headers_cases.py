"""Exact values of the provider header parsers at their edges (issue 17 pt 5).

The property tests (test_headers_props.py) prove the parsers total and bounded; these
pin the values: the digit cap, the epoch floor, the two-digit-year window of RFC 850
dates, what counts as whitespace around a value, and that dates are read as GMT
whatever the machine's local timezone.
"""

from __future__ import annotations

import math
import time
from collections.abc import Iterator
from datetime import UTC, datetime

import pytest

from app.providers import headers
from app.providers.headers import (
    clamp_wait,
    http_date,
    non_negative_int,
    rate_limit_reset_at,
    retry_after_s,
)

NOW = 1_800_000_000.0


@pytest.fixture
def tokyo(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    """Local time 9 hours ahead of UTC, restored afterwards."""
    monkeypatch.setenv("TZ", "Asia/Tokyo")
    time.tzset()
    yield
    monkeypatch.undo()
    time.tzset()


def frozen_clock(monkeypatch: pytest.MonkeyPatch, at: datetime) -> None:
    """``datetime.now`` in the headers module answers ``at`` (in the zone asked for)."""

    class Frozen(datetime):
        @classmethod
        def now(cls, tz=None):  # type: ignore[no-untyped-def,override]
            return datetime.fromtimestamp(at.timestamp(), tz)

    monkeypatch.setattr(headers, "datetime", Frozen)


# -- delay-seconds: digits, the cap, whitespace ---------------------------------------


def test_fifteen_digits_are_read_exactly_and_sixteen_are_capped() -> None:
    assert retry_after_s("9" * 15, NOW) == 999_999_999_999_999.0
    assert retry_after_s("0000" + "9" * 15, NOW) == 999_999_999_999_999.0  # leading 0s free
    assert retry_after_s("1" + "0" * 15, NOW) == 1e15
    assert retry_after_s("9" * 16, NOW) == 1e15


@pytest.mark.parametrize("value", [" 5", "5\t", "\t 5 \t"])
def test_spaces_and_tabs_around_a_value_are_optional_whitespace(value: str) -> None:
    assert retry_after_s(value, NOW) == 5.0
    assert non_negative_int(value) == 5
    assert rate_limit_reset_at(value, NOW) == NOW + 5


@pytest.mark.parametrize("value", ["5\n", "\r5", "\x0b5", "5\x0c", "\u00a05", "X5", "5X", "X5X"])
def test_other_characters_around_a_value_make_it_unusable(value: str) -> None:
    # RFC 9110 OWS is SP / HTAB only; CR, LF, VT, FF, NBSP or letters are garbage.
    assert retry_after_s(value, NOW) is None
    assert non_negative_int(value) is None
    assert rate_limit_reset_at(value, NOW) is None


# -- X-RateLimit-Limit / -Remaining ---------------------------------------------------


def test_non_negative_int_reads_plain_integers() -> None:
    assert non_negative_int("0") == 0
    assert non_negative_int("42") == 42
    assert non_negative_int("007") == 7
    assert non_negative_int("9" * 40) == 10**15  # capped, still an int
    assert isinstance(non_negative_int("42"), int)


@pytest.mark.parametrize("value", [None, "", "-1", "1.5", "+3", "nan", "\ud800", "\uff11"])
def test_non_negative_int_refuses_everything_else(value: str | None) -> None:
    assert non_negative_int(value) is None


# -- X-RateLimit-Reset: unix time or seconds from now ----------------------------------


def test_reset_epoch_floor_is_inclusive() -> None:
    assert rate_limit_reset_at("1000000000", NOW) == 1_000_000_000.0  # a unix time
    assert rate_limit_reset_at("999999999", NOW) == NOW + 999_999_999  # a delta
    assert rate_limit_reset_at("1000000001", NOW) == 1_000_000_001.0
    assert rate_limit_reset_at("0", NOW) == NOW
    assert rate_limit_reset_at(None, NOW) is None
    assert rate_limit_reset_at("5", math.nan) is None


# -- HTTP-date: GMT whatever the local zone, the RFC 850 century -----------------------


def test_dates_are_gmt_whatever_the_local_timezone(tokyo: None) -> None:
    gmt = datetime(1994, 11, 6, 8, 49, 37, tzinfo=UTC).timestamp()
    assert http_date("Sun, 06 Nov 1994 08:49:37 GMT") == gmt
    assert http_date("Sunday, 06-Nov-94 08:49:37 GMT") == gmt
    assert http_date("Sun Nov  6 08:49:37 1994") == gmt
    assert retry_after_s("Sun, 06 Nov 1994 08:49:47 GMT", gmt) == 10.0


def test_rfc850_two_digit_year_window(monkeypatch: pytest.MonkeyPatch) -> None:
    """RFC 9110 5.6.7: a two-digit year more than 50 years in the future is in the
    past century. In 2026 that is 77..99 -> 1977..1999; 00..76 -> 2000..2076."""
    frozen_clock(monkeypatch, datetime(2026, 6, 1, tzinfo=UTC))

    def year(yy: str) -> int:
        at = http_date(f"Monday, 01-Jun-{yy} 00:00:00 GMT")
        assert at is not None
        return datetime.fromtimestamp(at, UTC).year

    assert year("26") == 2026
    assert year("00") == 2000
    assert year("75") == 2075
    assert year("76") == 2076  # exactly 50 years ahead: not *more* than 50
    assert year("77") == 1977
    assert year("99") == 1999


def test_rfc850_window_follows_the_utc_year_not_the_local_one(
    monkeypatch: pytest.MonkeyPatch, tokyo: None
) -> None:
    # 31 Dec 2026 23:30 UTC is already 2027 in Tokyo: the window is still 2026's.
    frozen_clock(monkeypatch, datetime(2026, 12, 31, 23, 30, tzinfo=UTC))
    at = http_date("Saturday, 01-Jan-77 00:00:00 GMT")
    assert at is not None
    assert datetime.fromtimestamp(at, UTC).year == 1977


# -- clamp_wait: which value is used, then the range -----------------------------------


def test_a_negative_wait_uses_the_fallback_not_the_minimum() -> None:
    assert clamp_wait(-5.0, 1.0, 100.0, 30.0) == 30.0
    assert clamp_wait(-0.001, 1.0, 100.0, 30.0) == 30.0
    assert clamp_wait(0.0, 1.0, 100.0, 30.0) == 1.0  # usable, then clamped up
    assert clamp_wait(50.0, 1.0, 100.0, 30.0) == 50.0
    assert clamp_wait(500.0, 1.0, 100.0, 30.0) == 100.0


@pytest.mark.parametrize("seconds", [None, math.nan, math.inf, -math.inf, -1.0])
@pytest.mark.parametrize("fallback", [math.inf, math.nan])
def test_an_unusable_fallback_waits_the_maximum(seconds: float | None, fallback: float) -> None:
    assert clamp_wait(seconds, 1.0, 100.0, fallback) == 100.0
