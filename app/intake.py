"""HTTP intake: append events to ``email.raw-events.<priority>`` and answer with their
offsets.

Topic selection (issue 14): a JSON event goes to the raw topic of its ``priority``
field (``normal`` when it has none), so that render reads a critical event before a
burst of bulk; an Avro body (intake never decodes it) goes to the catch-all
``email.raw-events``, which render reads at normal priority.

    POST /v1/events         one JSON event, or Avro in Confluent framing
                            (Content-Type: application/vnd.confluent.avro;
                            key from the X-Event-Id header)     -> 202
    POST /v1/events/batch   a JSON array of events, or {"events": [...]} -> 202
    GET  /openapi.json      the API contract (app/intake_openapi.py)

A request goes through, in order: credentials (401), the body read in full through
aiohttp's stream (413 over ``intake_max_body_bytes``, chunked or not; 408 if it does
not arrive in ``intake_body_timeout_s``; 400 if it ends early), parsing with bounded
depth and value counts and the raw-event shape check (400, app/intake_body.py), the
integration's scope (403 naming the rule, app/scopes.py), the Kafka record size (413),
the integration's rate (429), then the append. Intake never answers 2xx before the
broker has acknowledged every record (acks=all) and answers 503 with Retry-After when
it cannot in time. Every error body is JSON ``{"error": <what was wrong>, "reason":
<code>}``. Intake does not render, resolve templates or decode Avro.

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

Each integration may have a scope (``SPILLWAY_INTAKE_INTEGRATIONS``: templates, from
addresses or domains, highest priority, own rate; see app/scopes.py). Each integration
has a token bucket of ``intake_rate_burst`` events refilled at its rate (per intake
worker); a request that finds too few tokens gets 429 with Retry-After. A batch costs
one token per event.
"""

from __future__ import annotations

import asyncio
import gc
import hashlib
import hmac
import json
import logging
import math
import secrets as _secrets
import time
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass
from typing import Any, Protocol

from aiohttp import web
from aiokafka.errors import MessageSizeTooLargeError
from aiokafka.record.default_records import DefaultRecordBatchBuilder
from pydantic import SecretStr

from app import scopes
from app.errors import IntakeError
from app.intake_body import Refused, dumps, parse_batch, parse_object, read_body
from app.intake_openapi import document, reason_of
from app.models import PRIORITIES
from app.runtime import Runtime
from app.scopes import OPEN, Scope
from app.topology import RAW, RAW_LANES

__all__ = ["parse_batch", "parse_object", "read_body"]  # re-exported for callers

log = logging.getLogger(__name__)

AVRO_TYPES = ("application/vnd.confluent.avro", "application/octet-stream")
#: Kafka record header naming the authenticated integration.
INTEGRATION_HEADER = "spillway-integration"
MIN_SECRET_CHARS = 16


def priority_of(obj: dict[str, Any]) -> str | None:
    """The raw topic a JSON event goes to, by priority (None: the catch-all)."""
    priority = obj.get("priority", "normal")
    return priority if isinstance(priority, str) and priority in PRIORITIES else None


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
    return dumps(obj)




# --- appending to Kafka ----------------------------------------------------------


class Sink(Protocol):
    """Where intake appends: ``send`` returns a future resolved on the broker's ack."""

    topic: str
    #: Largest record the producer will send (its max_request_size).
    max_record_bytes: int

    async def send(
        self,
        key: bytes | None,
        value: bytes,
        headers: list[tuple[str, bytes]],
        priority: str | None = None,
    ) -> Awaitable[Any]: ...


class FaustSink:
    """A Faust topic (the intake worker's producer), with the per-priority topics
    (``lanes``: priority -> Faust topic) when given.

    Each topic is declared (created if missing) once per process; records then go
    straight to the app's producer (``app.producer.send``, acks=all), not through
    ``Topic.send``, whose codec and sensor hooks intake does not use (raw bytes)."""

    def __init__(
        self, topic: Any, max_record_bytes: int, lanes: Mapping[str, Any] | None = None
    ) -> None:
        self._topic = topic
        self._lanes = dict(lanes or {})
        self._declared: dict[Any, str] = {}  # Faust topic -> its name, once declared
        self._producer: Any = None  # the app's producer, started by the first send
        self.topic = topic.get_topic_name()
        self.max_record_bytes = max_record_bytes

    async def send(
        self,
        key: bytes | None,
        value: bytes,
        headers: list[tuple[str, bytes]],
        priority: str | None = None,
    ) -> Awaitable[Any]:
        topic = self._lanes.get(priority or "", self._topic)
        name = self._declared.get(topic)
        if name is None:
            # Once per topic and process: Faust's maybe_declare is not memoized, and
            # each call creates the topic again and refreshes the producer's metadata of
            # every topic on the cluster (~2 ms of CPU per request on a broker with
            # 2,600 topics). Concurrent first sends share one declaration (stampede).
            await topic.maybe_declare()
            self._producer = await topic.app.maybe_start_producer()
            name = self._declared[topic] = topic.get_topic_name()
            settle_heap()  # the cluster metadata just fetched stays for good
        future: Awaitable[Any] = await self._producer.send(
            name, key, value, None, None, headers or None
        )
        return future


