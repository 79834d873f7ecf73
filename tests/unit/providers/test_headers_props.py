"""Provider headers are untrusted: the parsers are total and every wait is bounded."""

from __future__ import annotations

import math
from email.utils import formatdate

from hypothesis import given
from hypothesis import strategies as st

from app.providers.headers import (
    clamp_wait,
    http_date,
    non_negative_int,
    rate_limit_reset_at,
    retry_after_s,
)

NOW = 1_800_000_000.0
NASTY = st.sampled_from(
    [
        "0", "nan", "NaN", "-1", "inf", "-inf", "Infinity", "1e309", "1.5", "+3", " 7 ", "",
        "\u2028", "\ud800", "\x00", "9" * 400, "\uff11\uff12",  # fullwidth digits
        "Sun, 06 Nov 1994 08:49:37 GMT", "Sunday, 06-Nov-94 08:49:37 GMT",
        "Sun Nov  6 08:49:37 1994", "Sun, 31 Feb 2026 08:49:37 GMT",
        "Sun, 06 Nov 1994 25:00:00 GMT",
    ]
)  # fmt: skip
VALUES = st.one_of(NASTY, st.text(), st.text(alphabet="0123456789 .-+eE,:GMTSunNov"))


@given(VALUES, st.floats(allow_nan=True, allow_infinity=True))
def test_retry_after_is_total_and_never_negative_or_nan(value: str, now: float) -> None:
    got = retry_after_s(value, now)
    assert got is None or (math.isfinite(got) and got >= 0)


@given(VALUES)
def test_reset_and_counts_are_total(value: str) -> None:
    reset = rate_limit_reset_at(value, NOW)
    assert reset is None or (math.isfinite(reset) and reset >= 0)
    n = non_negative_int(value)
    assert n is None or n >= 0


@given(
    st.one_of(st.none(), st.floats(allow_nan=True, allow_infinity=True)),
    st.floats(min_value=0.001, max_value=10),
    st.floats(min_value=10, max_value=10_000),
    st.floats(allow_nan=True, allow_infinity=True),
)
def test_every_wait_is_within_the_range(
    seconds: float | None, low: float, high: float, fallback: float
) -> None:
    got = clamp_wait(seconds, low, high, fallback)
    assert low <= got <= high


@given(VALUES)
def test_a_header_value_never_pauses_beyond_the_maximum(value: str) -> None:
    # the whole path from the header to the pause, with the default range
    got = clamp_wait(retry_after_s(value, NOW), 1.0, 900.0, 2.0)
    assert 1.0 <= got <= 900.0


def test_rfc_9110_values() -> None:
    assert retry_after_s("120", NOW) == 120.0
    assert retry_after_s(" 120\t", NOW) == 120.0
    for bad in ("nan", "-1", "inf", "1.5", "+3", "", "1e3", "\uff11"):
        assert retry_after_s(bad, NOW) is None, bad
    assert retry_after_s(None, NOW) is None
    # an HTTP-date is a time, not "1 second"
    assert retry_after_s(formatdate(NOW + 3600, usegmt=True), NOW) == 3600.0
    assert retry_after_s(formatdate(NOW - 3600, usegmt=True), NOW) == 0.0  # past: now
    assert http_date("Sun, 06 Nov 1994 08:49:37 GMT") == 784111777.0
    assert http_date("Sunday, 06-Nov-94 08:49:37 GMT") == 784111777.0
    assert http_date("Sun Nov  6 08:49:37 1994") == 784111777.0
    assert http_date("Sun, 31 Feb 2026 08:49:37 GMT") is None
    assert retry_after_s("9" * 400, NOW) == 1e15  # huge: the caller clamps it
    assert clamp_wait(0.0, 1.0, 900.0, 2.0) == 1.0  # Retry-After 0: the minimum
    assert clamp_wait(None, 1.0, 900.0, 2.0) == 2.0  # unusable: the backoff
    assert clamp_wait(1e15, 1.0, 900.0, 2.0) == 900.0


def test_rate_limit_reset_forms() -> None:
    assert rate_limit_reset_at("30", NOW) == NOW + 30  # seconds from now
    assert rate_limit_reset_at("1800000060", NOW) == 1_800_000_060.0  # unix time
    assert rate_limit_reset_at("-5", NOW) is None
    assert rate_limit_reset_at("inf", NOW) is None
