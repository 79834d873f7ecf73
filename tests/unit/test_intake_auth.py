"""Intake security without a broker: API keys, HMAC signatures, rate limits, source."""

from __future__ import annotations

import json
import logging
from typing import Any

import pytest
from multidict import CIMultiDict
from pydantic import SecretStr

from app.errors import IntakeError
from app.intake import (
    INTEGRATION_HEADER,
    Authenticator,
    Credential,
    Gate,
    RateLimiter,
    TokenBucket,
    sign,
    with_source,
)
from app.settings import Settings
from tests.plugins.intake import Serve

SHOP = "shop-secret-0123456789"
NEWS = "news-secret-0123456789"
KEYS = {"shop-backend": SecretStr(SHOP), "newsletter": SecretStr(NEWS)}


def headers(**kv: str) -> CIMultiDict[str]:
    return CIMultiDict({k.replace("_", "-"): v for k, v in kv.items()})


def status_of(exc: pytest.ExceptionInfo[IntakeError]) -> int:
    return exc.value.status


@pytest.mark.parametrize(
    "h",
    [
        headers(Authorization=f"Bearer {SHOP}"),
        headers(authorization=f"bearer  {SHOP}"),
        headers(X_Api_Key=SHOP),
    ],
)
def test_api_key_names_the_integration(h: CIMultiDict[str]) -> None:
    auth = Authenticator(KEYS)
    credential = auth.from_headers(h)
    assert auth.verify(credential, b"{}") == "shop-backend"


def test_missing_and_wrong_keys_are_401(caplog: pytest.LogCaptureFixture) -> None:
    auth = Authenticator(KEYS)
    with pytest.raises(IntakeError, match="missing credentials") as info:
        auth.from_headers(headers())
    assert status_of(info) == 401
    caplog.set_level(logging.DEBUG)
    wrong = "not-the-key-0123456789"
    with pytest.raises(IntakeError, match="invalid API key") as info:
        auth.from_headers(headers(Authorization=f"Bearer {wrong}"))
    assert status_of(info) == 401
    assert wrong not in str(info.value) and wrong not in caplog.text
    with pytest.raises(IntakeError):
        auth.from_headers(headers(Authorization="Basic abc"))


def test_no_integrations_configured_says_so() -> None:
    with pytest.raises(IntakeError, match="no integrations configured") as info:
        Authenticator({}).from_headers(headers())
    assert status_of(info) == 401


def test_hmac_signature() -> None:
    now = 1_700_000_000.0
    auth = Authenticator(KEYS, max_age_s=300, clock=lambda: now)
    body = b'{"event_id": "e1"}'
    ts = str(int(now) - 10)

    def cred(name: str, signature: str, timestamp: str = ts) -> Credential:
        return auth.from_headers(
            headers(
                X_Spillway_Integration=name,
                X_Spillway_Timestamp=timestamp,
                X_Spillway_Signature=signature,
            )
        )

    assert auth.verify(cred("newsletter", sign(NEWS, ts, body)), body) == "newsletter"
    bad = [
        cred("newsletter", sign(NEWS, ts, body + b" ")),  # body changed
        cred("newsletter", sign(SHOP, ts, body)),  # another integration's key
        cred("nobody", sign(NEWS, ts, body)),  # unknown integration
        cred("newsletter", sign(NEWS, "1", body), timestamp="1"),  # too old
        cred("newsletter", "sha256=00", timestamp="yesterday"),
    ]
    for c in bad:
        with pytest.raises(IntakeError) as info:
            auth.verify(c, body)
        assert status_of(info) == 401


@pytest.mark.parametrize(
    ("keys", "match"),
    [
        ({"a": SecretStr("tiny-1")}, "shorter than 16"),
        ({"a": SecretStr(SHOP), "b": SecretStr(SHOP)}, "share one secret"),
    ],
)
def test_weak_configuration_is_refused_without_quoting_secrets(
    keys: dict[str, SecretStr], match: str
) -> None:
    with pytest.raises(ValueError, match=match) as info:
        Authenticator(keys)
    assert all(k.get_secret_value() not in str(info.value) for k in keys.values())


def test_secrets_stay_hidden_in_settings() -> None:
    s = Settings(intake_api_keys={"shop-backend": SHOP})
    assert SHOP not in repr(s) and SHOP not in str(s.model_dump())


