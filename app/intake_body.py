"""Intake request bodies: read exactly, parse with bounds, check the event's shape.

Every refusal is a :class:`Refused` (an :class:`~app.errors.IntakeError`) with an HTTP
status and a short ``code`` that the JSON error body carries as ``reason``:

==================  ======  ===============================================================
code                status  when
==================  ======  ===============================================================
body_too_large      413     more bytes than ``intake_max_body_bytes`` (declared or counted)
record_too_large    413     one event does not fit in a Kafka record (producer's
                            ``max_request_size``)
batch_too_large     413     more events than ``intake_max_batch``
body_incomplete     400     the client stopped sending, or the chunked/gzip framing is broken
body_timeout        408     the body did not arrive within ``intake_body_timeout_s``
empty_body          400     zero bytes
malformed_json      400     not UTF-8 JSON (NaN and Infinity included: they are not JSON; so is
                            a number too large for a double, e.g. ``1e400``)
too_deep            400     nesting deeper than ``intake_max_json_depth``
too_many_values     400     more than ``intake_max_json_values`` keys and items in one event
invalid_event       400     not an object, or a field of the raw event schema has a wrong type
==================  ======  ===============================================================

The body is read chunk by chunk from aiohttp's payload stream until it ends (an
aiohttp ``read(n)`` returns whatever happens to be buffered, which cut bodies over
~64 KB short); a body is either complete or refused. The shape check mirrors
``app.serde.raw_event_from_json`` (a property test keeps the two in step), so an event
that intake accepts does not die at render for its shape.
"""

from __future__ import annotations

import asyncio
import json
import math
from typing import Any

import orjson
from aiohttp.http_exceptions import DecompressSizeError, HttpProcessingError

from app import serde
from app.errors import IntakeError
from app.serde import MAX_DEPTH

#: Deepest nesting accepted by default: the event object plus MAX_DEPTH levels of data
#: (what render accepts); 1 is a flat object.
DEFAULT_MAX_DEPTH = MAX_DEPTH + 1
#: Most keys plus array items in one event by default.
DEFAULT_MAX_VALUES = 10_000
#: Optional string fields of a raw event (null or a string).


class Refused(IntakeError):
    """An intake refusal with a machine-readable ``code`` (and ``rule`` for a 403)."""

    def __init__(
        self,
        message: str,
        *,
        status: int,
        code: str,
        retry_after: float | None = None,
        rule: str | None = None,
    ) -> None:
        super().__init__(message, status=status, retry_after=retry_after)
        self.code = code
        self.rule = rule


async def read_body(request: Any, limit: int, timeout_s: float | None = None) -> bytes:
    """The whole body of ``request`` (an aiohttp request), at most ``limit`` bytes.

    413 when the declared Content-Length or the bytes counted so far (chunked, or a
    Content-Encoding that aiohttp inflates) pass ``limit``; 400 when the stream breaks
    or is empty; 408 when it takes longer than ``timeout_s``.
    """
    declared = request.content_length
    if declared is not None and declared > limit:
        raise Refused(
            f"body of {declared} bytes exceeds the limit of {limit} bytes",
            status=413,
            code="body_too_large",
        )
    try:
        async with asyncio.timeout(timeout_s):
            body = await _read_all(request.content, limit)
    except TimeoutError:
        raise Refused(
            f"the body did not arrive within {timeout_s:g} s", status=408, code="body_timeout"
        ) from None
    if not body:
        raise Refused("empty body: send a JSON object", status=400, code="empty_body")
    return body


async def _read_all(stream: Any, limit: int) -> bytes:
    chunks: list[bytes] = []
    size = 0
    try:
        while True:
            chunk = await stream.readany()
            if not chunk:
                break
            size += len(chunk)
            if size > limit:
                raise Refused(
                    f"body exceeds the limit of {limit} bytes", status=413, code="body_too_large"
                )
            chunks.append(chunk)
    except DecompressSizeError:
        raise Refused(
            f"body exceeds the limit of {limit} bytes once decompressed",
            status=413,
            code="body_too_large",
        ) from None
    except (HttpProcessingError, ConnectionError, asyncio.IncompleteReadError) as exc:
        raise Refused(
            f"the body ended early or its framing is broken ({type(exc).__name__})",
            status=400,
            code="body_incomplete",
        ) from None
    return b"".join(chunks)


def _no_constants(name: str) -> Any:
    raise ValueError(f"{name} is not JSON")


def _finite(text: str) -> float:
    value = float(text)
    if not math.isfinite(value):
        raise ValueError(f"the number {text[:40]} is too large for a double")
    return value


