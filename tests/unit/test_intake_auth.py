"""Intake security without a broker: API keys, HMAC signatures, rate limits, source."""

from __future__ import annotations

import json
import logging
from types import SimpleNamespace
from typing import Any

import pytest
from multidict import CIMultiDict
from pydantic import SecretStr

from app.errors import IntakeError
from app.intake import (
    Authenticator,
    Credential,
    Gate,
    RateLimiter,
    TokenBucket,
    sign,
    with_source,
)
from app.settings import Settings

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
    s = Settings(intake_api_keys={"shop-backend": SHOP})  # type: ignore[arg-type]
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


class FakeContent:
    def __init__(self, body: bytes) -> None:
        self.body = body

    async def read(self, n: int) -> bytes:
        return self.body[:n]


def fake_request(body: bytes, h: CIMultiDict[str]) -> Any:
    return SimpleNamespace(headers=h, content_length=len(body), content=FakeContent(body))


async def test_gate_checks_credentials_before_reading_the_body() -> None:
    settings = Settings(intake_api_keys={"shop-backend": SHOP}, intake_max_body_bytes=10)  # type: ignore[arg-type]
    gate = Gate(settings)
    with pytest.raises(IntakeError) as info:  # no key: 401 even though the body is too big
        await gate.admit(fake_request(b"x" * 100, headers()))
    assert status_of(info) == 401
    with pytest.raises(IntakeError) as info:
        await gate.admit(fake_request(b"x" * 100, headers(X_Api_Key=SHOP)))
    assert status_of(info) == 413
    assert await gate.admit(fake_request(b"{}", headers(X_Api_Key=SHOP))) == ("shop-backend", b"{}")
    off = Gate(Settings(intake_auth="off"))
    assert await off.admit(fake_request(b"{}", headers())) == (None, b"{}")