def test_token_bucket() -> None:
    b = TokenBucket(rate=10, burst=20, now=0.0)
    assert b.take(15, 0.0) == 0
    assert b.take(10, 0.0) == pytest.approx(0.5)  # 5 left, 10 needed: 0.5 s at 10/s
    assert b.take(10, 0.5) == 0
    # a batch larger than the bucket passes when it is full, then the rate holds
    b = TokenBucket(rate=10, burst=20, now=0.0)
    assert b.take(50, 0.0) == 0
    assert b.take(1, 0.0) == pytest.approx(3.1)


def test_rate_limiter_is_per_integration_with_retry_after() -> None:
    clock = [0.0]
    limiter = RateLimiter(2, 3, {"vip": 0}, clock=lambda: clock[0])
    limiter.check("a", 3)
    with pytest.raises(IntakeError, match="over its rate of 2 events/s") as info:
        limiter.check("a", 1)
    assert (info.value.status, info.value.retry_after) == (429, 1)
    limiter.check("b", 3)  # another integration has its own bucket
    for _ in range(100):
        limiter.check("vip", 1000)  # 0: unlimited
    clock[0] = 0.5
    limiter.check("a", 1)


def test_source_is_the_integration_for_json() -> None:
    body = b'{"event_id": "e1", "source": "spoofed"}'
    out = json.loads(with_source(json.loads(body), body, "shop-backend"))
    assert out == {"event_id": "e1", "source": "shop-backend"}
    same = b'{"event_id": "e1", "source": "shop-backend"}'
    assert with_source(json.loads(same), same, "shop-backend") is same  # bytes kept
    assert with_source(json.loads(body), body, None) is body  # auth off: untouched


# --- through a real aiohttp server ---------------------------------------------------


def event(template: str = "order_confirmation", **extra: Any) -> bytes:
    return json.dumps(
        {"event_id": "e1", "template": template, "to": "a@x.example", **extra}
    ).encode()


async def test_credentials_are_checked_before_the_body_is_read(serve: Serve) -> None:
    served = await serve(intake_auth="required", intake_api_keys=KEYS, intake_max_body_bytes=10)
    status, answer = await served.post("/v1/events", b"x" * 100)  # no key: 401 though too big
    assert (status, answer["reason"]) == (401, "unauthorized")
    status, answer = await served.post("/v1/events", b"x" * 100, {"X-Api-Key": SHOP})
    assert (status, answer["reason"]) == (413, "body_too_large")
    assert served.sink.records == []


async def test_old_form_keys_are_unrestricted(serve: Serve) -> None:
    """SPILLWAY_INTAKE_API_KEYS alone (no intake_integrations): any template, sender,
    priority; the integration is the source and the record header."""
    served = await serve(intake_auth="required", intake_api_keys=KEYS)
    body = event("anything", priority="critical", from_address="ceo@elsewhere.example")
    status, answer = await served.post("/v1/events", body, {"Authorization": f"Bearer {NEWS}"})
    assert status == 202, answer
    [(_, value, headers)] = served.sink.records
    assert json.loads(value)["source"] == "newsletter"
    assert headers == [(INTEGRATION_HEADER, b"newsletter")]


SCOPED = {
    "shop-backend": {
        "templates": ["order_confirmation", "password_reset"],
        "from_addresses": ["shop.example", "billing@pay.example"],
        "max_priority": "normal",
    },
    "newsletter": {"templates": ["newsletter"], "max_priority": "bulk", "rate_per_s": 1},
}


