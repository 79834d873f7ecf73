"""HTTP intake: append events to ``email.raw-events`` and answer with their offsets.

Intake does no rendering and no validation beyond "is this a JSON object": the
bytes go to Kafka as they are (a batch's objects are re-serialized one by one).
It never answers 2xx before the broker has acknowledged the write (acks=all),
and answers 503 with Retry-After when the broker cannot acknowledge in time.

    POST /v1/events         one JSON object, or Avro in Confluent framing
                            (Content-Type: application/vnd.confluent.avro;
                            key from the X-Event-Id header)     -> 202
    POST /v1/events/batch   a JSON array of objects, or {"events": [...]} -> 202

A retried request may append the same event twice: the sent-ledger makes that
harmless (one email per event id).

Security (``intake_auth=required``, the default). Each integration has one secret
(``SPILLWAY_INTAKE_API_KEYS``) and authenticates with either

- an API key: ``Authorization: Bearer <secret>`` or ``X-Api-Key: <secret>``; or
- an HMAC signature: ``X-Spillway-Integration: <name>``, ``X-Spillway-Timestamp:
  <unix seconds>`` and ``X-Spillway-Signature: sha256=<hex of HMAC-SHA256(secret,
  "<timestamp>." + body)>``; the timestamp must be within
  ``intake_signature_max_age_s`` of the intake's clock.

Secrets are compared in constant time (SHA-256 digests, every integration checked),
never logged and never written anywhere. Missing or wrong credentials -> 401. The
integration's name becomes the event's ``source``: a JSON event's ``source`` field
is set (overriding what the producer wrote); an Avro body is appended unchanged
(intake never decodes), so its ``source`` stays what the producer wrote, and the
integration is recorded in the ``spillway-integration`` header of the Kafka record.
Every record appended by an authenticated request carries that header.

Each integration has a token bucket of ``intake_rate_burst`` events refilled at
``intake_rate_per_s`` (per intake worker); a request that finds too few tokens gets
429 with Retry-After. A batch costs one token per event.
"""

from __future__ import annotations

import asyncio
import hashlib
import hmac
import json
import logging
import math
import secrets as _secrets
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

from pydantic import SecretStr

from app.errors import IntakeError
from app.runtime import Runtime
from app.topology import RAW

log = logging.getLogger(__name__)

AVRO_TYPES = ("application/vnd.confluent.avro", "application/octet-stream")
#: Kafka record header naming the authenticated integration.
INTEGRATION_HEADER = "spillway-integration"
MIN_SECRET_CHARS = 16


async def read_body(request: Any, limit: int) -> bytes:
    declared = request.content_length
    if declared is not None and declared > limit:
        raise IntakeError(f"body of {declared} bytes exceeds the limit of {limit}", status=413)
    body: bytes = await request.content.read(limit + 1)
    if len(body) > limit:
        raise IntakeError(f"body exceeds the limit of {limit} bytes", status=413)
    if not body:
        raise IntakeError("empty body: send a JSON object", status=400)
    return body


def parse_object(body: bytes) -> dict[str, Any]:
    try:
        obj = json.loads(body)
    except (UnicodeDecodeError, ValueError) as exc:
        raise IntakeError(f"body is not valid UTF-8 JSON: {exc}", status=400) from exc
    if not isinstance(obj, dict):
        raise IntakeError(f"body must be a JSON object, not {type(obj).__name__}", status=400)
    return obj


def parse_batch(body: bytes, max_batch: int) -> list[dict[str, Any]]:
    try:
        obj = json.loads(body)
    except (UnicodeDecodeError, ValueError) as exc:
        raise IntakeError(f"body is not valid UTF-8 JSON: {exc}", status=400) from exc
    events = obj.get("events") if isinstance(obj, dict) else obj
    if not isinstance(events, list):
        raise IntakeError('batch must be a JSON array of objects or {"events": [...]}', status=400)
    if not events:
        raise IntakeError("batch is empty", status=400)
    if len(events) > max_batch:
        raise IntakeError(
            f"batch of {len(events)} events exceeds the limit of {max_batch}", status=413
        )
    for i, event in enumerate(events):
        if not isinstance(event, dict):
            raise IntakeError(
                f"events[{i}] must be a JSON object, not {type(event).__name__}", status=400
            )
    return events


def key_of(obj: dict[str, Any]) -> bytes | None:
    event_id = obj.get("event_id")
    return event_id.encode() if isinstance(event_id, str) and event_id else None


# --- authentication ------------------------------------------------------------


def _digest(secret: str) -> bytes:
    return hashlib.sha256(secret.encode()).digest()


def sign(secret: str, timestamp: str, body: bytes) -> str:
    """The X-Spillway-Signature value for ``body`` sent at ``timestamp`` (unix seconds)."""
    mac = hmac.new(secret.encode(), timestamp.encode() + b"." + body, hashlib.sha256)
    return "sha256=" + mac.hexdigest()


@dataclass(frozen=True)
class Credential:
    """Who a request says it is. ``signature`` is set when the body must be verified."""

    integration: str
    signature: tuple[str, str] | None = None  # (timestamp, signature header)