def loads(body: bytes) -> Any:
    """Strict JSON (no NaN/Infinity, no number that overflows a double to infinity);
    400 ``malformed_json`` or ``too_deep``."""
    try:
        return json.loads(body, parse_constant=_no_constants, parse_float=_finite)
    except RecursionError:
        raise Refused("JSON nests too deeply to parse", status=400, code="too_deep") from None
    except (UnicodeDecodeError, ValueError) as exc:
        raise Refused(
            f"body is not valid UTF-8 JSON: {str(exc)[:200]}", status=400, code="malformed_json"
        ) from None


def dumps(value: Any) -> bytes:
    """Compact UTF-8 JSON of a value :func:`loads` returned (so no NaN, no infinity, no
    lone surrogate once :func:`check_bounds` passed): orjson, or the standard library for
    what orjson does not take (integers beyond 64 bits). The same JSON either way, up to
    how a float is spelled (``1e16`` for ``1e+16``)."""
    try:
        return orjson.dumps(value)
    except TypeError:
        return json.dumps(value, separators=(",", ":"), ensure_ascii=False).encode()


def check_bounds(value: Any, max_depth: int, max_values: int, where: str = "body") -> None:
    """Refuse nesting deeper than ``max_depth`` containers, more than ``max_values``
    keys and items, and lone surrogates (not encodable as UTF-8). Iterative."""
    count = 0
    stack: list[tuple[Any, int]] = [(value, 1)]
    while stack:
        node, depth = stack.pop()
        if isinstance(node, str):
            _check_text(node, where)
            continue
        if not isinstance(node, dict | list):
            continue
        if depth > max_depth:
            raise Refused(
                f"{where} nests deeper than {max_depth} levels", status=400, code="too_deep"
            )
        count += len(node)
        if count > max_values:
            raise Refused(
                f"{where} holds more than {max_values} keys and items",
                status=400,
                code="too_many_values",
            )
        if isinstance(node, dict):
            for k, v in node.items():
                _check_text(k, where)
                stack.append((v, depth + 1))
        else:
            stack.extend((v, depth + 1) for v in node)


def _check_text(text: str, where: str) -> None:
    if text.isascii():
        return
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        raise Refused(
            f"{where} holds a lone surrogate: not valid Unicode text",
            status=400,
            code="invalid_event",
        ) from None


def event_problems(obj: Any) -> list[str]:
    """What makes ``obj`` not a raw event (empty: it is one). Unknown fields are allowed.
    The same check render's decoder makes (``serde.event_problems``), so the intake refuses
    exactly what render would dead-letter."""
    if not isinstance(obj, dict):
        return [f"must be a JSON object, not {_json_type(obj)}"]
    return serde.event_problems(obj)


def _json_type(value: Any) -> str:
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "boolean"
    if isinstance(value, int | float):
        return "number"
    if isinstance(value, str):
        return "string"
    if isinstance(value, list):
        return "array"
    return type(value).__name__


def check_event(obj: Any, where: str) -> dict[str, Any]:
    problems = event_problems(obj)
    if problems:
        raise Refused(f"{where}: {'; '.join(problems)}", status=400, code="invalid_event")
    return obj


def parse_object(
    body: bytes, max_depth: int = DEFAULT_MAX_DEPTH, max_values: int = DEFAULT_MAX_VALUES
) -> dict[str, Any]:
    """One raw event from a JSON body; 400 with the reason otherwise."""
    obj = loads(body)
    if isinstance(obj, dict):
        check_bounds(obj, max_depth, max_values, "event")
    return check_event(obj, "event")


def parse_batch(
    body: bytes,
    max_batch: int,
    max_depth: int = DEFAULT_MAX_DEPTH,
    max_values: int = DEFAULT_MAX_VALUES,
) -> list[dict[str, Any]]:
    """Raw events from a JSON array or ``{"events": [...]}``; all or nothing."""
    obj = loads(body)
    events = obj.get("events") if isinstance(obj, dict) else obj
    if not isinstance(events, list):
        raise Refused(
            'batch must be a JSON array of events or {"events": [...]}',
            status=400,
            code="invalid_event",
        )
    if not events:
        raise Refused("batch is empty", status=400, code="invalid_event")
    if len(events) > max_batch:
        raise Refused(
            f"batch of {len(events)} events exceeds the limit of {max_batch}",
            status=413,
            code="batch_too_large",
        )
    for i, event in enumerate(events):
        where = f"events[{i}]"
        if isinstance(event, dict):
            check_bounds(event, max_depth, max_values, where)
        check_event(event, where)
    return events