@pytest.mark.parametrize(
    ("key", "body", "rule", "needle"),
    [
        (SHOP, event("newsletter"), "templates", "may not use template 'newsletter'"),
        (SHOP, event(priority="critical"), "max_priority", "may not send priority 'critical'"),
        (SHOP, event(from_address="ceo@news.example"), "from_addresses", "ceo@news.example"),
        (SHOP, event(from_address="x@sub.shop.example"), "from_addresses", "x@sub.shop.example"),
        (SHOP, event(from_address="Billing <other@pay.example>"), "from_addresses", "other@"),
        (SHOP, event(from_address="not an address"), "from_addresses", "not a valid sender"),
        (NEWS, event("newsletter"), "max_priority", "priority 'normal'"),  # the default
        (NEWS, event("order_confirmation", priority="bulk"), "templates", "order_confirmation"),
    ],
)
async def test_scope_violations_are_403_naming_the_rule(
    serve: Serve, key: str, body: bytes, rule: str, needle: str
) -> None:
    served = await serve(intake_auth="required", intake_api_keys=KEYS, intake_integrations=SCOPED)
    status, answer = await served.post("/v1/events", body, {"X-Api-Key": key})
    assert (status, answer["reason"], answer["rule"]) == (403, "scope_violation", rule), answer
    assert needle in answer["error"]
    assert served.sink.records == []


@pytest.mark.parametrize(
    ("key", "body"),
    [
        (SHOP, event()),
        (SHOP, event("password_reset", priority="normal", from_address="a@shop.example")),
        (SHOP, event(priority="bulk", from_address="Billing <BILLING@pay.example>")),
        (NEWS, event("newsletter", priority="bulk")),
    ],
)
async def test_events_inside_the_scope_pass(serve: Serve, key: str, body: bytes) -> None:
    served = await serve(intake_auth="required", intake_api_keys=KEYS, intake_integrations=SCOPED)
    status, answer = await served.post("/v1/events", body, {"X-Api-Key": key})
    assert status == 202, answer


async def test_a_batch_with_one_event_out_of_scope_is_refused_whole(serve: Serve) -> None:
    served = await serve(intake_auth="required", intake_api_keys=KEYS, intake_integrations=SCOPED)
    batch = [json.loads(event()), json.loads(event("newsletter"))]
    status, answer = await served.post(
        "/v1/events/batch", json.dumps(batch).encode(), {"X-Api-Key": SHOP}
    )
    assert (status, answer["rule"]) == (403, "templates")
    assert answer["error"].startswith("events[1]: ")
    assert served.sink.records == []


async def test_scoped_integrations_may_not_send_avro(serve: Serve) -> None:
    served = await serve(intake_auth="required", intake_api_keys=KEYS, intake_integrations=SCOPED)
    avro = {"content-type": "application/vnd.confluent.avro", "X-Api-Key": SHOP}
    status, answer = await served.post("/v1/events", b"\x00\x00\x00\x00\x01\x02", avro)
    assert (status, answer["rule"]) == (403, "avro")
    open_keys = {**KEYS, "legacy": SecretStr("legacy-secret-0123456789")}
    served = await serve(
        intake_auth="required", intake_api_keys=open_keys, intake_integrations=SCOPED
    )
    avro["X-Api-Key"] = "legacy-secret-0123456789"
    status, _ = await served.post("/v1/events", b"\x00\x00\x00\x00\x01\x02", avro)
    assert status == 202


async def test_scope_rate_overrides_the_global_rate(serve: Serve) -> None:
    served = await serve(
        intake_auth="required",
        intake_api_keys=KEYS,
        intake_integrations=SCOPED,
        intake_rate_per_s=1000,
        intake_rate_burst=2,
    )
    body = event("newsletter", priority="bulk")
    news = [(await served.post("/v1/events", body, {"X-Api-Key": NEWS}))[0] for _ in range(3)]
    assert news == [202, 202, 429]  # 1 event/s from the scope, burst 2
    shop = [(await served.post("/v1/events", event(), {"X-Api-Key": SHOP}))[0] for _ in range(2)]
    assert shop == [202, 202]


@pytest.mark.parametrize(
    ("integrations", "match"),
    [
        ({"ghost": {}}, "'ghost' has no secret"),
        ({"shop-backend": {"templates": []}}, "templates"),
        ({"shop-backend": {"max_priority": "urgent"}}, "max_priority"),
        ({"shop-backend": {"from_addresses": ["not a domain"]}}, "neither an address"),
        ({"shop-backend": {"colour": "red"}}, "colour"),
        ({"shop-backend": {"rate_per_s": -1}}, "rate_per_s"),
    ],
)
def test_bad_scope_configuration_stops_the_intake(integrations: dict[str, Any], match: str) -> None:
    settings = Settings(intake_api_keys=KEYS, intake_integrations=integrations)
    with pytest.raises(ValueError, match=match):
        Gate(settings)