class Authenticator:
    """Maps request headers (and, for HMAC, the body) to an integration name.

    Secrets are held as SecretStr and SHA-256 digests only; error messages never
    quote what the client sent.
    """

    def __init__(
        self,
        secrets: Mapping[str, SecretStr],
        *,
        max_age_s: float = 300,
        clock: Callable[[], float] = time.time,
    ) -> None:
        values = {name: secret.get_secret_value() for name, secret in secrets.items()}
        for name, value in values.items():
            if len(value) < MIN_SECRET_CHARS:
                raise ValueError(
                    f"intake_api_keys: the secret of {name!r} is shorter than "
                    f"{MIN_SECRET_CHARS} characters"
                )
        if len(set(values.values())) != len(values):
            raise ValueError("intake_api_keys: two integrations share one secret")
        self._secrets = dict(secrets)
        self._digests = [(name, _digest(value)) for name, value in values.items()]
        # Unknown integrations are checked against a random key: same work, same answer.
        self._decoy = SecretStr(_secrets.token_hex(32))
        self.max_age_s = max_age_s
        self.clock = clock

    @property
    def integrations(self) -> list[str]:
        return [name for name, _ in self._digests]

    def from_headers(self, headers: Mapping[str, str]) -> Credential:
        """Identify the caller from headers; IntakeError 401 if it cannot be done."""
        key = _bearer(headers.get("Authorization")) or headers.get("X-Api-Key")
        if key:
            return Credential(self._match_key(key))
        name = headers.get("X-Spillway-Integration")
        signature = headers.get("X-Spillway-Signature")
        timestamp = headers.get("X-Spillway-Timestamp")
        if name and signature and timestamp:
            return Credential(name, (timestamp, signature))
        if not self._digests:
            raise IntakeError(
                "intake has no integrations configured (SPILLWAY_INTAKE_API_KEYS)", status=401
            )
        raise IntakeError(
            "missing credentials: send Authorization: Bearer <api key>, X-Api-Key, or an "
            "X-Spillway-Signature with X-Spillway-Integration and X-Spillway-Timestamp",
            status=401,
        )

    def verify(self, credential: Credential, body: bytes) -> str:
        """The integration name, after checking the HMAC signature of ``body`` if any."""
        if credential.signature is None:
            return credential.integration
        timestamp, signature = credential.signature
        try:
            age = abs(self.clock() - float(timestamp))
        except ValueError:
            raise IntakeError("X-Spillway-Timestamp must be unix seconds", status=401) from None
        if not math.isfinite(age) or age > self.max_age_s:
            raise IntakeError(
                f"X-Spillway-Timestamp is more than {self.max_age_s:g} s from the intake's clock",
                status=401,
            )
        secret = self._secrets.get(credential.integration, self._decoy)
        expected = sign(secret.get_secret_value(), timestamp, body)
        ok = hmac.compare_digest(expected.encode(), signature.strip().lower().encode())
        if not ok or credential.integration not in self._secrets:
            log.warning("intake: bad signature for integration %r", credential.integration[:64])
            raise IntakeError("invalid signature", status=401)
        return credential.integration

    def _match_key(self, key: str) -> str:
        presented = _digest(key)
        found: str | None = None
        for name, digest in self._digests:  # no early exit: time does not depend on the match
            if hmac.compare_digest(digest, presented) and found is None:
                found = name
        if found is None:
            log.warning("intake: request with an unknown API key")
            raise IntakeError("invalid API key", status=401)
        return found


def _bearer(value: str | None) -> str | None:
    if value and value[:7].lower() == "bearer ":
        return value[7:].strip() or None
    return None


# --- rate limiting ---------------------------------------------------------------


class TokenBucket:
    """``burst`` tokens, refilled at ``rate`` per second.

    A request for ``n`` tokens is admitted when at least ``min(n, burst)`` are there;
    it then takes all ``n`` (the level may go negative), so a batch larger than the
    bucket still passes when the bucket is full and the long-run rate holds.
    """

    def __init__(self, rate: float, burst: int, now: float) -> None:
        self.rate, self.burst = rate, burst
        self.level = float(burst)
        self.updated = now

    def take(self, n: int, now: float) -> float:
        """0 if admitted, else how many seconds until it would be."""
        self.level = min(self.burst, self.level + (now - self.updated) * self.rate)
        self.updated = now
        need = min(n, self.burst)
        if self.level >= need:
            self.level -= n
            return 0.0
        return (need - self.level) / self.rate