class ProducerSink:
    """A plain aiokafka producer (acks=all): the intake handlers outside a Faust worker,
    e.g. the in-process intake of the contract tests. Start and stop it yourself.
    ``lanes``: priority -> topic name; without them everything goes to ``topic``."""

    def __init__(
        self,
        producer: Any,
        topic: str,
        max_record_bytes: int,
        lanes: Mapping[str, str] | None = None,
    ) -> None:
        self.producer, self.topic, self.max_record_bytes = producer, topic, max_record_bytes
        self.lanes = dict(lanes or {})

    async def send(
        self,
        key: bytes | None,
        value: bytes,
        headers: list[tuple[str, bytes]],
        priority: str | None = None,
    ) -> Awaitable[Any]:
        topic = self.lanes.get(priority or "", self.topic)
        future: Awaitable[Any] = await self.producer.send(
            topic, value=value, key=key, headers=headers or None
        )
        return future


def settle_heap() -> None:
    """Move every object alive now (the worker's modules, Faust, the cluster metadata)
    out of the garbage collector's reach (``gc.freeze``, O(1)).

    Requests in flight outlive young collections and are promoted, so the collector
    runs a full collection every few thousand requests, and a full collection walked the
    whole heap: 100-240 ms pauses every ~3 s at 1,250 requests/s, the intake's p99.
    Frozen objects are never collected, which is right for what lives as long as the
    worker; what requests make is collected as before."""
    gc.freeze()


def record_bytes(key: bytes | None, value: bytes, headers: list[tuple[str, bytes]]) -> int:
    """What the producer counts against max_request_size for one record."""
    return int(DefaultRecordBatchBuilder.estimate_size_in_bytes(key, value, headers))


