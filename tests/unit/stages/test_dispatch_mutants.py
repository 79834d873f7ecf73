"""The dispatch stage's decisions checked exactly (issue 17 pt 5: survivors of the
mutation run): the status class each answer is counted under, when a run of failures
began, what goes on the wire, how long each provider honours a key, and the records
the stage emits (sent, retry, dead) field by field."""

from __future__ import annotations

from typing import Any

import pytest

from app.errors import (
    PermanentProviderError,
    ProviderError,
    ThrottledError,
    TransientProviderError,
)
from app.models import Attempt
from app.stages.dispatch import _status_class, first_failure_ms, outbound
from tests.plugins.factories import dispatch_request


def attempt(stage: str, at: int) -> Attempt:
    return Attempt(
        at=at, stage=stage, error_class="E", reason="r", message="m", retriable=True
    )


# -- the status class of an answer (the response metric's label) -----------------------


@pytest.mark.parametrize(
    ("exc", "label"),
    [
        (TransientProviderError("x", provider="p", status=503), "5xx"),
        (TransientProviderError("x", provider="p", status=500), "5xx"),
        (PermanentProviderError("x", provider="p", status=400), "4xx"),
        (PermanentProviderError("x", provider="p", status=422), "4xx"),
        (ProviderError("x", provider="p", status=499), "4xx"),
        (ThrottledError("x", provider="p", retry_after=None), "429"),
        (ProviderError("x", provider="p", status=429), "429"),
        (ProviderError("x", provider="p", status=302), "3xx"),
        (TransientProviderError("x", provider="p", reason="provider_timeout"), "timeout"),
        (TransientProviderError("x", provider="p"), "error"),
        (TimeoutError("no status, no reason"), "error"),
        (ValueError("x"), "error"),
    ],
)
def test_status_class(exc: BaseException, label: str) -> None:
    assert _status_class(exc) == label


def test_a_non_provider_error_with_a_timeout_reason_is_a_timeout() -> None:
    exc = RuntimeError("x")
    exc.reason = "provider_timeout"  # type: ignore[attr-defined]
    exc.status = 503  # type: ignore[attr-defined]  # only a ProviderError's status counts
    assert _status_class(exc) == "timeout"


# -- when this run of failures began ----------------------------------------------------


def test_first_failure_is_the_earliest_dispatch_attempt_of_this_run() -> None:
    history = [
        attempt("dispatch", 100),  # an older run (before a replay)
        attempt("render", 150),
        attempt("dispatch", 300),
        attempt("dispatch", 200),
    ]
    req = dispatch_request("e", "normal", attempts=3, history=history)
    # the last 3 entries: render 150 is not a dispatch attempt; 200 is the earliest
    assert first_failure_ms(req, 9_999) == 200
    req = dispatch_request("e", "normal", attempts=1, history=history)
    assert first_failure_ms(req, 9_999) == 200
    req = dispatch_request("e", "normal", attempts=4, history=history)
    assert first_failure_ms(req, 9_999) == 100


def test_first_failure_defaults_without_attempts_or_dispatch_entries() -> None:
    history = [attempt("dispatch", 100)]
    assert first_failure_ms(dispatch_request("e", "normal", attempts=0, history=history), 7) == 7
    only_render = [attempt("render", 100)]
    req = dispatch_request("e", "normal", attempts=1, history=only_render)
    assert first_failure_ms(req, 7) == 7


# -- what goes on the wire ----------------------------------------------------------------


def test_outbound_carries_every_field_of_the_request() -> None:
    req = dispatch_request("e-5", "bulk")
    email = outbound(req)
    expected: dict[str, Any] = {
        "event_id": req.event_id,
        "to": req.to,
        "from_address": req.from_address,
        "subject": req.subject,
        "html": req.html,
        "text": req.text,
        "priority": req.priority,
        "source": req.source,
        "template": req.template,
        "template_version": req.template_version,
    }
    assert {k: getattr(email, k) for k in expected} == expected
    assert email.priority == "bulk" and email.event_id == "e-5"