class RateLimiter:
    """One token bucket per integration (per intake worker, in memory)."""

    def __init__(
        self,
        rate_per_s: float,
        burst: int,
        overrides: Mapping[str, float] | None = None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.rate_per_s, self.burst = rate_per_s, burst
        self.overrides = dict(overrides or {})
        self.clock = clock
        self._buckets: dict[str, TokenBucket] = {}

    def check(self, integration: str, events: int) -> None:
        """IntakeError 429 with Retry-After if ``integration`` is over its rate."""
        rate = self.overrides.get(integration, self.rate_per_s)
        if rate <= 0:
            return  # unlimited
        now = self.clock()
        bucket = self._buckets.get(integration)
        if bucket is None:
            bucket = self._buckets[integration] = TokenBucket(rate, self.burst, now)
        wait = bucket.take(events, now)
        if wait > 0:
            raise IntakeError(
                f"integration {integration!r} is over its rate of {rate:g} events/s",
                status=429,
                retry_after=max(1, math.ceil(wait)),
            )


def with_source(obj: dict[str, Any], body: bytes | None, integration: str | None) -> bytes:
    """The event's bytes with ``source`` set to the integration (``body`` kept if it is)."""
    if integration is not None and obj.get("source") != integration:
        obj = {**obj, "source": integration}
        body = None
    if body is not None:
        return body
    return json.dumps(obj, separators=(",", ":"), ensure_ascii=False).encode()


class Intake:
    def __init__(self, runtime: Runtime) -> None:
        self.runtime = runtime
        self.settings = runtime.settings

    async def append(
        self, items: list[tuple[bytes | None, bytes]], integration: str | None = None
    ) -> list[dict[str, Any]]:
        """Send and wait for every ack; IntakeError 503 if the broker cannot ack in time."""
        topic = self.runtime.topology.topics[RAW]
        extra = {"headers": {INTEGRATION_HEADER: integration.encode()}} if integration else {}
        try:
            await topic.maybe_declare()
            futures = [await topic.send(key=k, value=v, **extra) for k, v in items]
            metas = await asyncio.wait_for(
                asyncio.gather(*futures), timeout=self.settings.intake_ack_timeout_s
            )
        except Exception as exc:
            log.warning("intake: broker did not acknowledge: %r", exc)
            raise IntakeError(
                f"the broker did not acknowledge the write ({type(exc).__name__}); retry later",
                status=503,
                retry_after=self.settings.intake_retry_after_s,
            ) from exc
        return [
            {
                "topic": m.topic,
                "partition": m.partition,
                "offset": m.offset,
                "sequence": f"{m.partition}:{m.offset}",
            }
            for m in metas
        ]


def error_response(view: Any, exc: IntakeError) -> Any:
    headers = {"Retry-After": str(int(exc.retry_after))} if exc.retry_after else {}
    if exc.status == 401:
        headers["WWW-Authenticate"] = 'Bearer realm="spillway-intake"'
    return view.json({"error": str(exc)}, status=exc.status, headers=headers or None)


class Gate:
    """Authentication and rate limiting in front of the intake views."""

    def __init__(self, settings: Any) -> None:
        self.required = settings.intake_auth == "required"
        self.auth = Authenticator(
            settings.intake_api_keys, max_age_s=settings.intake_signature_max_age_s
        )
        self.limiter = RateLimiter(
            settings.intake_rate_per_s, settings.intake_rate_burst, settings.intake_rate_limits
        )
        self.max_body = settings.intake_max_body_bytes

    async def admit(self, request: Any) -> tuple[str | None, bytes]:
        """(integration or None when auth is off, body); IntakeError 401/413/400."""
        credential = self.auth.from_headers(request.headers) if self.required else None
        body = await read_body(request, self.max_body)
        return (self.auth.verify(credential, body) if credential else None), body

    def charge(self, integration: str | None, events: int) -> None:
        self.limiter.check(integration or "anonymous", events)


def attach(app: Any, runtime: Runtime) -> None:
    import faust

    intake = Intake(runtime)
    settings = runtime.settings
    gate = Gate(settings)
    if not gate.required:
        log.warning("intake: authentication is OFF (SPILLWAY_INTAKE_AUTH=off); dev use only")
    elif not gate.auth.integrations:
        log.warning(
            "intake: no integrations configured (SPILLWAY_INTAKE_API_KEYS): every "
            "request will be refused with 401"
        )
    else:
        log.info("intake: integrations %s", ", ".join(sorted(gate.auth.integrations)))

    @app.page("/v1/events")
    class Events(faust.web.View):
        async def post(self, request: Any) -> Any:
            try:
                integration, body = await gate.admit(request)
                if request.content_type in AVRO_TYPES:
                    if body[:1] != b"\x00":
                        raise IntakeError("Avro body must be in Confluent framing", status=400)
                    header = request.headers.get("X-Event-Id")
                    key = header.encode() if header else None
                    value = body  # appended unchanged: intake never decodes Avro
                else:
                    obj = parse_object(body)
                    key, value = key_of(obj), with_source(obj, body, integration)
                gate.charge(integration, 1)
                [result] = await intake.append([(key, value)], integration)
            except IntakeError as exc:
                return error_response(self, exc)
            return self.json(result, status=202)

    @app.page("/v1/events/batch")
    class Batch(faust.web.View):
        async def post(self, request: Any) -> Any:
            try:
                integration, body = await gate.admit(request)
                events = parse_batch(body, settings.intake_max_batch)
                gate.charge(integration, len(events))
                items = [(key_of(e), with_source(e, None, integration)) for e in events]
                results = await intake.append(items, integration)
            except IntakeError as exc:
                return error_response(self, exc)
            return self.json({"accepted": len(results), "results": results}, status=202)