class Intake:
    """Appends records through a Sink and waits for every acknowledgement."""

    def __init__(self, sink: Sink, ack_timeout_s: float, retry_after_s: int) -> None:
        self.sink = sink
        self.ack_timeout_s, self.retry_after_s = ack_timeout_s, retry_after_s

    def check_sizes(
        self, items: list[tuple[bytes | None, bytes]], integration: str | None
    ) -> None:
        """413 ``record_too_large`` before anything is sent if one record cannot be."""
        headers = _headers(integration)
        limit = self.sink.max_record_bytes
        for i, (key, value) in enumerate(items):
            size = record_bytes(key, value, headers)
            if size > limit:
                where = "the event" if len(items) == 1 else f"events[{i}]"
                raise Refused(
                    f"{where} makes a Kafka record of {size} bytes; the largest the "
                    f"producer sends is {limit} bytes",
                    status=413,
                    code="record_too_large",
                )

    async def append(
        self,
        items: list[tuple[bytes | None, bytes]],
        integration: str | None = None,
        priorities: list[str | None] | None = None,
        *,
        sizes_checked: bool = False,
    ) -> list[dict[str, Any]]:
        """Send and wait for every ack; 503 if the broker cannot ack in time.
        ``priorities[i]`` picks item i's raw topic (None: the catch-all).
        ``sizes_checked``: the caller ran :meth:`check_sizes` on these items already."""
        if not sizes_checked:
            self.check_sizes(items, integration)
        headers = _headers(integration)
        lanes = priorities or [None] * len(items)
        try:
            futures = [
                await self.sink.send(k, v, headers, p)
                for (k, v), p in zip(items, lanes, strict=True)
            ]
            metas = await asyncio.wait_for(
                asyncio.gather(*futures), timeout=self.ack_timeout_s
            )
        except MessageSizeTooLargeError as exc:  # check_sizes missed it: still the body's fault
            raise Refused(
                f"an event is too large for one Kafka record: {str(exc)[:200]}",
                status=413,
                code="record_too_large",
            ) from exc
        except Exception as exc:
            log.warning("intake: broker did not acknowledge: %r", exc)
            raise Refused(
                f"the broker did not acknowledge the write ({type(exc).__name__}); retry later",
                status=503,
                code="broker_unavailable",
                retry_after=self.retry_after_s,
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


def _headers(integration: str | None) -> list[tuple[str, bytes]]:
    return [(INTEGRATION_HEADER, integration.encode())] if integration else []


# --- the HTTP layer ----------------------------------------------------------------


def error_response(exc: IntakeError) -> web.Response:
    """JSON ``{"error": ..., "reason": ...}`` (``rule`` on a 403) with its headers."""
    headers = {"Retry-After": str(math.ceil(exc.retry_after))} if exc.retry_after else {}
    if exc.status == 401:
        headers["WWW-Authenticate"] = 'Bearer realm="spillway-intake"'
    body: dict[str, Any] = {"error": str(exc), "reason": reason_of(exc)}
    rule = getattr(exc, "rule", None)
    if rule:
        body["rule"] = rule
    return web.json_response(body, status=exc.status, headers=headers or None)


def accepted(result: dict[str, Any]) -> web.Response:
    """202 with ``result`` as JSON (what web.json_response sends, encoded by orjson)."""
    return web.Response(
        body=dumps(result), status=202, content_type="application/json", charset="utf-8"
    )


def refuse(request: web.Request, exc: IntakeError) -> web.Response:
    """The error response; after a body that did not arrive in full, the connection is
    not kept alive (aiohttp reads and drops what is left of the body for up to its
    lingering time, 10 s, so that a client still sending sees the answer)."""
    response = error_response(exc)
    if reason_of(exc) in ("body_timeout", "body_incomplete", "body_too_large"):
        response.force_close()
    return response


class Gate:
    """Authentication, body reading, scopes and rate limiting in front of the views."""

    def __init__(self, settings: Any) -> None:
        self.settings = settings
        conf = settings.intake  # read once: the flat names warn on every access
        self.required = conf.auth == "required"
        self.auth = Authenticator(conf.api_keys, max_age_s=conf.signature_max_age_s)
        self.scopes: dict[str, Scope] = conf.scopes()
        unknown = sorted(set(self.scopes) - set(conf.api_keys))
        if unknown and self.required:
            raise ValueError(
                f"intake_integrations: {', '.join(map(repr, unknown))} "
                "has no secret in intake_api_keys"
            )
        overrides = dict(conf.rate_limits)
        for name, scope in self.scopes.items():
            if scope.rate_per_s is not None:
                overrides[name] = scope.rate_per_s
        self.limiter = RateLimiter(conf.rate_per_s, conf.rate_burst, overrides)
        self.max_body = conf.max_body_bytes
        self.body_timeout_s = conf.body_timeout_s

    async def admit(self, request: Any) -> tuple[str | None, bytes]:
        """(integration or None when auth is off, body); 401/413/408/400."""
        credential = self.auth.from_headers(request.headers) if self.required else None
        body = await read_body(request, self.max_body, self.body_timeout_s)
        return (self.auth.verify(credential, body) if credential else None), body

    def scope_of(self, integration: str | None) -> Scope:
        return OPEN if integration is None else self.scopes.get(integration, OPEN)

    def check_scope(self, integration: str | None, events: list[dict[str, Any]]) -> None:
        """403 naming the rule if an event is outside the integration's scope."""
        if integration is None:
            return
        scope = self.scope_of(integration)
        for i, event in enumerate(events):
            try:
                scopes.check_event(integration, scope, event)
            except scopes.ScopeViolation as exc:
                where = "" if len(events) == 1 else f"events[{i}]: "
                raise Refused(
                    f"{where}{exc}", status=403, code="scope_violation", rule=exc.rule
                ) from None

    def check_avro(self, integration: str | None) -> None:
        if integration is None:
            return
        try:
            scopes.check_avro(integration, self.scope_of(integration))
        except scopes.ScopeViolation as exc:
            raise Refused(str(exc), status=403, code="scope_violation", rule=exc.rule) from None

    def charge(self, integration: str | None, events: int) -> None:
        self.limiter.check(integration or "anonymous", events)


class IntakeService:
    """The intake's request handlers (plain aiohttp handlers: a Faust worker mounts them,
    and :func:`web_app` serves them on their own)."""

    def __init__(self, settings: Any, sink: Sink) -> None:
        self.settings = settings
        conf = settings.intake
        self.gate = Gate(settings)
        self.intake = Intake(sink, conf.ack_timeout_s, conf.retry_after_s)
        self.openapi_body = json.dumps(document(settings)).encode()
        self.depth, self.values = conf.max_json_depth, conf.max_json_values
        self.max_batch = conf.max_batch

    async def events(self, request: web.Request) -> web.Response:
        try:
            integration, body = await self.gate.admit(request)
            if request.content_type in AVRO_TYPES:
                if body[:1] != b"\x00" or len(body) < 5:
                    raise Refused(
                        "Avro body must be in Confluent framing (magic byte 0, 4-byte "
                        "schema id, then the record)",
                        status=400,
                        code="invalid_avro",
                    )
                self.gate.check_avro(integration)
                header = request.headers.get("X-Event-Id")
                key = header.encode("utf-8", "surrogateescape") if header else None
                value = body  # appended unchanged: intake never decodes Avro
                priority: str | None = None  # the catch-all topic
            else:
                obj = parse_object(body, self.depth, self.values)
                self.gate.check_scope(integration, [obj])
                key, value = key_of(obj), with_source(obj, body, integration)
                priority = priority_of(obj)
            self.intake.check_sizes([(key, value)], integration)
            self.gate.charge(integration, 1)
            [result] = await self.intake.append(
                [(key, value)], integration, [priority], sizes_checked=True
            )
        except IntakeError as exc:
            return refuse(request, exc)
        return accepted(result)

    async def batch(self, request: web.Request) -> web.Response:
        try:
            integration, body = await self.gate.admit(request)
            events = parse_batch(body, self.max_batch, self.depth, self.values)
            self.gate.check_scope(integration, events)
            items = [(key_of(e), with_source(e, None, integration)) for e in events]
            self.intake.check_sizes(items, integration)
            self.gate.charge(integration, len(events))
            results = await self.intake.append(
                items, integration, [priority_of(e) for e in events], sizes_checked=True
            )
        except IntakeError as exc:
            return refuse(request, exc)
        return accepted({"accepted": len(results), "results": results})

    async def openapi(self, request: web.Request) -> web.Response:
        return web.Response(body=self.openapi_body, content_type="application/json")


INTAKE_PATHS = ("/v1/", "/openapi.json")


@web.middleware
async def json_errors(request: web.Request, handler: Any) -> web.StreamResponse:
    """aiohttp's own refusals (404, 405, ...) and unexpected errors as JSON error bodies,
    for the intake's paths. An unexpected exception is a 500 and is logged: a bug."""
    if not request.path.startswith(INTAKE_PATHS):
        return await handler(request)
    try:
        return await handler(request)
    except web.HTTPException as exc:
        if exc.status < 400:
            raise
        reason = {404: "not_found", 405: "method_not_allowed", 413: "body_too_large"}.get(
            exc.status, "invalid_event" if exc.status < 500 else "internal_error"
        )
        headers = {k: v for k, v in exc.headers.items() if k.lower() == "allow"}
        return web.json_response(
            {"error": exc.reason or str(exc), "reason": reason},
            status=exc.status,
            headers=headers or None,
        )
    except Exception:
        log.exception("intake: unexpected error on %s %s", request.method, request.path)
        return web.json_response(
            {"error": "internal error (logged by the intake)", "reason": "internal_error"},
            status=500,
        )


def web_app(service: IntakeService) -> web.Application:
    """An aiohttp application serving only the intake (no Faust)."""
    application = web.Application(middlewares=[json_errors])
    application.router.add_post("/v1/events", service.events)
    application.router.add_post("/v1/events/batch", service.batch)
    application.router.add_get("/openapi.json", service.openapi)
    return application


def attach(app: Any, runtime: Runtime) -> None:
    """Mount the intake views on a Faust worker's web server."""
    import faust

    settings = runtime.settings
    topic = runtime.topology.topics[RAW]
    lanes = {p: runtime.topology.topics[logical] for p, logical in RAW_LANES.items()}
    sink = FaustSink(topic, app.conf.producer_max_request_size, lanes)
    service = IntakeService(settings, sink)
    gate = service.gate
    if not gate.required:
        log.warning("intake: authentication is OFF (SPILLWAY_INTAKE_AUTH=off); dev use only")
    elif not gate.auth.integrations:
        log.warning(
            "intake: no integrations configured (SPILLWAY_INTAKE_API_KEYS): every "
            "request will be refused with 401"
        )
    else:
        scoped = sorted(n for n in gate.auth.integrations if n in gate.scopes)
        log.info(
            "intake: integrations %s (scoped: %s)",
            ", ".join(sorted(gate.auth.integrations)),
            ", ".join(scoped) or "none",
        )
    @app.task
    async def settle() -> None:
        """Once the worker has started: its heap as it is now is there for good."""
        settle_heap()

    web_application = getattr(getattr(app, "web", None), "web_app", None)
    if web_application is not None:
        # Straight on the worker's aiohttp application, like web_app(): Faust's View
        # layer (its dispatch and web sensors, which nothing here reads) cost ~10% of
        # the worker's CPU per request.
        web_application.middlewares.append(json_errors)
        web_application.router.add_post("/v1/events", service.events)
        web_application.router.add_post("/v1/events/batch", service.batch)
        web_application.router.add_get("/openapi.json", service.openapi)
        return

    @app.page("/v1/events")
    class Events(faust.web.View):
        async def post(self, request: Any) -> Any:
            return await service.events(request)

    @app.page("/v1/events/batch")
    class Batch(faust.web.View):
        async def post(self, request: Any) -> Any:
            return await service.batch(request)

    @app.page("/openapi.json")
    class OpenApi(faust.web.View):
        async def get(self, request: Any) -> Any:
            return await service.openapi(request)
